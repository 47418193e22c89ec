"""Run a sweep from start to end: open it, work through its trials, and, once its last point is done, summarize.

The pieces live in their own modules: ``study`` (stores, study, parent run, points), ``workers`` (the trial loop and
``--workers K`` processes), ``pipeline`` (one trial), ``population`` (the end-of-sweep barrier matrix), ``summary``
(the table of trials); the correlation report comes from ``tracking.correlate``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from optuna.trial import TrialState
from rich.console import Console

from landscape_core.cli import raise_terminated
from landscape_core.devices import resolve_device
from sweeps.looks import stopped
from sweeps.options import SweepOptions
from sweeps.population import barrier_matrix
from sweeps.progress import SweepProgress
from sweeps.reference import reference_key
from sweeps.space import REFERENCE_SEED
from sweeps.study import OpenSweep, open_sweep, running_elsewhere, tally
from sweeps.summary import print_trials
from sweeps.workers import run_workers, trial_context, work
from tracking.correlate import report_sweep
from tracking.export import log_population
from tracking.instability import log_instability_report
from tracking.population import load_population
from tracking.report import log_html_report, print_answers
from tracking.runs import RunLogger

__all__ = ["SweepOptions", "SweepOutcome", "run_sweep"]


@dataclass(frozen=True)
class SweepOutcome:
    """How a sweep command left its study: finished and failed trials of the total."""

    study_name: str
    parent_run_id: str
    finished: int
    failed: int
    total: int


def _parent_status(parent: RunLogger) -> str:
    return parent.client.get_run(parent.run_id).info.status


def _train_references(sweep: OpenSweep, progress: SweepProgress) -> None:
    """Train (or find) the study's reference minima before any worker starts, so that workers never race to train
    them (``sweeps.reference``)."""
    context = trial_context(sweep, progress)
    widths = sweep.options.space.widths or (sweep.options.preset.train.width,)
    for width in widths:
        if reference_key(width, sweep.options.space.widths is not None) not in sweep.study.user_attrs:
            progress.trial_started(f"reference minimum (seed {REFERENCE_SEED}, width {width:g})", 1)
        context.references.get(width)


def run_sweep(options: SweepOptions, console: Console | None = None, headline: str | None = None) -> SweepOutcome:
    """Create or resume the study, run its trials (in ``options.workers`` processes), then summarize.

    ``headline`` (e.g. which preset runs and why) is printed first, once the options have passed every check. When
    the last point is done the parent run gets the population's barrier matrix and the correlation report, and ends
    FINISHED.
    """
    console = console or Console()
    sweep = open_sweep(options)
    if headline:
        console.print(headline, highlight=False)
    space, study, parent = options.space, sweep.study, sweep.parent
    done = len(tally(study))
    device = resolve_device(options.preset.train.device)
    console.print(
        f"[bold]{'Created' if sweep.created else 'Resuming'} study[/] {options.study_name}: "
        f"{done}/{space.n_trials} trials done, preset [cyan]{options.preset.name}[/] on {device}, "
        f"MLflow parent run {parent.run_id}"
    )
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        with SweepProgress(space.n_trials, done, console) as progress:
            if done < space.n_trials and options.preset.analysis.runs("connectivity"):
                _train_references(sweep, progress)
            if options.workers > 1:
                run_workers(sweep, progress)
            else:
                work(sweep, progress)
            finished = tally(study)
            decided = stopped(study) is not None and not running_elsewhere(study)
            complete = (len(finished) >= space.n_trials or decided) and _parent_status(parent) != "FINISHED"
            if complete and options.preset.analysis.runs("connectivity") and options.max_pairs > 0:
                barrier_matrix(study, trial_context(sweep, progress), parent, options.max_pairs)
        print_trials(study, console)
        if stopped(study):
            console.print(f"[bold]Until decided:[/] {stopped(study)}", highlight=False)
        if complete and space.kind == "spawn":
            log_instability_report(sweep.store, parent.run_id, console)
            console.print(f"report.html logged to parent run {parent.run_id}", highlight=False)
        elif complete:
            correlation = report_sweep(
                sweep.store,
                experiment_id=sweep.experiment_id,
                study=options.study_name,
                parent_run_id=parent.run_id,
                console=console,
            )
            population = load_population(sweep.store, parent_run_id=parent.run_id)
            log_population(sweep.store, parent.run_id, population)
            log_html_report(sweep.store, parent.run_id, population, correlation)
            print_answers(population, console)
            console.print(f"report.html logged to parent run {parent.run_id}", highlight=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = sum(1 for t in finished.values() if t.state == TrialState.FAIL)
    if complete:
        parent.metrics({"sweep/finished": len(finished) - failed, "sweep/failed": failed})
        parent.finish("FINISHED")
    elif len(finished) < space.n_trials:
        running = running_elsewhere(study)
        if stopped(study):
            console.print(f"{len(finished)}/{space.n_trials} trials done; the sweep stopped: {stopped(study)}.")
        elif running:
            console.print(
                f"{len(finished)}/{space.n_trials} trials done; {running} still running in other workers, "
                "which finish the sweep."
            )
        else:
            console.print(f"{len(finished)}/{space.n_trials} trials done; rerun the same command to finish the sweep.")
    return SweepOutcome(options.study_name, parent.run_id, len(finished) - failed, failed, space.n_trials)
