"""A sweep's study: open the data and stores, create or resume the study and its parent run, and keep its points.

``open_sweep`` is the one place a sweep's handles come from. It validates before it writes: a missing dataset, an
unwritable or unreachable store, or a study with another config raise a ``UsageError`` subclass before any file or
record exists. The rest reads the study: ``tally`` (the finished trial of each point), ``enqueue_missing`` and
``reap_dead_local_workers`` (a killed worker's trial is failed and retried, its run marked KILLED). Only Optuna's
public API is used.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from landscape_core.config import Preset, TrainConfig
from landscape_core.data import FashionMNIST, check_subset_size, load_fashion_mnist
from landscape_core.devices import resolve_device
from landscape_core.errors import UsageError
from landscape_core.splits import TrialData
from sweeps.claims import is_orphan
from sweeps.options import SweepOptions
from sweeps.space import SweepSpace, point_key
from sweeps.storage import create_or_resume_study, open_storage
from tracking.plan import AnalysisPlan, log_plan
from tracking.provenance import provenance_tags
from tracking.runs import RunLogger, find_or_create_parent, flatten_config
from tracking.store import TrackingStore

#: The study's user attribute holding its declared analysis plan (JSON), read by every worker and resumed command.
PLAN_ATTR = "analysis_plan"

__all__ = [
    "PLAN_ATTR",
    "OpenSweep",
    "declare_plan",
    "config_params",
    "end_killed",
    "enqueue_missing",
    "is_done",
    "mark_killed",
    "open_sweep",
    "running_elsewhere",
    "study_config",
    "tally",
]


@dataclass(frozen=True, kw_only=True)
class OpenSweep:
    """A sweep's opened handles: the trials' data, the stores, the study and its parent run."""

    options: SweepOptions
    data: TrialData
    store: TrackingStore
    study: optuna.Study
    created: bool
    experiment_id: str
    parent: RunLogger
    images: FashionMNIST = field(repr=False)
    _splits: dict[tuple, TrialData] = field(default_factory=dict, repr=False)

    def data_for(self, config: TrainConfig) -> TrialData:
        """The trial splits of ``config``: the sweep's own, or (on a train-size axis) those of its train size, each
        drawn once by the same rule (``TrialData.build``)."""
        if self.data.matches(config):
            return self.data
        key = (config.train_size, config.test_size, config.data_seed)
        if key not in self._splits:
            self._splits[key] = TrialData.build(self.images, config)
        return self._splits[key]


def is_done(trial: FrozenTrial) -> bool:
    """A finished point: completed, or failed by divergence (a deterministic outcome, not worth rerunning)."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and trial.user_attrs.get("failure") == "diverged"
    )


def tally(study: optuna.Study) -> dict[tuple, FrozenTrial]:
    """The finished trial of each point (the first, when a retry left two)."""
    done: dict[tuple, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False):
        if is_done(trial) and trial.params:
            done.setdefault(point_key(trial.params), trial)
    return done


def running_elsewhere(study: optuna.Study) -> int:
    """Trials that some worker is running now."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def enqueue_missing(study: optuna.Study, space: SweepSpace) -> None:
    """Enqueue every point of ``space`` that is neither finished nor already waiting or running."""
    busy = {
        point_key(t.user_attrs["point"])
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if "point" in t.user_attrs
    }
    done = tally(study)
    for point in space.points():
        if point_key(point) not in done and point_key(point) not in busy:
            study.enqueue_trial(point, user_attrs={"point": point})


def mark_killed(store: TrackingStore, trial: FrozenTrial) -> None:
    """Tag the trial's MLflow run (if it has one) as killed and end it KILLED."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        end_killed(store, run_id)


def end_killed(store: TrackingStore, run_id: str) -> None:
    """Tag the MLflow run of a worker found dead (a trial's or a reference's) as killed and end it KILLED."""
    run = RunLogger(store.client(), run_id)
    run.tags({"failure": "worker killed"})
    run.finish("KILLED")


def reap_dead_local_workers(study: optuna.Study, store: TrackingStore) -> None:
    """Fail RUNNING trials that nobody alive holds, and mark their runs KILLED, so that their points are retried.

    Every claim names who may hold the trial (``sweeps.claims``), so this is exact for workers on this host at any
    instant of their claim: killed (SIGKILL), powered off, or with their last journal records cut as torn. RDB
    storages do this by heartbeat across machines; a Journal file lives on one machine, where the processes can be
    checked.
    """
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_orphan(trial):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            mark_killed(store, trial)


def study_config(space: SweepSpace, preset: Preset) -> dict[str, Any]:
    """What must match for a rerun to resume a study: the population and the protocol (not the device)."""
    config = {
        "sweep": space.kind,
        "points": space.points() if space.planned else None,
        "sampler": space.sampler,
        "n_trials": space.n_trials,
        "preset": preset.name,
        **flatten_config(preset.train, "train."),
        **flatten_config(preset.analysis, "analysis."),
    }
    axes = ["train.seed", "train.device"]
    if space.varies_lr:
        axes.append("train.lr")
    if space.widths is not None:
        axes.append("train.width")
    axes += [f"train.{name}" for name, _ in space.grid if name != "lr"]
    for key in axes:
        config.pop(key)
    return config


def config_params(preset: Preset) -> dict[str, str]:
    """The preset as run params: its name, every training field, every analysis field under ``analysis.``."""
    return {"preset": preset.name, **flatten_config(preset.train), **flatten_config(preset.analysis, "analysis.")}


def open_sweep(options: SweepOptions, *, prepare: bool = True) -> OpenSweep:
    """Open data and stores, create or resume the study, find its parent run; ``prepare`` also retries the trials
    of dead workers and enqueues the missing points.

    Bad input raises before anything is written: a missing dataset (DataMissingError), a ``--train-size`` or
    ``--test-size`` larger than the data set, an unwritable or unreachable store (StoreError, StorageError), a study
    with another config (StudyConfigMismatch); all are UsageErrors.
    """
    space, preset = options.space, options.preset
    images = load_fashion_mnist(options.data_dir)
    check_subset_size("--train-size", preset.train.train_size, len(images.train_y), "training images")
    check_subset_size("--test-size", preset.train.test_size, len(images.test_y), "test images")
    for size in dict(space.grid).get("train_size", ()):
        check_subset_size("--train-size", size, len(images.train_y), "training images")
    data = TrialData.build(images, preset.train)
    store = TrackingStore.resolve(options.tracking_uri, options.root)
    store.validate()  # writes nothing: the local store is only created once the storage and the study check out
    storage = open_storage(
        options.storage, root=options.root, heartbeat=options.heartbeat, on_stale=lambda t: mark_killed(store, t)
    )
    sampler = optuna.samplers.TPESampler(seed=0) if space.sampler == "tpe" else None
    study, created = create_or_resume_study(storage, options.study_name, study_config(space, preset), sampler)
    store.check()
    experiment_id = store.experiment_id(options.experiment)
    parent = find_or_create_parent(
        store,
        experiment_id,
        options.study_name,
        tags={"sweep": space.kind, "preset": preset.name, **provenance_tags(str(resolve_device(preset.train.device)))},
        run_id=_recorded_parent(study, created),
    )
    plan = declare_plan(study, parent, options.plan)
    if "mlflow_parent_run_id" not in study.user_attrs:
        study.set_user_attr("mlflow_parent_run_id", parent.run_id)
        parent.params({"n_trials": space.n_trials, "sampler": space.sampler, **config_params(preset)})
    if prepare:
        if isinstance(storage, optuna.storages.RDBStorage) and options.heartbeat:
            optuna.storages.fail_stale_trials(study)
        else:
            reap_dead_local_workers(study, store)
        if space.planned:
            enqueue_missing(study, space)
    return OpenSweep(
        options=dataclasses.replace(options, plan=plan),
        data=data,
        store=store,
        study=study,
        created=created,
        experiment_id=experiment_id,
        parent=parent,
        images=images,
    )


def declare_plan(study: optuna.Study, parent: RunLogger, plan: AnalysisPlan) -> AnalysisPlan:
    """The study's analysis plan: declared now (on the study and, as ``analysis_plan.json`` and tags, on the parent
    run) when the study has none, before any trial runs; otherwise the declared one, which a resumed or joining
    command must not change (a ``UsageError`` when its ``--primary`` or design differs)."""
    recorded = study.user_attrs.get(PLAN_ATTR)
    if recorded is None:
        # a study from before plans, with trials already done, gets its plan stamped now but not "in advance"
        declared = (
            plan.declared() if not tally(study) else dataclasses.replace(plan.declared(), declared_in_advance=False)
        )
        log_plan(parent, declared)
        study.set_user_attr(PLAN_ATTR, json.dumps(declared.to_json()))
        return declared
    declared = AnalysisPlan.from_json(json.loads(recorded))
    if dataclasses.replace(declared, declared_at="") != dataclasses.replace(plan, declared_at=""):
        raise UsageError(
            f"study {study.study_name} declared its analysis plan at {declared.declared_at} "
            f"({', '.join(h.name for h in declared.hypotheses)}"
            f"{'; until decided' if declared.sequential else ''}); a resumed sweep cannot change it: rerun with the "
            "same --primary / --until-decided options, or start a new --study-name"
        )
    return declared


def _recorded_parent(study: optuna.Study, created: bool, timeout: float = 30.0) -> str | None:
    """The parent run id recorded on the study. Workers started together on a new study wait for the one that
    created it to record its parent run (a few seconds), so that they all log under one parent run."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    deadline = time.monotonic() + timeout
    while run_id is None and not created and time.monotonic() < deadline:
        time.sleep(0.5)
        run_id = study.user_attrs.get("mlflow_parent_run_id")
    return run_id
