"""The correlation report as a command and at the end of a sweep: logging it to the parent run, and the CLI.

``python -m tracking.correlate [--experiment NAME] [--study NAME | --parent-run ID] [--measures ...]
[--targets ...] [--json PATH] [--tracking-uri URI] [--root mlruns] [--n-boot N] [--log-to-parent]``

The analysis is ``tracking.correlation.analyze`` and the tables are ``tracking.render.render``. Here:
:func:`log_report` logs ``data/correlation.json``, ``figures/correlation_scatter.png`` (the measures of
:func:`scatter_measures`) and ``correlation.txt`` to a run; :func:`report_sweep` is what a sweep runs at its end:
analyze the study, print the table and log it to the study's parent run, never failing the sweep; :func:`main` is
the command line.

The command line follows ``landscape_core.cli.run_command``: bad input (bad ``--n-boot``/``--n-perm``/``--alpha``,
an unknown target or measure, an empty population, a missing store, ``--log-to-parent`` without a parent) prints one
line and exits 2, and writes nothing; any other error is a bug and keeps its traceback (exit 1). Fewer than
``MIN_RUNS`` (4) finished runs is not an error: the CLI prints the report's message, writes that (valid) JSON when
asked, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from landscape_core import keys
from landscape_core.cli import ArgumentParser, require, require_writable, run_command
from landscape_core.errors import UsageError
from tracking.correlation import CorrelationReport, analyze, resolve_targets
from tracking.plan import read_plan, read_sequential
from tracking.population import Population, add_selection_options, load_population, select_population
from tracking.reliability import reliabilities
from tracking.store import TrackingStore

# The modules that import MLflow, torch or matplotlib (logging, the invariance audit, the tables, the figure) are
# imported in the functions that use them: ``python -m tracking.correlate`` refuses bad input without them.

__all__ = [
    "MAX_SCATTER_MEASURES",
    "analyze_population",
    "log_report",
    "main",
    "parser",
    "report_sweep",
    "scatter_measures",
]

#: The scatter grid logged to the parent run shows at most this many measures (and every target).
MAX_SCATTER_MEASURES = 8
#: Measures the scatter grid prefers, in order, when there are more than ``MAX_SCATTER_MEASURES``.
_SCATTER_PRIORITY = (
    "hessian/lambda_max",
    "hessian/lambda_max_normalized",  # its rescaling-invariant counterpart
    "hessian/trace",
    "sharpness/eps",
    "sharpness/adaptive",
    "norm/fisher_rao",
    "norm/weights",  # a sharpness measure only matters if it beats the norm baselines
    "perturb/train_loss_delta/sigma_0.05",
    "barrier/train_loss",
    "norm/dist_init",
)


# --------------------------------------------------------------------------------------------------------------
# Logging to the parent run, and the end-of-sweep report
# --------------------------------------------------------------------------------------------------------------


def scatter_measures(report: CorrelationReport, cap: int = MAX_SCATTER_MEASURES) -> list[str]:
    """The measures shown in the scatter grid: all when at most ``cap``, else the main ones.

    Main ones: the preferred sharpness measures and norm baselines that are present (``_SCATTER_PRIORITY``), then
    the other measures in report order, cut to ``cap - 1``, and always the train-loss control last.
    """
    measures = list(report.measures)
    if len(measures) <= cap:
        return measures
    control = [keys.CONTROL] if keys.CONTROL in measures else []
    rest = [m for m in measures if m != keys.CONTROL]
    ranked = [m for m in _SCATTER_PRIORITY if m in rest] + [m for m in rest if m not in _SCATTER_PRIORITY]
    chosen = set(ranked[: cap - len(control)])
    return [m for m in measures if m in chosen] + control


def analyze_population(
    store: TrackingStore, population: Population, parent_run_id: str | None, **options: Any
) -> CorrelationReport:
    """``tracking.correlation.analyze`` with what the sweep left on its parent run and trial runs: the analysis
    plan declared on the parent (``tracking.plan``; none: the default plan, post hoc), the invariance audit and the
    reliability audit's re-measurements (``tracking.reliability``). ``options`` go to ``analyze``."""
    from tracking.invariance import population_invariance

    return analyze(
        population,
        plan=read_plan(store.client(), parent_run_id),
        sequential=read_sequential(store.client(), parent_run_id),
        invariance=population_invariance(store, population),
        reliability=reliabilities(population, population.measure_keys()),
        **options,
    )


def full_tables_hint(parent_run_id: str | None) -> str:
    """Where the full tables of a report are, for the end of its summary."""
    if parent_run_id is None:
        return "python -m tracking.correlate ... --full"
    return f"python -m tracking.correlate --parent-run {parent_run_id} --full; report.html on that parent run"


def log_report(store: TrackingStore, parent_run_id: str, report: CorrelationReport, population: Population) -> None:
    """Log ``data/correlation.json``, ``figures/correlation_scatter.png`` and ``correlation.txt`` to a run, and the
    measures' reliabilities as ``reliability/<measure>`` (test-retest Spearman) and
    ``reliability_ratio/<measure>`` (within / between variance).

    The scatter grid (``scatter_measures`` x all targets, coloured by lr) is skipped for an empty report. The run's
    description and headline metrics are ``tracking.headline.log_headline``.
    """
    from landscape_core.plots.correlation import scatter_grid
    from tracking.headline import log_headline
    from tracking.render import render_text
    from tracking.runs import RunLogger

    run = RunLogger(store.client(), parent_run_id)
    run.json(report.to_json(), "correlation")
    run.text(render_text(report), "correlation.txt")
    if report.reliability:
        run.json({k: r.to_dict() for k, r in report.reliability.items()}, "reliability")
        run.metrics(
            {f"reliability/{k}": r.spearman for k, r in report.reliability.items()}
            | {f"reliability_ratio/{k}": r.variance_ratio for k, r in report.reliability.items()}
        )
    if report.entries:
        chosen = scatter_measures(report)
        figure = scatter_grid(
            {m: population.column(m) for m in chosen},
            {name: population.column(key) for name, key in report.targets.items()},
            color_by=population.lrs,
            color_label="lr",
        )
        run.figure(figure, "correlation_scatter")
    log_headline(store, parent_run_id, report)


def report_sweep(
    store: TrackingStore,
    *,
    experiment_id: str | None = None,
    experiment: str | None = None,
    study: str | None = None,
    parent_run_id: str | None = None,
    console: Console | None = None,
    measures: Sequence[str] | None = None,
    n_boot: int = 2000,
    n_perm: int | None = None,
    full: bool = False,
) -> CorrelationReport | None:
    """End-of-sweep report: analyze the study's runs, print the table and log it to the study's parent run.

    The population is the parent run's children when ``parent_run_id`` is given, else the study's runs (in the
    experiment given by id or name). The parent is ``parent_run_id``, else the study's run tagged
    ``run_kind=parent``. This never raises: too few runs, or any error, prints a one-line note and returns None
    (a sweep must not fail because its summary could not be made).

    Args:
        store: The sweep's tracking store.
        experiment_id: The sweep's experiment id (or give ``experiment``).
        experiment: The sweep's experiment name.
        study: The Optuna study name.
        parent_run_id: The study's parent run.
        console: Where to print; a new Console by default.
        measures: Measures to report (default: every measure the runs logged).
        n_boot: Bootstrap resamples per row.
        n_perm: Permutation resamples per row (None: as many as the Holm family needs, see ``analyze``).
        full: Print every table (``render(full=True)``) instead of the one-screen summary.

    Returns:
        The report, or None when there was nothing to report or it failed.
    """
    from tracking.render import render

    console = console or Console()
    try:
        client = store.client()
        if experiment is None and experiment_id is not None:
            experiment = client.get_experiment(experiment_id).name
        if parent_run_id is not None:
            population = load_population(store, parent_run_id=parent_run_id)
        else:
            population = load_population(store, experiment=experiment, study=study)
        if not population.runs:
            console.print(f"[yellow]correlation report skipped:[/] no finished trial runs in {population.source}")
            return None
        parent = parent_run_id or _find_parent(store, population, study)
        report = analyze_population(store, population, parent, measures=measures, n_boot=n_boot, n_perm=n_perm)
        if report.status != "ok":
            console.print(f"[yellow]correlation report skipped:[/] {report.message}", highlight=False)
            return None
        render(report, console, full=full, where=full_tables_hint(parent))
        if parent is None:
            console.print("[yellow]correlation report not logged:[/] no parent run found", highlight=False)
        else:
            log_report(store, parent, report, population)
            console.print(f"correlation report logged to parent run {parent}", highlight=False)
        return report
    except Exception as error:  # never crash the sweep over its summary
        console.print(f"[yellow]correlation report failed:[/] {type(error).__name__}: {error}", highlight=False)
        return None


def _find_parent(store: TrackingStore, population: Population, study: str | None) -> str | None:
    """The one parent run of the population's runs, else the run tagged ``run_kind=parent`` for the study."""
    parents = {run.parent_run_id for run in population.runs if run.parent_run_id}
    if len(parents) == 1:
        return parents.pop()
    if study is not None and "'" not in study:
        client = store.client()
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(
            experiment_ids,
            filter_string=f"tags.study = '{study}' and tags.run_kind = 'parent'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if found:
            return found[0].info.run_id
    return None


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The command line; its usage errors raise ``UsageError`` (one line, exit 2 under ``run_command``)."""
    p = ArgumentParser(
        prog="python -m tracking.correlate",
        description="Does sharpness predict generalization? Rank correlations of every measure with every target "
        "over a population of finished trial runs, with confounds (train loss, lr), Holm and a power note.",
    )
    add_selection_options(p)
    p.add_argument("--measures", nargs="+", help="measure keys (default: every measure the runs logged)")
    p.add_argument("--targets", nargs="+", help=f"targets (default: all of {', '.join(keys.TARGETS)})")
    p.add_argument("--json", type=Path, help="write the report as JSON to this path")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument(
        "--n-perm",
        type=int,
        default=None,
        help="permutation resamples per row (default: enough for Holm over the whole report to reach alpha, >= 2000)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    p.add_argument("--log-to-parent", action="store_true", help="log JSON, figure and table to the parent run")
    p.add_argument(
        "--full",
        action="store_true",
        help="print every table (one per target, every verdict, the A-versus-B table) instead of the summary",
    )
    p.add_argument(
        "--exclude-flagged",
        action="store_true",
        help="leave out runs whose estimate did not converge (lambda_max) or was not bracketed (PAC-Bayes sigma*)",
    )
    return p


def _check_args(args: argparse.Namespace) -> None:
    """What can be checked before the store is touched; a ``UsageError`` on bad input."""
    require(args.n_boot >= 1, "--n-boot", ">= 1", args.n_boot)
    require(args.n_perm is None or args.n_perm >= 1, "--n-perm", ">= 1", args.n_perm)
    require(0.0 < args.alpha < 1.0, "--alpha", "in (0, 1)", args.alpha)
    require(args.seed >= 0, "--seed", ">= 0", args.seed)
    resolve_targets(args.targets)  # an unknown target is reported before the store is touched
    require_writable("--json", args.json)  # written at the end: refused before the analysis, not after it


def _correlate(args: argparse.Namespace, console: Console) -> int:
    """Check, load, analyze; then (only when all of that succeeded) print, write and log. Exit status 0."""
    _check_args(args)
    store, population = select_population(args)
    found = args.parent_run or (_find_parent(store, population, args.study) if population.runs else None)
    report = analyze_population(
        store,
        population,
        found,
        measures=args.measures,
        targets=args.targets,
        n_boot=args.n_boot,
        n_perm=args.n_perm,
        alpha=args.alpha,
        seed=args.seed,
        exclude_flagged=args.exclude_flagged,
    )
    parent = None
    if args.log_to_parent and report.status == "ok":
        parent = found
        if parent is None:
            raise UsageError("--log-to-parent needs one parent run: give --study or --parent-run")

    from tracking.render import render

    if report.status == "ok":
        render(report, console, full=args.full, where=full_tables_hint(found))
    else:
        console.print(f"[yellow]{report.message}[/]", highlight=False)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=1) + "\n")
        console.print(f"wrote {args.json}", highlight=False)
    if parent is not None:
        log_report(store, parent, report, population)
        console.print(f"logged to parent run {parent}", highlight=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run; bad input prints one line and returns 2 (and writes nothing), a bug raises."""
    return run_command(parser(), argv, _correlate)


if __name__ == "__main__":
    sys.exit(main())
