"""Does sharpness predict generalization? The correlation report over a population of trial runs.

``python -m tracking.correlate [--experiment NAME] [--study NAME | --parent-run ID] [--measures ...]
[--targets ...] [--json PATH] [--tracking-uri URI] [--root mlruns] [--n-boot N] [--log-to-parent]``

For every (measure, target) pair :func:`analyze` reports the pooled rank correlations of
``landscape_core.stats.correlation_table`` (with the partial correlation given the final train loss), the partial
correlation given train loss and log learning rate, the granulated Kendall coefficient over the (seed, lr) axes,
Spearman's rho within each learning rate and within each seed, a Simpson's-paradox flag, the missing count, the
power note and a one-line verdict. :func:`report_sweep` is what a sweep runs at its end: analyze the study, print
the table and log ``data/correlation.json``, ``figures/correlation_scatter.png`` and ``correlation.txt`` to the
study's parent run, never failing the sweep.

Fewer than ``MIN_RUNS`` (4) finished runs: the report has status ``"too_few_runs"``, no rows and a message; the CLI
prints the message, writes that (valid) JSON when asked, and exits 0. An empty population is bad input (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from landscape_core import stats
from landscape_core.stats import CorrelationRow
from tracking import keys
from tracking.population import Population, PopulationError, load_population
from tracking.store import DEFAULT_ROOT, StoreError, TrackingStore

__all__ = [
    "MIN_RUNS",
    "CorrelationEntry",
    "CorrelationReport",
    "analyze",
    "log_report",
    "main",
    "power_note",
    "report_sweep",
    "scatter_measures",
]

#: Fewer finished runs than this give an empty report (status "too_few_runs"): no statistic means anything.
MIN_RUNS = stats.MIN_N
#: The scatter grid logged to the parent run shows at most this many measures (and every target).
MAX_SCATTER_MEASURES = 8
#: Measures the scatter grid prefers, in order, when there are more than ``MAX_SCATTER_MEASURES``.
_SCATTER_PRIORITY = (
    "hessian/lambda_max",
    "hessian/trace",
    "sharpness/eps",
    "flatness/pac_bayes",
    "perturb/test_loss_delta/sigma_0.05",
    "barrier/test_loss",
    "norm/weights",  # a sharpness measure only matters if it beats the norm baselines
    "sharpness/adaptive",
    "norm/dist_init",
)
_NAN = float("nan")


@dataclass(frozen=True)
class CorrelationEntry:
    """Everything the report says about one (measure, target) pair.

    Attributes:
        row: The pooled row of ``correlation_table`` (partial correlation given train loss; Holm over the report).
        partial_lr_spearman: Spearman partial correlation given train loss and log(lr); NaN when lr does not vary,
            for the train-loss control itself, or when undefined.
        partial_lr_p: Its p-value.
        within_lr: ``{lr label: (rho, n)}`` Spearman rho inside each learning rate (NaN in groups of fewer than
            ``MIN_RUNS`` runs); empty when lr does not vary.
        within_seed: ``{seed label: (rho, n)}`` Spearman rho inside each seed (same rule); empty when the seed does
            not vary.
        within_lr_mean: n-weighted mean of the finite within-lr rhos; NaN when there is none.
        within_seed_mean: n-weighted mean of the finite within-seed rhos; NaN when there is none.
        simpson: True when the pooled sign disagrees with the within-lr or the within-seed majority
            (``stats.simpson_flag``).
        simpson_axes: The axes ("lr", "seed") on which it disagrees.
        missing: Runs of the population without a finite value of this measure.
        min_detectable_rho: Smallest |rho| detectable at this row's n, alpha and 80% power; NaN when n < 4.
        verdict: One line in plain words.
    """

    row: CorrelationRow
    partial_lr_spearman: float
    partial_lr_p: float
    within_lr: dict[str, tuple[float, int]]
    within_seed: dict[str, tuple[float, int]]
    within_lr_mean: float
    within_seed_mean: float
    simpson: bool
    simpson_axes: tuple[str, ...]
    missing: int
    min_detectable_rho: float
    verdict: str

    @property
    def measure(self) -> str:
        return self.row.measure

    @property
    def target(self) -> str:
        return self.row.target

    def to_dict(self) -> dict[str, Any]:
        """Every field flat and JSON-safe (NaN as null): the row's fields, then the confound analysis."""
        out = self.row.to_dict()
        out.update(
            partial_lr_spearman=_finite_or_none(self.partial_lr_spearman),
            partial_lr_p=_finite_or_none(self.partial_lr_p),
            within_lr={k: {"rho": _finite_or_none(r), "n": n} for k, (r, n) in self.within_lr.items()},
            within_seed={k: {"rho": _finite_or_none(r), "n": n} for k, (r, n) in self.within_seed.items()},
            within_lr_mean=_finite_or_none(self.within_lr_mean),
            within_seed_mean=_finite_or_none(self.within_seed_mean),
            simpson=self.simpson,
            simpson_axes=list(self.simpson_axes),
            missing=self.missing,
            min_detectable_rho=_finite_or_none(self.min_detectable_rho),
            verdict=self.verdict,
        )
        return out


@dataclass(frozen=True)
class CorrelationReport:
    """The whole report: one entry per (measure, target), measure-major, and the population's bookkeeping.

    Attributes:
        entries: One per (measure, target); empty when ``status`` is ``"too_few_runs"``.
        measures: Measure keys, in report order.
        targets: Target name -> metric key (``keys.TARGETS`` names).
        population: ``Population.counts()``: source, n_runs, n_not_finished, n_duplicates, studies.
        missing: Measure key -> runs without a finite value.
        lr_varies: More than one learning rate in the population.
        seed_varies: More than one seed in the population.
        alpha: Significance level (Holm over all entries).
        n_boot: Bootstrap resamples per row.
        n_perm: Permutation resamples per row.
        seed: Seed of the resampling.
        status: ``"ok"`` or ``"too_few_runs"``.
        message: Why the report is empty (status ``"too_few_runs"``), else "".
    """

    entries: tuple[CorrelationEntry, ...]
    measures: tuple[str, ...]
    targets: dict[str, str]
    population: dict[str, Any]
    missing: dict[str, int] = field(default_factory=dict)
    lr_varies: bool = False
    seed_varies: bool = False
    alpha: float = 0.05
    n_boot: int = 2000
    n_perm: int = 2000
    seed: int = 0
    status: str = "ok"
    message: str = ""

    @property
    def n_runs(self) -> int:
        return int(self.population.get("n_runs", 0))

    @property
    def power_note(self) -> str:
        """``"n = 20 detects only |rho| >= 0.59 at alpha 0.05 with 80% power"`` for the population's n."""
        return power_note(self.n_runs, self.alpha)

    def for_target(self, target: str) -> list[CorrelationEntry]:
        """The entries of one target, in measure order."""
        return [e for e in self.entries if e.target == target]

    def entry(self, measure: str, target: str) -> CorrelationEntry:
        """The entry of one (measure, target) pair.

        Raises:
            KeyError: When the pair is not in the report.
        """
        for e in self.entries:
            if e.measure == measure and e.target == target:
                return e
        raise KeyError((measure, target))

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-safe dict: settings, population counts, power note and one row per pair."""
        n = self.n_runs
        return {
            "status": self.status,
            "message": self.message,
            "population": self.population,
            "alpha": self.alpha,
            "n_boot": self.n_boot,
            "n_perm": self.n_perm,
            "seed": self.seed,
            "measures": list(self.measures),
            "targets": dict(self.targets),
            "missing": dict(self.missing),
            "lr_varies": self.lr_varies,
            "seed_varies": self.seed_varies,
            "power": {
                "n": n,
                "alpha": self.alpha,
                "power": 0.8,
                "min_detectable_rho": stats.min_detectable_rho(n, self.alpha) if n >= MIN_RUNS else None,
                "note": self.power_note,
            },
            "rows": [e.to_dict() for e in self.entries],
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def power_note(n: int, alpha: float = 0.05) -> str:
    """The smallest |rho| detectable at n runs, in words (Fisher z, 80% power)."""
    if n < MIN_RUNS:
        return f"n = {n}: too few runs for any test (need n >= {MIN_RUNS})"
    return f"n = {n} detects only |rho| >= {stats.min_detectable_rho(n, alpha):.2f} at alpha {alpha:g} with 80% power"


# --------------------------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------------------------


def _resolve_targets(targets: Sequence[str] | None) -> dict[str, str]:
    if targets is None:
        return dict(keys.TARGETS)
    by_key = {v: k for k, v in keys.TARGETS.items()}
    out: dict[str, str] = {}
    for name in targets:
        if name in keys.TARGETS:
            out[name] = keys.TARGETS[name]
        elif name in by_key:
            out[by_key[name]] = name
        else:
            raise ValueError(f"unknown target {name!r}; expected one of {', '.join(keys.TARGETS)}")
    if not out:
        raise ValueError("Expected at least one target, got 0")
    return out


def _resolve_measures(measures: Sequence[str] | None, available: list[str]) -> list[str]:
    """Measure keys; a name may be a full key or an unambiguous last component (``lambda_max``)."""
    if measures is None:
        if not available:
            raise ValueError("the population has no measure metrics (not even final/train_loss)")
        return available
    out: list[str] = []
    for name in measures:
        if name in available:
            key = name
        else:
            matches = [k for k in available if k.rsplit("/", 1)[-1] == name or k.endswith("/" + name)]
            if len(matches) != 1:
                why = "ambiguous" if matches else "unknown"
                raise ValueError(f"{why} measure {name!r}; the population has: {', '.join(available) or 'none'}")
            key = matches[0]
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError("Expected at least one measure, got 0")
    return out


def _weighted_mean(within: Mapping[Any, tuple[float, int]]) -> float:
    pairs = [(r, n) for r, n in within.values() if math.isfinite(r) and n > 0]
    if not pairs:
        return _NAN
    return float(sum(r * n for r, n in pairs) / sum(n for _, n in pairs))


def _within(x: np.ndarray, y: np.ndarray, labels: np.ndarray, name: Any) -> dict[str, tuple[float, int]]:
    """``stats.within_group_spearman`` with string labels, and rho NaN in groups of fewer than ``MIN_RUNS`` runs.

    A rho from three runs can only be +-1 or +-0.5: noise that would raise the Simpson flag on unrelated columns
    half the time. Groups below the table's own minimum n therefore count neither in the mean nor in the flag.
    """
    out = {}
    for label, (rho, n) in stats.within_group_spearman(x, y, labels).items():
        out[name(label)] = (rho if n >= MIN_RUNS else _NAN, n)
    return out


def _lr_label(lr: Any) -> str:
    return f"{float(lr):.6g}"


def analyze(
    population: Population,
    *,
    measures: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    n_boot: int = 2000,
    n_perm: int | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> CorrelationReport:
    """Test every measure against every generalization target over the population, with its confounds.

    One ``stats.correlation_table`` call over all pairs (so Holm's family is the whole report), with the final
    train loss as covariate, ``axes={"seed", "lr"}`` for the granulated Kendall and, when lr varies, the lr as
    bootstrap clusters (runs at one lr share it, so resampling runs would overstate the precision). Per pair it adds
    the partial correlation given train loss and log(lr) (lr varying only), the within-lr and within-seed rhos (from
    groups of at least ``MIN_RUNS`` runs; see ``_within``), the Simpson flag and the verdict. The train-loss
    control gets no partial correlations (they would be with itself). Spearman partials rank their covariates, so
    log(lr) and lr give the same numbers; log is the natural scale.

    Args:
        population: The runs (``load_population``).
        measures: Measure keys or unambiguous last components; default: ``population.measure_keys()``.
        targets: Names from ``keys.TARGETS`` (or their metric keys); default: all four.
        n_boot: Bootstrap resamples per row.
        n_perm: Permutation resamples per row; None: enough for the report's Holm family to reach ``alpha``
            (``stats.permutations_for``; the number used is in the report).
        alpha: Significance level.
        seed: Seed of the resampling.

    Returns:
        The report; with fewer than ``MIN_RUNS`` runs, an empty one with status ``"too_few_runs"``.

    Raises:
        ValueError: On an empty population, an unknown target or measure, or bad ``n_boot``/``n_perm``/``alpha``.
    """
    target_map = _resolve_targets(targets)
    n = len(population.runs)
    if n == 0:
        raise ValueError(f"the population ({population.source or 'selection'}) has no finished trial runs")
    measure_keys = _resolve_measures(measures, population.measure_keys())
    missing = {k: population.missing(k) for k in measure_keys}
    lrs, seeds = population.lrs, population.seeds
    lr_varies = len({_lr_label(v) for v in lrs[np.isfinite(lrs)]}) > 1
    seed_varies = len(set(seeds.tolist())) > 1
    if n_perm is None:
        n_perm = stats.permutations_for(len(measure_keys) * len(target_map), alpha)
    common = dict(
        measures=tuple(measure_keys),
        targets=target_map,
        population=population.counts(),
        missing=missing,
        lr_varies=lr_varies,
        seed_varies=seed_varies,
        alpha=alpha,
        n_boot=n_boot,
        n_perm=n_perm,
        seed=seed,
    )
    if n < MIN_RUNS:
        message = (
            f"only {n} finished run{'s' if n != 1 else ''} in {population.source or 'the selection'}: "
            f"a correlation needs at least {MIN_RUNS}; no statistics computed"
        )
        return CorrelationReport(entries=(), status="too_few_runs", message=message, **common)

    train_loss = population.column(keys.CONTROL)
    covariate = train_loss if np.isfinite(train_loss).any() else None
    measure_cols = {k: population.column(k) for k in measure_keys}
    target_cols = {name: population.column(key) for name, key in target_map.items()}
    rows = stats.correlation_table(
        measure_cols,
        target_cols,
        covariate=covariate,
        axes={"seed": seeds, "lr": np.array([_lr_label(v) for v in lrs])},
        groups=np.array([_lr_label(v) for v in lrs]) if lr_varies else None,
        n_boot=n_boot,
        n_perm=n_perm,
        alpha=alpha,
        seed=seed,
    )

    log_lr = np.log(np.where(lrs > 0, lrs, np.nan))
    entries = []
    for row in rows:
        x, y = measure_cols[row.measure], target_cols[row.target]
        is_control = row.measure == keys.CONTROL
        if is_control:
            row = dataclasses.replace(row, partial_spearman=_NAN, partial_p=_NAN)
        partial_lr = (_NAN, _NAN)
        if lr_varies and covariate is not None and not is_control:
            partial_lr = stats.partial_spearman(x, y, {"train_loss": train_loss, "log_lr": log_lr})
        within_lr = _within(x, y, lrs, _lr_label) if lr_varies else {}
        within_seed = _within(x, y, seeds, str) if seed_varies else {}
        simpson_axes = tuple(
            axis
            for axis, within in (("lr", within_lr), ("seed", within_seed))
            if within and stats.simpson_flag(row.spearman, within)
        )
        within_lr_mean, within_seed_mean = _weighted_mean(within_lr), _weighted_mean(within_seed)
        entries.append(
            CorrelationEntry(
                row=row,
                partial_lr_spearman=float(partial_lr[0]),
                partial_lr_p=float(partial_lr[1]),
                within_lr=within_lr,
                within_seed=within_seed,
                within_lr_mean=within_lr_mean,
                within_seed_mean=within_seed_mean,
                simpson=bool(simpson_axes),
                simpson_axes=simpson_axes,
                missing=missing[row.measure],
                min_detectable_rho=stats.min_detectable_rho(row.n, alpha) if row.n >= MIN_RUNS else _NAN,
                verdict=_verdict(row, partial_lr, simpson_axes, within_lr_mean, within_seed_mean, alpha),
            )
        )
    return CorrelationReport(entries=tuple(entries), **common)


def _verdict(
    row: CorrelationRow,
    partial_lr: tuple[float, float],
    simpson_axes: tuple[str, ...],
    within_lr_mean: float,
    within_seed_mean: float,
    alpha: float,
) -> str:
    """``stats.verdict`` with its covariate named, plus what log(lr) and Simpson's paradox change."""
    text = stats.verdict(row, alpha).replace("the covariate", "train loss")
    rho_lr, p_lr = partial_lr
    if row.significant and math.isfinite(rho_lr) and math.isfinite(p_lr):
        how = "holds" if p_lr < alpha else "vanishes"
        text += f"; {how} given train loss + log lr (partial rho={rho_lr:+.2f}, p={p_lr:.2g})"
    for axis in simpson_axes:
        mean = within_lr_mean if axis == "lr" else within_seed_mean
        text += f"; SIMPSON: within each {axis} the sign flips (mean rho={mean:+.2f})"
    return text


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


def log_report(store: TrackingStore, parent_run_id: str, report: CorrelationReport, population: Population) -> None:
    """Log ``data/correlation.json``, ``figures/correlation_scatter.png`` and ``correlation.txt`` to a run.

    The scatter grid (``scatter_measures`` x all targets, coloured by lr) is skipped for an empty report.
    """
    from landscape_core.plots.correlation import scatter_grid
    from tracking.report import render_text
    from tracking.runs import RunLogger

    run = RunLogger(store.client(), parent_run_id)
    run.json(report.to_json(), "correlation")
    run.text(render_text(report), "correlation.txt")
    if report.entries:
        chosen = scatter_measures(report)
        figure = scatter_grid(
            {m: population.column(m) for m in chosen},
            {name: population.column(key) for name, key in report.targets.items()},
            color_by=population.lrs,
            color_label="lr",
        )
        run.figure(figure, "correlation_scatter")


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

    Returns:
        The report, or None when there was nothing to report or it failed.
    """
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
        report = analyze(population, measures=measures, n_boot=n_boot, n_perm=n_perm)
        if report.status != "ok":
            console.print(f"[yellow]correlation report skipped:[/] {report.message}", highlight=False)
            return None
        from tracking.report import render

        render(report, console)
        parent = parent_run_id or _find_parent(store, population, study)
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


class _ArgumentError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors turned into the one-line exit-2 policy."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(message)


def parser() -> argparse.ArgumentParser:
    """The command line; its usage errors raise instead of exiting, so ``main`` applies the exit-2 policy."""
    p = _Parser(
        prog="python -m tracking.correlate",
        description="Does sharpness predict generalization? Rank correlations of every measure with every target "
        "over a population of finished trial runs, with confounds (train loss, lr), Holm and a power note.",
    )
    p.add_argument("--experiment", help="MLflow experiment (default: seeds and lr, or any with --study)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--study", help="Optuna study name (tag study)")
    which.add_argument("--parent-run", help="the study's parent run id")
    p.add_argument("--measures", nargs="+", help="measure keys (default: every measure the runs logged)")
    p.add_argument("--targets", nargs="+", help=f"targets (default: all of {', '.join(keys.TARGETS)})")
    p.add_argument("--json", type=Path, help="write the report as JSON to this path")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in --root)")
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="local store directory (default ./mlruns)")
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
    return p


def _local_store_missing(args: argparse.Namespace) -> bool:
    return not args.tracking_uri and not (Path(args.root) / "mlflow.db").exists()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load, analyze, print, write; bad input prints one line and returns 2 (and writes nothing)."""
    from tracking.report import output_console

    console = output_console()
    try:
        args = parser().parse_args(argv)
    except _ArgumentError as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    try:
        if args.n_boot < 1 or (args.n_perm is not None and args.n_perm < 1):
            raise ValueError(f"Expected `--n-boot` and `--n-perm` >= 1, got {args.n_boot} and {args.n_perm}")
        _resolve_targets(args.targets)  # an unknown target is reported before the store is touched
        if _local_store_missing(args):
            # Reading must not create an empty store as a side effect.
            raise StoreError(f"no store at {Path(args.root).resolve()} (no mlflow.db); run a sweep first")
        store = TrackingStore.resolve(args.tracking_uri, args.root)
        population = load_population(store, experiment=args.experiment, study=args.study, parent_run_id=args.parent_run)
        if not population.runs:
            raise PopulationError(f"no finished trial runs in {population.source}")
        report = analyze(
            population,
            measures=args.measures,
            targets=args.targets,
            n_boot=args.n_boot,
            n_perm=args.n_perm,
            alpha=args.alpha,
            seed=args.seed,
        )
        parent = None
        if args.log_to_parent and report.status == "ok":
            parent = args.parent_run or _find_parent(store, population, args.study)
            if parent is None:
                raise ValueError("--log-to-parent needs one parent run: give --study or --parent-run")
    except (ValueError, StoreError) as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2

    from tracking.report import render

    if report.status == "ok":
        render(report, console)
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


if __name__ == "__main__":
    sys.exit(main())
