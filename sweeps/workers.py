"""Working through a study: this process's trial loop, and ``--workers K`` processes on one machine.

Signals: SIGTERM raises ``landscape_core.cli.Terminated`` (a KeyboardInterrupt), so the running trial ends cleanly
(its run KILLED, the trial FAIL) in the main process and in every worker process alike.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import optuna
import torch
from optuna.trial import TrialState

from landscape_core.cli import exit_process, raise_terminated
from sweeps.looks import stopped, take_looks
from sweeps.options import SweepOptions
from sweeps.pipeline import NotPlanned, TrialContext, TrialDiverged, make_objective, run_batch
from sweeps.progress import SweepProgress
from sweeps.reference import ReferenceModels
from sweeps.study import OpenSweep, enqueue_missing, open_sweep, tally

__all__ = ["run_workers", "trial_context", "work"]


def trial_context(sweep: OpenSweep, progress: SweepProgress | None) -> TrialContext:
    """What every trial of this sweep shares, for this process."""
    options = sweep.options
    return TrialContext(
        space=options.space,
        preset=options.preset,
        data=sweep.data,
        data_for=sweep.data_for,
        store=sweep.store,
        experiment_id=sweep.experiment_id,
        parent_run_id=sweep.parent.run_id,
        study_name=options.study_name,
        progress=progress,
        references=ReferenceModels(
            store=sweep.store,
            study=sweep.study,
            preset=options.preset,
            data=sweep.data,
            experiment_id=sweep.experiment_id,
            parent_run_id=sweep.parent.run_id,
            by_width=options.space.widths is not None,
            note=progress.note if progress is not None else None,
        ),
    )


def _has_waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def work(sweep: OpenSweep, progress: SweepProgress | None) -> None:
    """Run trials of the study until every point is done (adaptive sweeps) or no trial is left waiting (planned
    sweeps: duplicate copies of a point, left by workers enqueueing at once, are drained as they are dropped), or
    until a look of an ``--until-decided`` sweep stops it (``sweeps.looks``: checked before each trial)."""
    space, study = sweep.options.space, sweep.study
    context = trial_context(sweep, progress)
    objective = make_objective(study, context)
    batch = sweep.options.batch_trials
    try:
        take_looks(sweep)  # a resumed sweep may have finished trials enough for a look
        while not stopped(study) and (_has_waiting(study) if space.planned else len(tally(study)) < space.n_trials):
            if batch > 1 and space.planned:
                run_batch(study, context, batch)
            else:
                study.optimize(objective, n_trials=1, catch=(TrialDiverged, NotPlanned))
            if progress:
                progress.trials_done(len(tally(study)))
            looks = take_looks(sweep)
            if progress and looks and stopped(study):
                progress.note(f"[bold]until decided:[/] {stopped(study)}")
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM (scancel, a preemption): the trial is failed and its run KILLED; its point goes back in
        # the queue, so that the study's other workers rerun it (and a rerun of this command finds it waiting).
        if space.planned:
            enqueue_missing(study, space)
        raise


def _worker_process(options: SweepOptions, threads: int) -> None:
    """One of ``--workers K`` processes: its share of the CPU threads, no display of its own."""
    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        work(open_sweep(options, prepare=False), None)
    except KeyboardInterrupt:
        exit_process(130)  # its trial is recorded; no wait for a library's leftover threads (landscape_core.cli)


def run_workers(sweep: OpenSweep, progress: SweepProgress) -> None:
    """Start K worker processes on the study and follow the study's progress until they end."""
    k = sweep.options.workers
    threads = max(1, (os.cpu_count() or 1) // k)
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=_worker_process, args=(sweep.options, threads)) for _ in range(k)]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            progress.trials_done(len(tally(sweep.study)))
            progress.workers_running(sum(p.is_alive() for p in processes), k, threads)
            time.sleep(1.0)
    except KeyboardInterrupt:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(timeout=60)
        raise
    progress.trials_done(len(tally(sweep.study)))
