"""Read a population of trial runs back from MLflow: one FINISHED child run per trial, with its final metrics.

The layout this reads (see ``tracking.runs``): one experiment per sweep kind ("seeds", "lr"); a parent run per
Optuna study, tagged ``run_kind=parent`` and ``study=<name>``; a child run per trial, tagged ``run_kind=trial``,
``study``, ``trial_number``, ``seed``, ``lr`` and ``mlflow.parentRunId``.

The analysis only reads FINISHED runs, one per trial (the failure policy of docs/architecture.md). Runs that did not
finish are counted by status, and retries of the same trial are deduplicated (and counted), never silently dropped.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from landscape_core import keys
from landscape_core.errors import UsageError
from tracking.store import DEFAULT_ROOT, StoreError, TrackingStore

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

# MLflow (and torch, through landscape_core.config) are imported where runs are read: the commands that read a
# population refuse bad input before they import either.

__all__ = [
    "DEFAULT_EXPERIMENTS",
    "Population",
    "PopulationError",
    "PopulationRun",
    "add_selection_options",
    "check_selection",
    "load_population",
    "select_population",
]

#: Experiments read when neither an experiment, a study nor a parent run is given.
DEFAULT_EXPERIMENTS = ("seeds", "lr", "grid")
#: The axes of a point besides seed and lr, tagged on a trial's run when its sweep varies them.
POINT_AXES = (
    "width",
    "batch_size",
    "momentum",
    "epochs",
    "train_size",
    "optimizer",
    "init_seed",
    "order_seed",
    "spawn_epoch",
)
#: Hyperparameter axes the correlation analysis can granulate over (read from the runs' params).
HYPERPARAMETERS = ("lr", *POINT_AXES)
#: Runs per ``search_runs`` page (MLflow's maximum); a module constant so tests can page through small stores.
PAGE_SIZE = 1000


class PopulationError(UsageError):
    """The population cannot be selected: an unknown experiment or parent run, contradictory selectors, or no
    finished trial runs where some are needed. Bad input: one line, exit 2."""


@dataclass(frozen=True)
class PopulationRun:
    """One trial's finished child run.

    Attributes:
        run_id: MLflow run id.
        study: The Optuna study name (tag ``study``).
        trial_number: Optuna trial number (tag ``trial_number``); -1 when the tag is missing.
        seed: Training seed (tag ``seed``, else param ``seed``); -1 when missing.
        lr: Learning rate (tag ``lr``, else param ``lr``); NaN when missing.
        metrics: Final metric values by key (MLflow's latest value of each key).
        parent_run_id: The parent run (tag ``mlflow.parentRunId``); None when missing.
        params: The run's params (its full config), as logged strings.
        model_uri: ``models:/<id>`` of the run's LoggedModel (the trained network); None when it logged none.
    """

    run_id: str
    study: str
    trial_number: int
    seed: int
    lr: float
    metrics: dict[str, float]
    parent_run_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    model_uri: str | None = None


@dataclass(frozen=True)
class Population:
    """The FINISHED runs of one selection, one per trial, and what was left out.

    Attributes:
        runs: One run per trial, ordered by (study, trial number).
        n_not_finished: Counts of the selection's trial runs that did not finish, by MLflow status
            (``FAILED``, ``KILLED``, ``RUNNING``, ...); statuses with no run are absent.
        n_duplicates: FINISHED runs dropped because a later FINISHED run of the same trial (same study and trial
            number, or same study, seed and lr) was kept.
        source: A short description of the selection, for reports (``"experiment lr"``, ``"study lr-quick"``).
    """

    runs: list[PopulationRun]
    n_not_finished: dict[str, int] = field(default_factory=dict)
    n_duplicates: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.runs)

    def column(self, key: str) -> np.ndarray:
        """Values of metric ``key`` per run, shape (n,); NaN where a run lacks it."""
        return np.array([run.metrics.get(key, math.nan) for run in self.runs], dtype=float)

    @property
    def seeds(self) -> np.ndarray:
        """Shape (n,) int seeds per run."""
        return np.array([run.seed for run in self.runs], dtype=int)

    @property
    def lrs(self) -> np.ndarray:
        """Shape (n,) float learning rates per run."""
        return np.array([run.lr for run in self.runs], dtype=float)

    def hyperparameter(self, name: str) -> np.ndarray:
        """Shape (n,) float values of a training hyperparameter per run (its logged param; NaN when missing). A named
        one (``optimizer``) reads as its index in ``OPTIMIZERS``: a label, so that it groups like any other axis."""
        if name == "optimizer":
            from landscape_core.config import OPTIMIZERS

            codes = {label: float(i) for i, label in enumerate(OPTIMIZERS)}
            return np.array([codes.get(run.params.get(name, ""), math.nan) for run in self.runs], dtype=float)
        return np.array([_float(run.params.get(name)) for run in self.runs], dtype=float)

    def varying_hyperparameters(self) -> list[str]:
        """The ``HYPERPARAMETERS`` that take more than one value in the population: its axes (seeds are not)."""
        out = []
        for name in HYPERPARAMETERS:
            values = self.hyperparameter(name)
            if len(set(np.round(values[np.isfinite(values)], 12).tolist())) > 1:
                out.append(name)
        return out

    def measure_keys(self) -> list[str]:
        """Every key with ``keys.is_measure`` that at least one run has.

        Ordered for reading: the fixed ``keys.MEASURES`` (in their order), then the discovered prefixed keys
        (noise deltas, barriers; sorted), then the norm baselines, then the control (final train loss).
        """
        present: set[str] = set()
        for run in self.runs:
            present.update(k for k in run.metrics if keys.is_measure(k))
        fixed = [k for k in keys.MEASURES if k in present]
        norms = [k for k in keys.NORM_BASELINES if k in present]
        control = [keys.CONTROL] if keys.CONTROL in present else []
        discovered = sorted(present - set(fixed) - set(norms) - set(control))
        return fixed + discovered + norms + control

    def missing(self, key: str) -> int:
        """Number of runs without a finite value of ``key`` (absent, or logged as NaN after a non-finite result)."""
        return int(np.sum(~np.isfinite(self.column(key))))

    def counts(self) -> dict[str, object]:
        """The population's bookkeeping as a JSON-safe dict (for reports)."""
        return {
            "source": self.source,
            "n_runs": len(self.runs),
            "n_not_finished": dict(self.n_not_finished),
            "n_duplicates": self.n_duplicates,
            "studies": sorted({run.study for run in self.runs}),
        }


def _quote(value: str) -> str | None:
    """``'value'`` for an MLflow filter string, or None when the value cannot be quoted safely."""
    return None if "'" in value or "\\" in value else f"'{value}'"


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    """Every matching active run, following ``page_token`` (a population can exceed one page)."""
    from mlflow.entities import ViewType

    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=PAGE_SIZE,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _int(value: str | None, default: int = -1) -> int:
    try:
        return int(float(value)) if value is not None else default
    except ValueError:
        return default


def _float(value: str | None) -> float:
    try:
        return float(value) if value is not None else math.nan
    except ValueError:
        return math.nan


def _to_population_run(run: Run) -> PopulationRun:
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    tags, params = run.data.tags, run.data.params
    return PopulationRun(
        run_id=run.info.run_id,
        study=tags.get("study", ""),
        trial_number=_int(tags.get("trial_number")),
        seed=_int(tags.get("seed", params.get("seed"))),
        lr=_float(tags.get("lr", params.get("lr"))),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        parent_run_id=tags.get(MLFLOW_PARENT_RUN_ID),
        params=dict(params),
        model_uri=_model_uri(run),
    )


def _model_uri(run: Run) -> str | None:
    outputs = run.outputs.model_outputs if run.outputs is not None else []
    return f"models:/{outputs[-1].model_id}" if outputs else None


def _recency(run: Run) -> tuple[int, int]:
    return (run.info.end_time or 0, run.info.start_time or 0)


def _dedupe(finished: list[Run]) -> tuple[list[Run], int]:
    """Keep the latest FINISHED run per (study, trial number), then per point: (study, every axis tag, seed, lr)."""
    kept = finished
    for identity in (
        lambda r: (r.data.tags.get("study", ""), r.data.tags.get("trial_number", r.info.run_id)),
        lambda r: (
            r.data.tags.get("study", ""),
            *(r.data.tags.get(axis, "") for axis in POINT_AXES),  # width and the grid's axes, when they are tags
            _int(r.data.tags.get("seed", r.data.params.get("seed"))),
            # lr is compared rounded: the tag is str(float) of the same value, but be robust to formatting.
            round(_float(r.data.tags.get("lr", r.data.params.get("lr"))), 12),
        ),
    ):
        latest: dict[tuple, Run] = {}
        for run in kept:
            key = identity(run)
            if isinstance(key[-1], float) and math.isnan(key[-1]):
                key = (*key[:-1], run.info.run_id)  # no lr recorded: do not merge runs on a missing value
            if key not in latest or _recency(run) >= _recency(latest[key]):
                latest[key] = run
        kept = list(latest.values())
    return kept, len(finished) - len(kept)


def load_population(
    store: TrackingStore,
    *,
    experiment: str | None = None,
    study: str | None = None,
    parent_run_id: str | None = None,
) -> Population:
    """Load the FINISHED trial runs of a study, a parent run or whole experiments, one run per trial.

    Selection: ``parent_run_id`` (its children, in the parent's experiment), or ``study`` (runs tagged with it, in
    ``experiment`` when given, else in every experiment), or ``experiment`` alone (all its trial runs), or, with
    none of the three, the default experiments ``"seeds"`` and ``"lr"`` (those that exist).

    Retries are deduplicated: among FINISHED runs, the latest (by end time) of each (study, trial number) is kept,
    then the latest of each (study, seed, lr); the dropped ones are counted in ``n_duplicates``. Runs of the
    selection that are not FINISHED are counted by status in ``n_not_finished``.

    Args:
        store: Where the runs are.
        experiment: Experiment name.
        study: Optuna study name (tag ``study``).
        parent_run_id: The study's parent run id.

    Returns:
        The population (possibly empty when the selection has no finished trial runs).

    Raises:
        PopulationError: When both ``study`` and ``parent_run_id`` are given, the experiment or parent run does not
            exist, or none of the default experiments exists.
    """
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    if study is not None and parent_run_id is not None:
        raise PopulationError("give either a study or a parent run, not both")
    client = store.client()
    filters = ["tags.run_kind = 'trial'"]
    post_filter: dict[str, str] = {}

    if parent_run_id is not None:
        try:
            parent = client.get_run(parent_run_id)
        except Exception:
            raise PopulationError(f"no run with id {parent_run_id!r} in {store.tracking_uri}") from None
        experiment_ids = [parent.info.experiment_id]
        if experiment is not None and _experiment_id(client, experiment) != parent.info.experiment_id:
            raise PopulationError(f"parent run {parent_run_id} is not in experiment {experiment!r}")
        quoted = _quote(parent_run_id)
        if quoted:
            filters.append(f"tags.`{MLFLOW_PARENT_RUN_ID}` = {quoted}")
        post_filter[MLFLOW_PARENT_RUN_ID] = parent_run_id
        source = f"parent run {parent_run_id}"
    else:
        if experiment is not None:
            experiment_ids = [_experiment_id(client, experiment)]
            source = f"experiment {experiment}"
        elif study is not None:
            experiment_ids = [e.experiment_id for e in _all_experiments(client)]
            source = "all experiments"
        else:
            found = [client.get_experiment_by_name(name) for name in DEFAULT_EXPERIMENTS]
            experiment_ids = [e.experiment_id for e in found if e is not None]
            if not experiment_ids:
                raise PopulationError(
                    f"none of the experiments {', '.join(DEFAULT_EXPERIMENTS)} exists in {store.tracking_uri}"
                )
            names = [n for n, e in zip(DEFAULT_EXPERIMENTS, found) if e is not None]
            source = f"experiments {', '.join(names)}"
        if study is not None:
            quoted = _quote(study)
            if quoted:
                filters.append(f"tags.study = {quoted}")
            post_filter["study"] = study
            source = f"study {study}" + (f" in experiment {experiment}" if experiment else "")

    runs = _search_all(client, experiment_ids, " and ".join(filters)) if experiment_ids else []
    runs = [r for r in runs if all(r.data.tags.get(k) == v for k, v in post_filter.items())]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    not_finished = Counter(r.info.status for r in runs if r.info.status != "FINISHED")
    kept, n_duplicates = _dedupe(finished)
    population_runs = sorted(
        (_to_population_run(r) for r in kept), key=lambda p: (p.study, p.trial_number, p.seed, p.run_id)
    )
    return Population(
        runs=population_runs,
        n_not_finished=dict(sorted(not_finished.items())),
        n_duplicates=n_duplicates,
        source=source,
    )


def _experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        raise PopulationError(f"no experiment named {name!r}")
    return found.experiment_id


def _all_experiments(client: MlflowClient) -> list:
    from mlflow.entities import ViewType

    experiments, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, page_token=token)
        experiments.extend(page)
        token = page.token
        if not token:
            return experiments


# ------------------------------------------------------------------------------------- selecting one from the CLI


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that reads a population has: which runs (``--experiment``, ``--study`` or
    ``--parent-run``) and which store (``--tracking-uri`` or ``--root``)."""
    parser.add_argument("--experiment", help="MLflow experiment (default: seeds and lr, or any with --study)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--study", help="Optuna study name (tag study)")
    which.add_argument("--parent-run", help="the study's parent run id")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in --root)")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="local store directory (default ./mlruns)")


def check_selection(args: argparse.Namespace) -> None:
    """The selection options, checked before the store is read: names are not blank, a tracking URI has a known
    scheme and answers, a local store exists (reading must not create an empty one). ``UsageError`` otherwise."""
    names = {"--experiment": args.experiment, "--study": args.study, "--parent-run": args.parent_run}
    for option, value in names.items():
        if value is not None and (value.strip() != value or value == ""):
            raise UsageError(f"Expected `{option}` a non-empty name, got {value!r}")
    if args.tracking_uri:
        TrackingStore.resolve(args.tracking_uri, args.root).validate()
    elif not (Path(args.root) / "mlflow.db").exists():
        raise StoreError(f"no store at {Path(args.root).resolve()} (no mlflow.db); run a sweep first")


def select_population(args: argparse.Namespace) -> tuple[TrackingStore, Population]:
    """The store and the population the selection options name (``check_selection`` first); a ``PopulationError``
    when it has no finished trial run."""
    check_selection(args)
    store = TrackingStore.resolve(args.tracking_uri, args.root)
    population = load_population(store, experiment=args.experiment, study=args.study, parent_run_id=args.parent_run)
    if not population.runs:
        raise PopulationError(f"no finished trial runs in {population.source}")
    return store, population
