"""Run a sweep: open the stores, create or resume the study, enqueue its points, work through them, summarize."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from landscape_core.config import Preset
from landscape_core.data import load_fashion_mnist
from landscape_core.train import resolve_device
from sweeps.pipeline import NotPlanned, TrialContext, TrialDiverged, make_objective, run_batch
from sweeps.population import barrier_matrix
from sweeps.progress import SweepProgress
from sweeps.space import SweepSpace, point_key
from sweeps.storage import create_or_resume_study, open_storage
from tracking.correlate import report_sweep
from tracking.runs import find_or_create_parent, flatten_config
from tracking.store import TrackingStore

__all__ = ["SweepOptions", "SweepOutcome", "run_sweep", "tally"]


@dataclass(frozen=True)
class SweepOptions:
    """Everything a sweep command decided: the population, the protocol and where results go."""

    space: SweepSpace
    preset: Preset
    study_name: str
    experiment: str
    root: str = "mlruns"
    storage: str | None = None
    tracking_uri: str | None = None
    data_dir: str | None = None
    heartbeat: int | None = None
    max_pairs: int = 45
    workers: int = 1
    batch_trials: int = 1


@dataclass(frozen=True)
class SweepOutcome:
    study_name: str
    parent_run_id: str
    finished: int
    failed: int
    total: int


def _is_done(trial: FrozenTrial) -> bool:
    """A finished point: completed, or failed by divergence (a deterministic outcome, not worth rerunning)."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and trial.user_attrs.get("failure") == "diverged"
    )


def tally(study: optuna.Study) -> dict[tuple, FrozenTrial]:
    """The finished trial of each point (the first, when a retry left two)."""
    done: dict[tuple, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False):
        if _is_done(trial) and trial.params:
            done.setdefault(point_key(trial.params), trial)
    return done


def _enqueue_missing(study: optuna.Study, space: SweepSpace) -> None:
    busy = {
        point_key(t.user_attrs["point"])
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if "point" in t.user_attrs
    }
    done = tally(study)
    for point in space.points():
        if point_key(point) not in done and point_key(point) not in busy:
            study.enqueue_trial(point, user_attrs={"point": point})


def _reap_dead_local_workers(study: optuna.Study, store: TrackingStore) -> None:
    """Fail RUNNING trials whose worker process on this host is gone (a SIGKILL), and mark their runs KILLED.

    RDB storages do this by heartbeat across machines; a Journal file lives on one machine, so checking the pid is
    exact there.
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        _mark_killed(store, trial)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mark_killed(store: TrackingStore, trial: FrozenTrial) -> None:
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        client = store.client()
        client.set_tag(run_id, "failure", "worker killed")
        client.set_terminated(run_id, status="KILLED")


def parent_status(parent) -> str:
    return parent.client.get_run(parent.run_id).info.status


def _has_waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


@dataclass
class OpenSweep:
    """A sweep's opened handles: data, stores, the study and its parent run."""

    options: SweepOptions
    dataset: Any
    store: TrackingStore
    study: optuna.Study
    created: bool
    experiment_id: str
    parent: Any

    def context(self, progress: SweepProgress | None) -> TrialContext:
        o = self.options
        return TrialContext(
            o.space, o.preset, self.dataset, self.store, self.experiment_id, self.parent.run_id, o.study_name, progress
        )


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
    for key in ("train.seed", "train.device") + (("train.lr",) if space.lrs is not None or not space.planned else ()):
        config.pop(key)
    return config


def open_sweep(options: SweepOptions, *, prepare: bool = True) -> OpenSweep:
    """Open data and stores, create or resume the study, find its parent run; ``prepare`` also retries the trials
    of dead workers and enqueues the missing points.

    Bad input raises before anything is written: a missing dataset (DataMissingError), an unwritable or unreachable
    store (StoreError, StorageError), a study with another config (StudyConfigMismatch).
    """
    space, preset = options.space, options.preset
    dataset = load_fashion_mnist(options.data_dir)
    store = TrackingStore.resolve(options.tracking_uri, options.root)
    store.validate()  # writes nothing: the local store is only created once the storage and the study check out
    storage = open_storage(
        options.storage, root=options.root, heartbeat=options.heartbeat, on_stale=lambda t: _mark_killed(store, t)
    )
    sampler = optuna.samplers.TPESampler(seed=0) if space.sampler == "tpe" else None
    study, created = create_or_resume_study(storage, options.study_name, study_config(space, preset), sampler)
    store.check()
    experiment_id = store.experiment_id(options.experiment)
    parent = find_or_create_parent(
        store,
        experiment_id,
        options.study_name,
        tags={"sweep": space.kind, "preset": preset.name},
        run_id=_recorded_parent(study, created),
    )
    if "mlflow_parent_run_id" not in study.user_attrs:
        study.set_user_attr("mlflow_parent_run_id", parent.run_id)
        parent.params({"n_trials": space.n_trials, "sampler": space.sampler, **config_params(preset)})
    if prepare:
        if isinstance(storage, optuna.storages.RDBStorage) and options.heartbeat:
            optuna.storages.fail_stale_trials(study)
        else:
            _reap_dead_local_workers(study, store)
        if space.planned:
            _enqueue_missing(study, space)
    return OpenSweep(options, dataset, store, study, created, experiment_id, parent)


def _recorded_parent(study: optuna.Study, created: bool, timeout: float = 30.0) -> str | None:
    """The parent run id recorded on the study. Workers started together on a new study wait for the one that
    created it to record its parent run (a few seconds), so that they all log under one parent run."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    deadline = time.monotonic() + timeout
    while run_id is None and not created and time.monotonic() < deadline:
        time.sleep(0.5)
        run_id = study.user_attrs.get("mlflow_parent_run_id")
    return run_id


def work(sweep: OpenSweep, progress: SweepProgress | None) -> None:
    """Run trials of the study until every point is done (adaptive sweeps) or no trial is left waiting (planned
    sweeps: duplicate copies of a point, left by workers enqueueing at once, are drained as they are dropped)."""
    space, study = sweep.options.space, sweep.study
    context = sweep.context(progress)
    objective = make_objective(context)
    batch = sweep.options.batch_trials
    while _has_waiting(study) if space.planned else len(tally(study)) < space.n_trials:
        if batch > 1 and space.planned:
            run_batch(study, context, batch)
        else:
            study.optimize(objective, n_trials=1, catch=(TrialDiverged, NotPlanned))
        if progress:
            progress.trials_done(len(tally(study)))


def _worker_process(options: SweepOptions, threads: int) -> None:
    """One of ``--workers K`` processes: its share of the CPU threads, no display of its own."""
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        work(open_sweep(options, prepare=False), None)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _run_workers(sweep: OpenSweep, progress: SweepProgress) -> None:
    """Start K worker processes on the study and follow the study's progress until they end."""
    import multiprocessing

    k = sweep.options.workers
    threads = max(1, (os.cpu_count() or 1) // k)
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=_worker_process, args=(sweep.options, threads)) for _ in range(k)]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            progress.trials_done(len(tally(sweep.study)))
            progress.stage(f"{k} workers, {threads} threads each")
            time.sleep(1.0)
    except KeyboardInterrupt:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(timeout=60)
        raise
    progress.trials_done(len(tally(sweep.study)))


def run_sweep(options: SweepOptions, console: Console | None = None) -> SweepOutcome:
    """Create or resume the study, run its trials (in ``options.workers`` processes), then summarize.

    When the last point is done the parent run gets the population's barrier matrix and the correlation report,
    and ends FINISHED.
    """
    console = console or Console()
    sweep = open_sweep(options)
    space, study, parent = options.space, sweep.study, sweep.parent
    done = len(tally(study))
    device = resolve_device(options.preset.train.device)
    console.print(
        f"[bold]{'Created' if sweep.created else 'Resuming'} study[/] {options.study_name}: "
        f"{done}/{space.n_trials} trials done, preset [cyan]{options.preset.name}[/] on {device}, "
        f"MLflow parent run {parent.run_id}"
    )
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with SweepProgress(space.n_trials, done, console) as progress:
            if options.workers > 1:
                _run_workers(sweep, progress)
            else:
                work(sweep, progress)
            finished = tally(study)
            complete = len(finished) >= space.n_trials and parent_status(parent) != "FINISHED"
            if complete and options.preset.analysis.runs("connectivity") and options.max_pairs > 0:
                barrier_matrix(study, sweep.context(progress), parent, options.max_pairs)
        print_trials(study, console)
        if complete:
            report_sweep(
                sweep.store,
                experiment_id=sweep.experiment_id,
                study=options.study_name,
                parent_run_id=parent.run_id,
                console=console,
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = sum(1 for t in finished.values() if t.state == TrialState.FAIL)
    if complete:
        parent.metrics({"sweep/finished": len(finished) - failed, "sweep/failed": failed})
        parent.finish("FINISHED")
    elif len(finished) < space.n_trials:
        console.print(f"{len(finished)}/{space.n_trials} trials done; rerun the same command to finish the sweep.")
    return SweepOutcome(options.study_name, parent.run_id, len(finished) - failed, failed, space.n_trials)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the running trial ends cleanly (run KILLED, trial FAIL)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def config_params(preset: Preset) -> dict[str, str]:
    return {"preset": preset.name, **flatten_config(preset.train), **flatten_config(preset.analysis, "analysis.")}


def print_trials(study: optuna.Study, console: Console) -> None:
    """A table of the study's trials, one row per point: seed, lr, test acc, test loss, gap, status."""
    table = Table(title=f"study {study.study_name}", show_lines=False)
    for column in ("trial", "seed", "lr", "test acc", "test loss", "gap", "status"):
        table.add_column(column, justify="right")
    done = tally(study)
    preset_lr = json.loads(study.user_attrs.get("config", "{}")).get("train.lr")
    shown = {t.number for t in done.values()}
    rows = list(done.values()) + [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number not in shown and t.params and point_key(t.params) not in done and t.state != TrialState.WAITING
    ]
    for trial in sorted(rows, key=lambda t: (point_key(t.params)[1] or 0, point_key(t.params)[0], t.number)):
        attrs = trial.user_attrs
        status = "diverged" if attrs.get("failure") == "diverged" else trial.state.name.lower()
        style = {"complete": "green", "diverged": "red"}.get(status, "yellow")
        lr = trial.params.get("lr", preset_lr)
        table.add_row(
            str(trial.number),
            str(trial.params.get("seed")),
            f"{float(lr):.3g}" if lr else "-",
            f"{attrs['test_acc']:.4f}" if "test_acc" in attrs else "-",
            f"{trial.value:.4f}" if trial.value is not None else "-",
            f"{attrs['gap_loss']:+.4f}" if "gap_loss" in attrs else "-",
            f"[{style}]{status}[/]",
        )
    console.print(table)
