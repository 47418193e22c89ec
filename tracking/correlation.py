"""Does sharpness predict generalization? The correlation report's data model and its analysis.

For every (measure, target) pair :func:`analyze` reports the pooled rank correlations of
``tracking.population_stats.correlation_table`` (with the partial correlation given the final train loss), the
partial correlation given train loss and log learning rate, the granulated Kendall coefficient over the (seed, lr)
axes, Spearman's rho within each learning rate and within each seed, a Simpson's-paradox flag, the missing count, the
power note and a one-line verdict, as a :class:`CorrelationReport` of :class:`CorrelationEntry` rows.

Fewer than ``MIN_RUNS`` (4) finished runs: the report has status ``"too_few_runs"``, no rows and a message. An empty
population, an unknown target or an unknown measure is bad input (``UsageError``).

Rendering is ``tracking.render``; logging to the parent run, the end-of-sweep report and the command line are
``tracking.correlate``. This module reads a ``Population`` but never talks to MLflow itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from landscape_core import keys
from landscape_core.errors import UsageError
from tracking.pairs import PairAgreement, SignError, claim_sentence, pair_agreement, sign_error
from tracking.plan import AnalysisPlan, Hypothesis, PrimaryTest
from tracking.population import Population
from tracking.population_stats import (
    MIN_N,
    CorrelationRow,
    benjamini_hochberg,
    correlation_table,
    holm,
    min_detectable_rho,
    min_detectable_rho_holm,
    n_needed,
    partial_spearman,
    permutations_for,
    simpson_flag,
    within_group_spearman,
)
from tracking.reliability import LOW_RELIABILITY, Reliability, disattenuate

__all__ = [
    "MIN_RUNS",
    "CorrelationEntry",
    "CorrelationReport",
    "PairQuestion",
    "PrimaryResult",
    "analyze",
    "decided_tests",
    "power_note",
    "resolve_targets",
]

#: Fewer finished runs than this give an empty report (status "too_few_runs"): no statistic means anything.
MIN_RUNS = MIN_N
_NAN = float("nan")


@dataclass(frozen=True)
class CorrelationEntry:
    """Everything the report says about one (measure, target) pair.

    Attributes:
        row: The pooled row of ``correlation_table`` (partial correlation given train loss; its ``holm_p`` is Holm over
            every row of the report, kept for ``--full``; the verdict rests on ``adjusted_p``).
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
            (``population_stats.simpson_flag``).
        simpson_axes: The axes ("lr", "seed") on which it disagrees.
        missing: Runs of the population without a finite value of this measure.
        min_detectable_rho: Smallest |rho| detectable at this row's n at Holm's first step over the report's rows,
            with 80% power; NaN when n < 4 or when nothing is detectable.
        verdict: One line in plain words.
        invariance_ratio: max / min of the measure over function-preserving rescalings of one minimum of the sweep
            (the parent run's audit, ``landscape_core.invariance``); inf for a sign flip, NaN when not audited.
        flagged: Runs whose estimate of this measure did not converge (Lanczos) or was not bracketed (PAC-Bayes
            bisection), by ``keys.RELIABILITY``; excluded from the row when the report says ``exclude_flagged``.
        primary: The (measure, target) pair is a primary hypothesis of the analysis plan.
        adjusted_p: Primary: Holm-adjusted p of the raw test over the plan's primary tests. Exploratory: the
            Benjamini-Hochberg q-value over every exploratory row.
        reliability: The measure's test-retest Spearman from the sweep's reliability audit (NaN: not audited).
        disattenuated: ``rho / sqrt(reliability)`` (``tracking.reliability.disattenuate``).
        alpha: The level ``adjusted_p`` is read at.
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
    invariance_ratio: float = _NAN
    flagged: int = 0
    primary: bool = False
    adjusted_p: float = _NAN
    reliability: float = _NAN
    disattenuated: float = _NAN
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        """Significant in its own family: Holm over the primary tests (primary rows), Benjamini-Hochberg q below
        alpha (exploratory rows)."""
        return math.isfinite(self.adjusted_p) and self.adjusted_p < self.alpha

    @property
    def family(self) -> str:
        """``primary``, ``exploratory``, or ``control`` (the train loss: a confound, in no family)."""
        if self.primary:
            return "primary"
        return "control" if self.measure == keys.CONTROL else "exploratory"

    @property
    def invariant(self) -> bool | None:
        """True when audited and invariant, False when audited and not, None when not audited."""
        from landscape_core.invariance import INVARIANT_RATIO  # imports torch: not when a CLI only checks its input

        if math.isnan(self.invariance_ratio):
            return None
        return self.invariance_ratio <= INVARIANT_RATIO

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
            invariance_ratio="inf" if math.isinf(self.invariance_ratio) else _finite_or_none(self.invariance_ratio),
            invariant=self.invariant,
            flagged=self.flagged,
            family=self.family,
            adjusted_p=_finite_or_none(self.adjusted_p),
            adjustment={"primary": "holm over the primary tests", "exploratory": "benjamini-hochberg q"}.get(
                self.family, "none"
            ),
            significant_in_family=self.significant,
            reliability=_finite_or_none(self.reliability),
            disattenuated_spearman=_finite_or_none(self.disattenuated),
        )
        return out


@dataclass(frozen=True)
class PairQuestion:
    """The paper's A-versus-B question asked of one measure over every pair of the population's runs.

    Attributes:
        measure: The measure key (larger = sharper).
        agreement: How often the flatter of two runs has the lower test loss, with its cluster-bootstrap CI
            (``tracking.pairs.pair_agreement``).
        sign_error: Dziugaite et al. 2020's sign-error over environments (``tracking.pairs.sign_error``).
        sentence: What the population says about the paper's claim, in one sentence.
    """

    measure: str
    agreement: PairAgreement
    sign_error: SignError
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "agreement": self.agreement.to_dict(),
            "sign_error": {k: _finite_or_none(getattr(self.sign_error, k)) for k in ("mean", "worst", "quantile")}
            | {"n_environments": self.sign_error.n_environments},
            "sentence": self.sentence,
        }


@dataclass(frozen=True)
class PrimaryResult:
    """The verdict on one primary hypothesis of the plan: its raw test and its test given train loss, each
    Holm-adjusted over the plan's primary tests.

    Attributes:
        hypothesis: The declared hypothesis.
        entry: Its row of the report (rho, CI, reliability, ...).
        p_raw, p_partial: Two-sided p-values of the raw and the partial (given train loss) Spearman rho.
        adjusted_raw, adjusted_partial: Their Holm-adjusted p over the primary tests.
        verdict: ``supported``, ``not beyond train loss``, ``contradicted`` (significant in the
            opposite direction) or ``undecided``.
        n_to_decide: Runs a fixed design would need to detect the observed |rho| with 80% power at Holm's first step
            over the primary tests (None when the observed rho is 0 or undefined; 0 when already decided).
    """

    hypothesis: Hypothesis
    entry: CorrelationEntry
    p_raw: float
    p_partial: float
    adjusted_raw: float
    adjusted_partial: float
    verdict: str
    n_to_decide: int | None

    @property
    def rho(self) -> float:
        return self.entry.row.spearman

    @property
    def partial_rho(self) -> float:
        return self.entry.row.partial_spearman

    def to_dict(self) -> dict[str, Any]:
        return {
            "hypothesis": self.hypothesis.name,
            "claim": self.hypothesis.claim,
            "direction": self.hypothesis.direction,
            "rho": _finite_or_none(self.rho),
            "ci": [_finite_or_none(self.entry.row.ci_low), _finite_or_none(self.entry.row.ci_high)],
            "partial_rho_given_train_loss": _finite_or_none(self.partial_rho),
            "p_raw": _finite_or_none(self.p_raw),
            "p_partial": _finite_or_none(self.p_partial),
            "holm_raw": _finite_or_none(self.adjusted_raw),
            "holm_partial": _finite_or_none(self.adjusted_partial),
            "reliability": _finite_or_none(self.entry.reliability),
            "disattenuated_rho": _finite_or_none(self.entry.disattenuated),
            "verdict": self.verdict,
            "n_to_decide": self.n_to_decide,
        }


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
        flagged: Measure key -> runs whose estimate did not converge or was not bracketed (``keys.RELIABILITY``).
        exclude_flagged: Whether those runs were left out of their measure's rows.
        pairs: The paper's A-versus-B question per measure, against the test loss (``PairQuestion``).
        axes: The hyperparameters that vary in the population (``Population.varying_hyperparameters``).
        plan: The analysis plan the verdicts read (``tracking.plan``): which rows are primary.
        primary: The verdict on each primary hypothesis (``PrimaryResult``), in plan order.
        reliability: Per measure, its test-retest reliability from the sweep's audit (``tracking.reliability``).
        sequential: The design and looks of an ``--until-decided`` sweep (empty for a fixed population).
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
    flagged: dict[str, int] = field(default_factory=dict)
    exclude_flagged: bool = False
    pairs: tuple[PairQuestion, ...] = ()
    axes: tuple[str, ...] = ()
    plan: AnalysisPlan = field(default_factory=lambda: AnalysisPlan().post_hoc())
    primary: tuple[PrimaryResult, ...] = ()
    reliability: dict[str, Reliability] = field(default_factory=dict)
    sequential: dict[str, Any] = field(default_factory=dict)

    @property
    def n_runs(self) -> int:
        return int(self.population.get("n_runs", 0))

    @property
    def power_note(self) -> str:
        """What the population's n detects at Holm's first step over the plan's primary tests, and the n |rho| = 0.3
        and 0.5 need."""
        return power_note(self.n_runs, self.alpha, len(self.plan.tests))

    @property
    def exploratory(self) -> list[CorrelationEntry]:
        """The exploratory rows (every row that is not a primary hypothesis), by q-value."""
        rows = [e for e in self.entries if not e.primary and e.measure != keys.CONTROL]
        return sorted(rows, key=lambda e: e.adjusted_p if math.isfinite(e.adjusted_p) else 2.0)

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
            "flagged": dict(self.flagged),
            "exclude_flagged": self.exclude_flagged,
            "axes": list(self.axes),
            "lr_varies": self.lr_varies,
            "seed_varies": self.seed_varies,
            "power": {
                "n": n,
                "alpha": self.alpha,
                "power": 0.8,
                "min_detectable_rho": min_detectable_rho(n, self.alpha) if n >= MIN_RUNS else None,
                "family_size": len(self.plan.tests),
                "min_detectable_rho_holm": (
                    _finite_or_none(min_detectable_rho_holm(n, len(self.plan.tests), self.alpha))
                    if n >= MIN_RUNS
                    else None
                ),
                "note": self.power_note,
            },
            "plan": self.plan.to_json(),
            "primary": [p.to_dict() for p in self.primary],
            "reliability": {k: r.to_dict() for k, r in self.reliability.items()},
            "sequential": self.sequential,
            "rows": [e.to_dict() for e in self.entries],
            "pairs": [q.to_dict() for q in self.pairs],
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def power_note(n: int, alpha: float = 0.05, family_size: int = 1) -> str:
    """What n runs can detect at the correction the primary verdicts use (Holm's first step over ``family_size``
    primary tests, 80% power), and how many runs |rho| = 0.3 and 0.5 would need
    (``population_stats.min_detectable_rho_holm``)."""
    if n < MIN_RUNS:
        return f"n = {n}: too few runs for any test (need n >= {MIN_RUNS})"
    limit = min_detectable_rho_holm(n, family_size, alpha)
    level = (
        f"at Holm's first step over the {family_size} primary tests (alpha {alpha:g}/{family_size})"
        if family_size > 1
        else (f"at alpha {alpha:g}")
    )
    can = f"detects only |rho| >= {limit:.2f}" if math.isfinite(limit) else "cannot detect any |rho|"
    needed = ", ".join(f"|rho| = {rho:g} needs n = {n_needed(rho, family_size, alpha)}" for rho in (0.3, 0.5))
    return f"n = {n} {can} {level} with 80% power; {needed}"


def resolve_targets(targets: Sequence[str] | None) -> dict[str, str]:
    """Target name -> metric key for names of ``keys.TARGETS`` or their metric keys (None: all four).

    Raises:
        UsageError: On an unknown target or an empty selection.
    """
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
            raise UsageError(f"unknown target {name!r}; expected one of {', '.join(keys.TARGETS)}")
    if not out:
        raise UsageError("Expected at least one target, got 0")
    return out


def _resolve_measures(measures: Sequence[str] | None, available: list[str]) -> list[str]:
    """Measure keys; a name may be a full key or an unambiguous last component (``lambda_max``)."""
    if measures is None:
        if not available:
            raise UsageError("the population has no measure metrics (not even final/train_loss)")
        return available
    out: list[str] = []
    for name in measures:
        if name in available:
            key = name
        else:
            matches = [k for k in available if k.rsplit("/", 1)[-1] == name or k.endswith("/" + name)]
            if len(matches) != 1:
                why = "ambiguous" if matches else "unknown"
                raise UsageError(f"{why} measure {name!r}; the population has: {', '.join(available) or 'none'}")
            key = matches[0]
        if key not in out:
            out.append(key)
    if not out:
        raise UsageError("Expected at least one measure, got 0")
    return out


def _weighted_mean(within: Mapping[Any, tuple[float, int]]) -> float:
    pairs = [(r, n) for r, n in within.values() if math.isfinite(r) and n > 0]
    if not pairs:
        return _NAN
    return float(sum(r * n for r, n in pairs) / sum(n for _, n in pairs))


def _within(x: np.ndarray, y: np.ndarray, labels: np.ndarray, name: Any) -> dict[str, tuple[float, int]]:
    """``within_group_spearman`` with string labels, and rho NaN in groups of fewer than ``MIN_RUNS`` runs.

    A rho from three runs can only be +-1 or +-0.5: noise that would raise the Simpson flag on unrelated columns
    half the time. Groups below the table's own minimum n therefore count neither in the mean nor in the flag.
    """
    out = {}
    for label, (rho, n) in within_group_spearman(x, y, labels).items():
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
    invariance: Mapping[str, float] | None = None,
    exclude_flagged: bool = False,
    plan: AnalysisPlan | None = None,
    reliability: Mapping[str, Reliability] | None = None,
    sequential: Mapping[str, Any] | None = None,
) -> CorrelationReport:
    """Test every measure against every generalization target over the population, with its confounds.

    One ``population_stats.correlation_table`` call over all pairs (so Holm's family is the whole report), with the
    final train loss as covariate, ``axes={"seed", "lr"}`` for the granulated Kendall and, when lr varies, the lr as
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
            (``population_stats.permutations_for``; the number used is in the report).
        alpha: Significance level.
        seed: Seed of the resampling.
        invariance: Per measure key, its ratio in the sweep's invariance audit (``tracking.invariance``); a
            measure that is not invariant says so in its verdict. None or a missing key: not audited.
        exclude_flagged: Leave out of a measure's rows the runs whose estimate of it did not converge or was not
            bracketed (``keys.RELIABILITY``); they are counted either way.
        plan: The analysis plan (``tracking.plan``): its primary hypotheses are tested with Holm over the primary
            tests only, every other row is exploratory (Benjamini-Hochberg q). None: the default plan, post hoc.
        reliability: Per measure, its test-retest reliability (``tracking.reliability.reliabilities``).
        sequential: The looks of an ``--until-decided`` sweep (``sweeps.looks``' ``data/sequential.json``): the
            primary verdicts are then the group-sequential decisions, not fixed-design tests on the population.

    Returns:
        The report; with fewer than ``MIN_RUNS`` runs, an empty one with status ``"too_few_runs"``.

    Raises:
        UsageError: On an empty population, an unknown target or measure (a ``ValueError``).
        ValueError: On bad ``n_boot``/``n_perm``/``alpha`` (``population_stats``' own checks).
    """
    target_map = resolve_targets(targets)
    n = len(population.runs)
    if n == 0:
        raise UsageError(f"the population ({population.source or 'selection'}) has no finished trial runs")
    measure_keys = _resolve_measures(measures, population.measure_keys())
    lrs, seeds = population.lrs, population.seeds
    lr_varies = len({_lr_label(v) for v in lrs[np.isfinite(lrs)]}) > 1
    seed_varies = len(set(seeds.tolist())) > 1
    flags = {k: _flagged(population, k) for k in measure_keys}
    plan = plan if plan is not None else AnalysisPlan().post_hoc()
    reliability = dict(reliability or {})
    empty = CorrelationReport(
        plan=plan,
        reliability=reliability,
        entries=(),
        axes=tuple(population.varying_hyperparameters()),
        flagged={k: int(v.sum()) for k, v in flags.items()},
        exclude_flagged=exclude_flagged,
        measures=tuple(measure_keys),
        targets=target_map,
        population=population.counts(),
        missing={k: population.missing(k) for k in measure_keys},
        lr_varies=lr_varies,
        seed_varies=seed_varies,
        alpha=alpha,
        n_boot=n_boot,
        n_perm=permutations_for(len(measure_keys) * len(target_map), alpha) if n_perm is None else n_perm,
        seed=seed,
    )
    if n < MIN_RUNS:
        message = (
            f"only {n} finished run{'s' if n != 1 else ''} in {population.source or 'the selection'}: "
            f"a correlation needs at least {MIN_RUNS}; no statistics computed"
        )
        return dataclasses.replace(empty, status="too_few_runs", message=message)

    # granulated Kendall over every hyperparameter that varies (seed: repetitions inside a cell, not an axis)
    hyper_axes = {
        name: population.hyperparameter(name) for name in population.varying_hyperparameters() if name != "lr"
    }
    train_loss = population.column(keys.CONTROL)
    covariate = train_loss if np.isfinite(train_loss).any() else None
    measure_cols = {k: population.column(k) for k in measure_keys}
    if exclude_flagged:
        measure_cols = {k: np.where(flags[k], np.nan, v) for k, v in measure_cols.items()}
    target_cols = {name: population.column(key) for name, key in target_map.items()}
    rows = correlation_table(
        measure_cols,
        target_cols,
        covariate=covariate,
        axes={"seed": seeds, "lr": np.array([_lr_label(v) for v in lrs]), **hyper_axes},
        groups=np.array([_lr_label(v) for v in lrs]) if lr_varies else None,
        n_boot=n_boot,
        n_perm=empty.n_perm,
        alpha=alpha,
        seed=seed,
    )

    log_lr = np.log(np.where(lrs > 0, lrs, np.nan))
    adjusted = _family_adjusted(rows, plan)
    entries = []
    for row in rows:
        x, y = measure_cols[row.measure], target_cols[row.target]
        is_control = row.measure == keys.CONTROL
        if is_control:
            row = dataclasses.replace(row, partial_spearman=_NAN, partial_p=_NAN)
        partial_lr = (_NAN, _NAN)
        if lr_varies and covariate is not None and not is_control:
            partial_lr = partial_spearman(x, y, {"train_loss": train_loss, "log_lr": log_lr})
        within_lr = _within(x, y, lrs, _lr_label) if lr_varies else {}
        within_seed = _within(x, y, seeds, str) if seed_varies else {}
        simpson_axes = tuple(
            axis
            for axis, within in (("lr", within_lr), ("seed", within_seed))
            if within and simpson_flag(row.spearman, within)
        )
        within_lr_mean, within_seed_mean = _weighted_mean(within_lr), _weighted_mean(within_seed)
        ratio = float((invariance or {}).get(row.measure, _NAN))
        primary = plan.is_primary(row.measure, row.target)
        retest = reliability.get(row.measure)
        r = retest.spearman if retest is not None else _NAN
        entry = CorrelationEntry(
            row=row,
            partial_lr_spearman=float(partial_lr[0]),
            partial_lr_p=float(partial_lr[1]),
            within_lr=within_lr,
            within_seed=within_seed,
            within_lr_mean=within_lr_mean,
            within_seed_mean=within_seed_mean,
            simpson=bool(simpson_axes),
            simpson_axes=simpson_axes,
            missing=empty.missing[row.measure],
            min_detectable_rho=(min_detectable_rho_holm(row.n, len(plan.tests), alpha) if row.n >= MIN_RUNS else _NAN),
            verdict="",
            invariance_ratio=ratio,
            flagged=empty.flagged[row.measure],
            primary=primary,
            adjusted_p=adjusted.get((row.measure, row.target), _NAN),
            reliability=r,
            disattenuated=disattenuate(row.spearman, r),
            alpha=alpha,
        )
        partial_adjusted = adjusted.get((row.measure, row.target, "train_loss"))
        text = _verdict(entry, partial_lr, alpha, len(plan.tests), partial_adjusted)
        notes = _invariance_note(ratio) + _reliability_note(entry) + _flag_note(entry.flagged, exclude_flagged)
        entries.append(dataclasses.replace(entry, verdict=text + notes))
    by_pair = {(e.measure, e.target): e for e in entries}
    primary_results = tuple(_primary_result(h, by_pair, adjusted, plan, alpha) for h in plan.hypotheses)
    if plan.sequential is not None:  # the verdicts of record are the looks' (none yet: undecided, an interim report)
        primary_results = tuple(_sequential_result(p, sequential or {}) for p in primary_results)
    pairs = ()
    if "test_loss" in target_cols:
        axes = {"seed": seeds, **({"lr": lrs} if lr_varies else {}), **hyper_axes}
        pairs = tuple(
            _pair_question(key, measure_cols[key], target_cols["test_loss"], axes, n_boot, alpha, seed)
            for key in measure_keys
            if key != keys.CONTROL and np.sum(np.isfinite(measure_cols[key])) >= 2
        )
    return dataclasses.replace(
        empty, entries=tuple(entries), pairs=pairs, primary=primary_results, sequential=dict(sequential or {})
    )


_SEQUENTIAL_VERDICTS = {
    ("reject", "reject"): "supported",
    ("reject", "futility"): "not beyond train loss",
    ("futility", "reject"): "only given train loss",
    ("futility", "futility"): "not supported",
}


def decided_tests(sequential: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each primary test of an ``--until-decided`` sweep at the look that decided it (its last look while it is
    open), with that look's ``n``: a decided test is carried into later looks, so the first decision is kept."""
    decisions: dict[str, dict[str, Any]] = {}
    for look in sequential.get("looks", []):
        for h in look["hypotheses"]:
            if decisions.get(h["name"], {}).get("decision", "continue") == "continue":
                decisions[h["name"]] = {**h, "n": look["n"]}
    return decisions


def _sequential_result(result: PrimaryResult, sequential: Mapping[str, Any]) -> PrimaryResult:
    """A primary verdict from the group-sequential decisions of its two tests (``decided_tests``)."""
    decisions = decided_tests(sequential)
    raw = decisions.get(result.hypothesis.name, {})
    partial = decisions.get(result.hypothesis.name + "|train_loss", {})
    pair = (raw.get("decision", "continue"), partial.get("decision", "continue"))
    verdict = _SEQUENTIAL_VERDICTS.get(pair, "undecided (going on)")
    decided_at = max(int(raw.get("n", 0)), int(partial.get("n", 0))) if "continue" not in pair else None
    return dataclasses.replace(result, verdict=verdict, n_to_decide=decided_at)


def _primary_p(row: CorrelationRow | None, test: PrimaryTest) -> float:
    """The two-sided p of one primary test (1 when it cannot be computed: the test stays in the family)."""
    if row is None:
        return 1.0
    p = row.verdict_p if test.adjustment == "raw" else row.partial_p
    return float(p) if math.isfinite(p) else 1.0


def _family_adjusted(rows: Sequence[CorrelationRow], plan: AnalysisPlan) -> dict[tuple[str, ...], float]:
    """Per (measure, target): the Holm-adjusted p of its raw test over the plan's primary tests (primary rows; and
    per (measure, target, "train_loss") that of its partial test), or its Benjamini-Hochberg q-value over the
    exploratory rows (every other row but the train-loss control)."""
    by_pair = {(r.measure, r.target): r for r in rows}
    tests = plan.tests
    holm_p = holm([_primary_p(by_pair.get((t.hypothesis.measure, t.hypothesis.target)), t) for t in tests])
    out: dict[tuple[str, ...], float] = {
        (t.hypothesis.measure, t.hypothesis.target, *(() if t.adjustment == "raw" else (t.adjustment,))): float(p)
        for t, p in zip(tests, holm_p, strict=True)
    }
    # the train-loss control is a confound, not a hypothesis: its near-certain rows would loosen every BH cut-off
    exploratory = [r for r in rows if not plan.is_primary(r.measure, r.target) and r.measure != keys.CONTROL]
    q = benjamini_hochberg([r.verdict_p for r in exploratory]) if exploratory else []
    out.update({(r.measure, r.target): float(v) for r, v in zip(exploratory, q, strict=True)})
    return out


def _primary_result(
    hypothesis: Hypothesis,
    entries: Mapping[tuple[str, str], CorrelationEntry],
    adjusted: Mapping[tuple[str, ...], float],
    plan: AnalysisPlan,
    alpha: float,
) -> PrimaryResult:
    """The verdict on one primary hypothesis: its raw and its given-train-loss test, read at their Holm-adjusted p
    over the primary tests (``adjusted``, from ``_family_adjusted``)."""
    pair = (hypothesis.measure, hypothesis.target)
    entry = entries.get(pair)
    if entry is None:
        return PrimaryResult(hypothesis, _missing_entry(hypothesis), _NAN, _NAN, _NAN, _NAN, "not measured", None)
    row = entry.row
    mine = {"raw": adjusted[pair], "train_loss": adjusted[(*pair, "train_loss")]}
    signed = hypothesis.direction * row.spearman
    signed_partial = hypothesis.direction * row.partial_spearman
    raw_sig = mine["raw"] < alpha and math.isfinite(signed) and signed != 0
    partial_sig = mine["train_loss"] < alpha and math.isfinite(signed_partial) and signed_partial != 0
    if raw_sig and signed < 0:
        verdict = "contradicted"
    elif partial_sig and signed_partial < 0:
        verdict = "contradicted given train loss"
    elif raw_sig and partial_sig:
        verdict = "supported"
    elif raw_sig:
        verdict = "not beyond train loss"
    elif partial_sig:
        verdict = "only given train loss"
    else:
        verdict = "undecided"
    rho = row.spearman
    if verdict != "undecided":
        needed: int | None = 0
    elif math.isfinite(rho) and 0 < abs(rho) < 1:
        needed = n_needed(abs(rho), len(plan.tests), alpha)
    else:
        needed = None
    return PrimaryResult(
        hypothesis, entry, row.verdict_p, row.partial_p, mine["raw"], mine["train_loss"], verdict, needed
    )


def _missing_entry(hypothesis: Hypothesis) -> CorrelationEntry:
    """A placeholder row for a primary hypothesis whose measure the population lacks."""
    nan_row = CorrelationRow(
        hypothesis.measure,
        hypothesis.target,
        0,
        0,
        *([_NAN] * 8),
        "undefined",
        _NAN,
        _NAN,
        _NAN,
        _NAN,
        None,
        None,
        _NAN,
        False,
    )
    return CorrelationEntry(nan_row, _NAN, _NAN, {}, {}, _NAN, _NAN, False, (), 0, _NAN, "not measured", primary=True)


def _pair_question(
    measure: str, x: np.ndarray, y: np.ndarray, axes: dict[str, np.ndarray], n_boot: int, alpha: float, seed: int
) -> PairQuestion:
    agreement = pair_agreement(x, y, n_boot=n_boot, alpha=alpha, seed=seed)
    errors = sign_error(x, y, axes)
    return PairQuestion(measure, agreement, errors, claim_sentence(agreement, measure=measure))


def _flagged(population: Population, measure: str) -> np.ndarray:
    """Shape (n,) bool: runs whose estimate of ``measure`` did not converge or was not bracketed (its flag is 0)."""
    flag = keys.RELIABILITY.get(measure)
    if flag is None:
        return np.zeros(len(population.runs), dtype=bool)
    return population.column(flag) == 0


def _flag_note(flagged: int, excluded: bool) -> str:
    if not flagged:
        return ""
    if excluded:
        return f"; {flagged} unconverged/unbracketed estimate{'s' if flagged != 1 else ''} excluded"
    return f"; {flagged} run{'s' if flagged != 1 else ''} with an unconverged/unbracketed estimate (flagged, included)"


def _invariance_note(ratio: float) -> str:
    """What the verdict adds for a measure that a function-preserving rescaling changes (nothing otherwise)."""
    from landscape_core.invariance import INVARIANT_RATIO

    if math.isnan(ratio) or ratio <= INVARIANT_RATIO:
        return ""
    change = "flips sign" if math.isinf(ratio) else f"changes x{ratio:.3g}"
    return (
        f"; NOT rescaling-invariant (it {change} under function-preserving rescalings of one minimum): "
        "its ranking can reflect the parametrization, not the minimum"
    )


def _reliability_note(entry: CorrelationEntry) -> str:
    if not (math.isfinite(entry.reliability) and entry.reliability < LOW_RELIABILITY):
        return ""
    return (
        f"; LOW RELIABILITY (test-retest rho {entry.reliability:.2f} < {LOW_RELIABILITY:g}): its rho is attenuated"
        + (f", disattenuated {entry.disattenuated:+.2f}" if math.isfinite(entry.disattenuated) else "")
    )


def _verdict(
    entry: CorrelationEntry,
    partial_lr: tuple[float, float],
    alpha: float,
    primary_tests: int,
    partial_adjusted: float | None = None,
) -> str:
    """One line: the row's family, what it shows at its family's correction, and what the confounds change. A
    primary row reads its partial test at its Holm-adjusted p (``partial_adjusted``), as its verdict does."""
    row = entry.row
    if entry.family == "control" and row.n >= MIN_N and math.isfinite(row.spearman):
        return f"control (the train loss: a confound, in no family): rho={row.spearman:+.2f}, p={row.verdict_p:.2g}"
    if row.n < MIN_N or not math.isfinite(row.spearman) or not math.isfinite(entry.adjusted_p):
        why = f"n={row.n}" + (f" after dropping {row.n_dropped} runs with missing values" if row.n_dropped else "")
        if row.n < MIN_N:
            return f"{entry.family}: not enough data ({why}; need n >= {MIN_N})"
        return f"{entry.family}: undefined ({why}; a column is constant)"
    label = "Holm p" if entry.primary else "q"
    stats_txt = f"rho={row.spearman:+.2f}, {label}={entry.adjusted_p:.2g}"
    has_partial = math.isfinite(row.partial_spearman) and math.isfinite(row.partial_p)
    partial_p = row.partial_p if partial_adjusted is None else partial_adjusted
    partial_txt = f"partial rho={row.partial_spearman:+.2f}, {'p' if partial_adjusted is None else 'Holm p'}="
    partial_txt += f"{partial_p:.2g}"
    if entry.significant and row.spearman != 0:
        direction = "positive" if row.spearman > 0 else "negative"
        more_less = "larger" if row.spearman > 0 else "smaller"
        text = f"{entry.family}: significant {direction} ({stats_txt}): larger {row.measure} goes with {more_less} "
        text += row.target
        if has_partial:
            how = "but not beyond" if partial_p >= alpha else "holds given"
            text += f"; {how} train loss ({partial_txt})"
        rho_lr, p_lr = partial_lr
        if math.isfinite(rho_lr) and math.isfinite(p_lr):
            how = "holds" if p_lr < alpha else "vanishes"
            text += f"; {how} given train loss + log lr (partial rho={rho_lr:+.2f}, p={p_lr:.2g})"
    else:
        text = f"{entry.family}: no evidence ({stats_txt}"
        if entry.primary and math.isfinite(entry.min_detectable_rho):
            text += f"; n={row.n} detects only |rho| >= {entry.min_detectable_rho:.2f} over {primary_tests} tests"
        text += ")"
        if has_partial:
            text += f"; given train loss: {partial_txt}"
    for axis in entry.simpson_axes:
        mean = entry.within_lr_mean if axis == "lr" else entry.within_seed_mean
        text += f"; SIMPSON: within each {axis} the sign flips (mean rho={mean:+.2f})"
    return text
