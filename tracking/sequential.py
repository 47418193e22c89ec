"""Group-sequential tests of rank-correlation hypotheses: look at the population as it grows, stop when it is clear.

A primary hypothesis says "measure X predicts the test loss, in a declared direction" (rho > 0 after signing). A
fixed design trains n runs and tests once. A group-sequential design, as in clinical trials, plans looks at
population sizes n_1 < n_2 < ... < n_K (the cap) and tests at each look, stopping early when the evidence is already
overwhelming (efficacy) or hopeless (futility). Testing repeatedly at the nominal level would inflate the type-I error;
the design keeps it at the planned level by spending it over the looks.

* The statistic. At look k a hypothesis has a Spearman rho (or a partial Spearman given q covariates) on the first
  n_k runs. Its Fisher z, ``Z_k = atanh(rho) sqrt(I_k)`` with information ``I_k = (n_k - 3 - q) / 1.06`` (the
  Fieller-Hartley-Pearson variance of Spearman's z), is signed so that the declared direction is positive. In the
  canonical joint distribution ``Z_k ~ N(theta sqrt(I_k), 1)``, ``Cov(Z_j, Z_k) = sqrt(I_j / I_k)``, with drift
  ``theta = atanh(rho)`` (Jennison & Turnbull 2000, ch. 3).
* Efficacy. Each test is one-sided at ``alpha / 2`` (at one look: the usual two-sided test at alpha, in the
  declared direction). The level is spent over the information fraction ``t = I_k / I_K`` by the Lan-DeMets (1983)
  spending function of O'Brien-Fleming (1979) type, ``alpha(t) = 2 - 2 Phi(Phi^-1(1 - a/2) / sqrt(t))``: almost
  nothing at the first looks, nearly the whole level at the last, so the last look is hardly less powerful than
  the fixed design. The bound ``c_k`` makes the probability under rho = 0 of first crossing at look k equal the
  level spent there.
* Futility. A bound ``b_k`` from the same spending function applied to the type-II error ``1 - power`` at a planned
  effect ``planned_rho``: the probability under the planned effect of falling below ``b_k`` (without having stopped
  before) equals the beta spent at look k. It is non-binding: the efficacy bounds ignore it, so ignoring a futility
  stop never inflates the type-I error. At the last look ``b_K = c_K``: every hypothesis is decided.
* Both bounds come from the recursive numerical integration of Armitage, McPherson & Rowe (1969) on a grid
  (Simpson's rule), exact for the normal approximation up to the grid.
* A family. The primary hypotheses share the family-wise level by Holm's procedure done the group-sequential way
  (Maurer & Bretz 2013, the graphical approach with equal weights): each starts at level ``alpha / 2 / m``; when
  one is rejected its level goes in equal shares to those not rejected (a futility-stopped one keeps its share
  unused), and those still open are re-tested at the same look with the bounds of their new level. So every
  non-rejected hypothesis holds ``alpha / 2 / (m - r)`` after r rejections.
* Repeated confidence intervals (Jennison & Turnbull 2000, ch. 9): ``tanh(atanh(rho) -/+ c_k / sqrt(I_k))`` covers
  the true rho at every look simultaneously with probability ``1 - 2 level``; it excludes 0 exactly when
  ``Z_k >= c_k``.

:func:`monitor` replays a sweep's looks from the start and says what to decide; :func:`simulate` runs whole sweeps on
real Spearman data by Monte Carlo with the same decision rule; :func:`make_design` sizes the cap for a power.

References:
    K. K. G. Lan and D. L. DeMets (1983). Discrete sequential boundaries for clinical trials. Biometrika 70, 659-663.
    P. C. O'Brien and T. R. Fleming (1979). A multiple testing procedure for clinical trials. Biometrics 35, 549-556.
    C. Jennison and B. W. Turnbull (2000). Group Sequential Methods with Applications to Clinical Trials. Chapman &
    Hall/CRC.
    W. Maurer and F. Bretz (2013). Multiple testing in group sequential trials using graphical approaches.
    Statistics in Biopharmaceutical Research 5, 311-320.
    P. Armitage, C. K. McPherson and B. C. Rowe (1969). Repeated significance tests on accumulating data. JRSS A 132,
    235-244.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, special, stats

from landscape_core.common import check, json_safe
from landscape_core.errors import UsageError

__all__ = [
    "FHP",
    "Boundaries",
    "HypothesisLook",
    "Look",
    "SequentialDesign",
    "SimulationResult",
    "crossing_probabilities",
    "fisher_z",
    "fixed_n",
    "information",
    "make_design",
    "monitor",
    "repeated_ci",
    "simulate",
    "spending",
]

#: Fieller-Hartley-Pearson: ``Var(atanh(Spearman rho)) ~ 1.06 / (n - 3)``.
FHP = 1.06
_TAIL = 9.0  # the integration grid spans the mean of Z_k +/- this many standard deviations
_STEP = 0.02  # the grid's widest spacing on the z scale
_MIN_GRID, _MAX_GRID = 101, 3001
_RHO_MAX = 1.0 - 1e-12  # |rho| = 1 is clipped so that z stays finite


def _error(name: str, expectation: str, value: Any) -> ValueError:
    return ValueError(f"Expected `{name}` {expectation}, got {value!r}")


def _check_unit(name: str, value: float, error: type[Exception] = ValueError) -> None:
    check(isinstance(value, (int, float)) and 0.0 < value < 1.0, name, "in (0, 1)", value, error)


def _check_level(level: float) -> None:
    check(isinstance(level, (int, float)) and 0.0 < level < 0.5, "level", "in (0, 0.5)", level)


def information(n: int, covariates: int = 0) -> float:
    """Fisher information of a (partial) Spearman's z on n runs given q covariates: ``(n - 3 - q) / 1.06``."""
    check(n - 3 - covariates >= 1, "n", f">= {4 + covariates} (covariates = {covariates})", n)
    return (n - 3 - covariates) / FHP


def spending(t: float | np.ndarray, total: float) -> np.ndarray:
    """The Lan-DeMets O'Brien-Fleming-type spending function (gsDesign's ``sfLDOF``) at information fraction t:
    ``2 - 2 Phi(Phi^-1(1 - total/2) / sqrt(t))``; 0 at t = 0 and ``total`` at t = 1."""
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return 2.0 * stats.norm.sf(stats.norm.isf(total / 2.0) / np.sqrt(t))


def fisher_z(rho: float, n: int, covariates: int = 0) -> float:
    """``atanh(rho) sqrt((n - 3 - q) / 1.06)``: the standardized statistic of a (partial) Spearman rho on n runs."""
    check(math.isfinite(rho) and -1.0 <= rho <= 1.0, "rho", "in [-1, 1]", rho)
    check(covariates >= 0, "covariates", ">= 0", covariates)
    clipped = min(max(float(rho), -_RHO_MAX), _RHO_MAX)
    return math.atanh(clipped) * math.sqrt(information(n, covariates))


def repeated_ci(rho: float, n: int, efficacy_bound: float, covariates: int = 0) -> tuple[float, float]:
    """The repeated confidence interval ``tanh(atanh(rho) -/+ c / sqrt(I))`` at a look with efficacy bound c: level
    ``1 - 2 * level`` two-sided, simultaneously over the looks; ``(-1, 1)`` when c is infinite."""
    check(math.isfinite(rho) and -1.0 <= rho <= 1.0, "rho", "in [-1, 1]", rho)
    check(efficacy_bound >= 0.0, "efficacy_bound", ">= 0", efficacy_bound)
    if math.isinf(efficacy_bound):
        return -1.0, 1.0
    centre = math.atanh(min(max(float(rho), -_RHO_MAX), _RHO_MAX))
    half = efficacy_bound / math.sqrt(information(n, covariates))
    return math.tanh(centre - half), math.tanh(centre + half)


def fixed_n(rho: float, alpha_one: float, power: float, *, covariates: int = 0) -> int:
    """Runs a fixed (single-look) design needs: the smallest n with one-sided Fisher-z power (variance 1.06 / (n - 3
    - q)) at least ``power`` for a true rho at one-sided level ``alpha_one``."""
    check(math.isfinite(rho) and 0.0 < abs(rho) < 1.0, "rho", "with 0 < |rho| < 1", rho)
    _check_unit("alpha_one", alpha_one)
    _check_unit("power", power)
    z = stats.norm.isf(alpha_one) + stats.norm.ppf(power)
    return max(4 + covariates, math.ceil(3 + covariates + FHP * (z / math.atanh(abs(rho))) ** 2 - 1e-9))


# ---------------------------------------------------------------------------------------------------- the recursion


def _simpson(count: int, step: float) -> np.ndarray:
    weights = np.ones(count)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return weights * (step / 3.0)


class _Recursion:
    """The sub-density of Z_k on the continuation region, carried look by look (Armitage, McPherson & Rowe 1969).

    On the score scale ``S_k = Z_k sqrt(I_k)`` the increments are independent ``N(theta dI, dI)``; ``v`` holds the
    Simpson weight times the sub-density at the grid ``z`` of the previous look, so integrals are dot products.
    """

    def __init__(self, info: np.ndarray, theta: float) -> None:
        self.info, self.root, self.theta = info, np.sqrt(info), theta
        self.k = 0
        self.z = np.empty(0)
        self.v = np.empty(0)

    def _mean(self) -> float:
        return self.theta * self.root[self.k]

    def _shift(self) -> tuple[np.ndarray, float]:
        """``(S_{k-1} + theta dI, sqrt(dI))`` at the previous grid: the conditional mean and sd of S_k."""
        k = self.k
        d = self.info[k] - self.info[k - 1]
        return self.z * self.root[k - 1] + self.theta * d, math.sqrt(d)

    def upper(self, c: float) -> float:
        """P(not stopped before look k, Z_k >= c)."""
        if self.k == 0:
            return float(special.ndtr(self._mean() - c))
        mean, sd = self._shift()
        return float(self.v @ special.ndtr((mean - c * self.root[self.k]) / sd))

    def lower(self, b: float) -> float:
        """P(not stopped before look k, Z_k < b)."""
        if self.k == 0:
            return float(special.ndtr(b - self._mean()))
        mean, sd = self._shift()
        return float(self.v @ special.ndtr((b * self.root[self.k] - mean) / sd))

    def advance(self, lo: float, hi: float) -> None:
        """Condition on ``lo < Z_k < hi`` (continue) and move to look k + 1."""
        k, centre = self.k, self._mean()
        lo, hi = max(lo, centre - _TAIL), min(hi, centre + _TAIL)
        if hi <= lo or (k > 0 and self.v.size == 0):
            self.z, self.v, self.k = np.empty(0), np.empty(0), k + 1
            return
        step = _STEP
        if k + 1 < self.info.size:  # resolve the next increment's kernel: >= 8 points per standard deviation
            step = min(step, math.sqrt((self.info[k + 1] - self.info[k]) / self.info[k]) / 8.0)
        count = int(np.clip(2 * math.ceil((hi - lo) / step / 2.0) + 1, _MIN_GRID, _MAX_GRID))
        z = np.linspace(lo, hi, count)
        if k == 0:
            density = np.exp(-0.5 * (z - centre) ** 2) / math.sqrt(2.0 * math.pi)
        else:
            mean, sd = self._shift()
            u = (z[:, None] * self.root[k] - mean[None, :]) / sd
            density = (np.exp(-0.5 * u * u) @ self.v) * (self.root[k] / (sd * math.sqrt(2.0 * math.pi)))
        self.z, self.v, self.k = z, density * _simpson(count, (hi - lo) / (count - 1)), k + 1


def _solve_upper(rec: _Recursion, target: float) -> float:
    """The c with ``rec.upper(c) = target`` (+inf when nothing is to be spent)."""
    if target <= 0.0:
        return math.inf
    if rec.k == 0:
        return rec._mean() + float(stats.norm.isf(target))
    lo, hi = -20.0, 60.0
    if rec.upper(lo) <= target:
        return lo
    return float(optimize.brentq(lambda c: rec.upper(c) - target, lo, hi, xtol=1e-12, rtol=1e-14))


def _solve_lower(rec: _Recursion, target: float, cap: float) -> float:
    """The b with ``rec.lower(b) = target``, at most ``cap`` (-inf when nothing is to be spent)."""
    if target <= 0.0:
        return -math.inf
    if rec.lower(cap) <= target:
        return cap
    if rec.k == 0:
        return rec._mean() + float(stats.norm.ppf(target))
    lo = min(cap, rec._mean()) - 60.0
    return float(optimize.brentq(lambda b: rec.lower(b) - target, lo, cap, xtol=1e-12, rtol=1e-14))


@functools.lru_cache(maxsize=4096)
def _bounds(
    info: tuple[float, ...], info_max: float, theta: float, beta: float, level: float, final: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Efficacy bounds, futility bounds and cumulative alpha spent at the looks with informations ``info`` (the looks
    so far; ``final``: the last of them is the planned last look, where all is spent and ``b = c``).

    The bound at look k depends only on the looks up to k, so a prefix of the looks gives a prefix of the bounds.
    """
    values = np.asarray(info, dtype=float)
    count = values.size
    t = np.minimum(values / info_max, 1.0)
    if final:
        t[-1] = 1.0
    alpha_spent, beta_spent = spending(t, level), spending(t, beta)
    if final:
        alpha_spent[-1], beta_spent[-1] = level, beta
    efficacy, futility = np.empty(count), np.empty(count)
    null = _Recursion(values, 0.0)
    for k in range(count):
        efficacy[k] = _solve_upper(null, alpha_spent[k] - (alpha_spent[k - 1] if k else 0.0))
        if k + 1 < count:
            null.advance(-math.inf, efficacy[k])
    planned = _Recursion(values, theta)
    for k in range(count):
        if final and k == count - 1:
            futility[k] = efficacy[k]
            break
        futility[k] = _solve_lower(planned, beta_spent[k] - (beta_spent[k - 1] if k else 0.0), efficacy[k])
        if k + 1 < count:
            planned.advance(futility[k], efficacy[k])
    for array in (efficacy, futility, alpha_spent):
        array.setflags(write=False)
    return efficacy, futility, alpha_spent


# ------------------------------------------------------------------------------------------------------- the design


@dataclass(frozen=True, eq=False)
class Boundaries:
    """A hypothesis' bounds on the z scale at each planned look, for one-sided ``level``.

    Attributes:
        efficacy: ``c_k``: reject when ``Z_k >= c_k``.
        futility: ``b_k <= c_k``: stop for futility when ``Z_k < b_k`` (non-binding); ``b_K = c_K``.
        alpha_spent: Cumulative level spent by look k, ``alpha(t_k)``; ``level`` at the last look.
        level: The one-sided level of the hypothesis.
    """

    efficacy: np.ndarray
    futility: np.ndarray
    alpha_spent: np.ndarray
    level: float


@dataclass(frozen=True)
class SequentialDesign:
    """The plan: looks at population sizes ``looks``, O'Brien-Fleming-type spending of the two-sided family-wise
    ``alpha`` (one-sided ``alpha / 2`` in each declared direction), futility planned at ``planned_rho`` and
    ``power``, information from ``covariates`` (0: raw Spearman, 1: partial given train loss)."""

    looks: tuple[int, ...]
    alpha: float = 0.05
    planned_rho: float = 0.3
    power: float = 0.8
    covariates: int = 0

    def __post_init__(self) -> None:
        looks = tuple(self.looks)
        check(len(looks) >= 1, "looks", "at least one look", looks, UsageError)
        check(all(isinstance(n, (int, np.integer)) for n in looks), "looks", "integers", looks, UsageError)
        looks = tuple(int(n) for n in looks)
        check(all(b > a for a, b in zip(looks, looks[1:])), "looks", "strictly increasing", looks, UsageError)
        check(looks[0] >= 8, "looks", "a first look >= 8", looks, UsageError)
        object.__setattr__(self, "looks", looks)
        _check_unit("alpha", self.alpha, UsageError)
        _check_unit("planned_rho", self.planned_rho, UsageError)
        _check_unit("power", self.power, UsageError)
        check(
            isinstance(self.covariates, int) and 0 <= self.covariates <= looks[0] - 4,
            "covariates",
            f"in [0, {looks[0] - 4}] (the first look minus 4)",
            self.covariates,
            UsageError,
        )

    @property
    def alpha_one(self) -> float:
        """The one-sided family-wise level, ``alpha / 2``."""
        return self.alpha / 2.0

    def information(self) -> np.ndarray:
        """``I_k = (n_k - 3 - q) / 1.06`` at each look."""
        return np.array([information(n, self.covariates) for n in self.looks])

    def boundaries(self, level: float) -> Boundaries:
        """The bounds of one hypothesis tested one-sided at ``level``."""
        _check_level(level)
        info = tuple(float(i) for i in self.information())
        efficacy, futility, spent = _bounds(
            info, info[-1], math.atanh(self.planned_rho), 1.0 - self.power, float(level), True
        )
        return Boundaries(efficacy=efficacy, futility=futility, alpha_spent=spent, level=float(level))


def crossing_probabilities(design: SequentialDesign, level: float, rho: float) -> dict[str, Any]:
    """Operating characteristics of one hypothesis at one-sided ``level`` when the true (signed) rho is ``rho``, by
    the numerical integration (exact for the normal approximation): the probability of stopping for efficacy and for
    futility at each look (futility obeyed), ``power`` (their efficacy total) and ``expected_n``."""
    check(math.isfinite(rho) and -1.0 < rho < 1.0, "rho", "in (-1, 1)", rho)
    bounds = design.boundaries(level)
    rec = _Recursion(design.information(), math.atanh(rho))
    count = len(design.looks)
    efficacy, futility = np.zeros(count), np.zeros(count)
    for k in range(count):
        efficacy[k] = rec.upper(bounds.efficacy[k])
        futility[k] = rec.lower(bounds.futility[k])
        if k + 1 < count:
            rec.advance(bounds.futility[k], bounds.efficacy[k])
    stop = efficacy + futility
    return {
        "efficacy": efficacy,
        "futility": futility,
        "power": float(efficacy.sum()),
        "expected_n": float(np.dot(stop, design.looks) / stop.sum()),
    }


def make_design(
    first: int = 20,
    step: int = 10,
    max_n: int | None = None,
    *,
    alpha: float = 0.05,
    planned_rho: float = 0.3,
    power: float = 0.8,
    family_size: int = 1,
    covariates: int = 0,
) -> SequentialDesign:
    """Looks at ``first, first + step, ...`` up to ``max_n`` (always the last look). Without ``max_n``: the smallest
    cap on the step grid whose design reaches ``power`` at ``planned_rho`` at the Bonferroni level
    ``alpha / 2 / family_size`` (by :func:`crossing_probabilities`; the search starts at the fixed design's n, which
    no group-sequential design beats)."""
    check(isinstance(first, int) and first >= 8, "first", ">= 8", first, UsageError)
    check(isinstance(step, int) and step >= 1, "step", ">= 1", step, UsageError)
    check(isinstance(family_size, int) and family_size >= 1, "family_size", ">= 1", family_size, UsageError)

    def build(cap: int) -> SequentialDesign:
        looks = list(range(first, cap + 1, step))
        if looks[-1] != cap:
            looks.append(cap)
        return SequentialDesign(tuple(looks), alpha, planned_rho, power, covariates)

    if max_n is not None:
        check(isinstance(max_n, int) and max_n >= first, "max_n", f">= first ({first})", max_n, UsageError)
        return build(max_n)
    probe = SequentialDesign((first,), alpha, planned_rho, power, covariates)  # validates the arguments
    level = probe.alpha_one / family_size
    start = fixed_n(planned_rho, level, power, covariates=covariates)
    j = max(0, math.ceil((start - first) / step))
    while True:
        design = build(first + j * step)
        if crossing_probabilities(design, level, planned_rho)["power"] >= power:
            return design
        j += 1


# ---------------------------------------------------------------------------------------------------- the decisions


def _levels(alpha_one: float, m: int) -> list[float]:
    """The level of each non-rejected hypothesis after r = 0..m-1 rejections (graphical Holm, equal weights)."""
    return [alpha_one / (m - r) for r in range(m)]


def _decide_look(
    z: np.ndarray,
    rejected: np.ndarray,
    futile: np.ndarray,
    efficacy: np.ndarray,
    futility: np.ndarray,
    final: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One look's decisions for S sequences of a family of m hypotheses (the rule :func:`monitor` and
    :func:`simulate` share).

    Args:
        z: (S, m) z statistics at this look, signed in the declared directions.
        rejected, futile: (S, m) decisions so far (not modified).
        efficacy, futility: (m, m + 1) bounds at this look of hypothesis h after r rejections (level
            ``alpha_one / (m - r)``); column m is never read for an open hypothesis.
        final: The planned last look: what is still open becomes futility ("not supported").

    Returns:
        ``(rejected, futile, r)``, r the number of rejections whose level each hypothesis was last tested at.
    """
    rejected, futile = rejected.copy(), futile.copy()
    hyp = np.arange(z.shape[1])[None, :]
    used = np.broadcast_to(rejected.sum(axis=1)[:, None], z.shape).copy()
    while True:  # reject, recycle, re-test at the new level until nothing more is rejected
        r = rejected.sum(axis=1)[:, None]
        new = ~rejected & ~futile & (z >= efficacy[hyp, r])
        if not new.any():
            break
        rejected |= new
        used = np.where(rejected, used, rejected.sum(axis=1)[:, None])
    r = rejected.sum(axis=1)[:, None]
    used = np.where(rejected, used, r)
    open_ = ~rejected & ~futile
    futile |= open_ & ((z < futility[hyp, r]) | final)
    return rejected, futile, used


@dataclass(frozen=True)
class HypothesisLook:
    """One hypothesis at one look. ``decision``: "reject" (an effect in the declared direction), "futility" (stopped,
    or not supported at the cap) or "continue". A decided hypothesis keeps the entry of the look that decided it.
    ``rci``: the repeated confidence interval of the signed rho at level ``1 - 2 * level``."""

    name: str
    rho: float
    z: float
    efficacy: float
    futility: float
    level: float
    decision: str
    rci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (infinite bounds become None)."""
        return json_safe(dataclasses.asdict(self))


@dataclass(frozen=True)
class Look:
    """One look of a sweep: ``index`` counts from 0 (the ``statistics`` entry), ``n`` is the planned population size,
    ``stop`` whether the sweep stops here and ``reason`` why, in plain words."""

    index: int
    n: int
    hypotheses: tuple[HypothesisLook, ...]
    stop: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (infinite bounds become None)."""
        return json_safe(dataclasses.asdict(self))


def _observation(value: Any, name: str, k: int) -> tuple[float, int, int]:
    try:
        rho, n, q = value
    except (TypeError, ValueError):
        raise ValueError(f"Expected statistics[{k}][{name!r}] a (rho, n, covariates) triple, got {value!r}") from None
    rho = float(rho)
    if not (math.isfinite(rho) and -1.0 <= rho <= 1.0):
        raise _error(f"statistics[{k}][{name!r}] rho", "in [-1, 1]", rho)
    if int(q) != q or q < 0 or int(n) != n or n - 3 - q < 1:
        raise _error(f"statistics[{k}][{name!r}] (n, covariates)", "integers with n - 3 - covariates >= 1", (n, q))
    return rho, int(n), int(q)


def monitor(
    design: SequentialDesign, statistics: Sequence[Mapping[str, tuple[float, int, int]]], names: Sequence[str]
) -> list[Look]:
    """Replay the looks so far and decide each primary hypothesis.

    ``statistics[k][name] = (rho, n, covariates)`` at look k: rho signed in the declared direction, on n runs.
    Bounds come from the hypothesis' observed information (error spending at ``I_k / I_K``, ``I_K`` from the planned
    cap), which is the design's :meth:`SequentialDesign.boundaries` when n is the planned look size. Every look is
    replayed from the start, so a resumed sweep or another worker recomputes the same decisions. A decided
    hypothesis stays decided (its later statistics are not read and may be absent); a rejection passes its level in
    equal shares to the hypotheses not rejected, and those still open are re-tested at the same look. The replay
    ends at the look where every hypothesis is decided or at the planned last look; later statistics are ignored.

    Returns:
        One :class:`Look` per look replayed.

    Raises:
        ValueError: On more looks than planned, a missing statistic of an open hypothesis, an n that does not grow
            or covariates that change.
    """
    names = tuple(names)
    m = len(names)
    if m == 0 or len(set(names)) != m:
        raise _error("names", "distinct and at least one", names)
    count = len(design.looks)
    if len(statistics) > count:
        raise _error("statistics", f"at most {count} looks (the design's)", len(statistics))
    levels = _levels(design.alpha_one, m)
    theta, beta = math.atanh(design.planned_rho), 1.0 - design.power
    planned = tuple(float(i) for i in design.information())
    rejected, futile = np.zeros((1, m), bool), np.zeros((1, m), bool)
    history: list[list[float]] = [[] for _ in names]
    covariates: list[int | None] = [None] * m
    entries: list[HypothesisLook | None] = [None] * m
    out: list[Look] = []
    for k, observed in enumerate(statistics):
        final = k == count - 1
        z = np.full((1, m), np.nan)
        efficacy, futility = np.full((m, m + 1), np.inf), np.full((m, m + 1), np.inf)
        values: dict[int, tuple[float, int, int]] = {}
        first_r = int(rejected.sum())
        for h, name in enumerate(names):
            if rejected[0, h] or futile[0, h]:
                continue
            if name not in observed:
                raise ValueError(f"statistics[{k}] has no entry for the open hypothesis {name!r}")
            rho, n, q = values[h] = _observation(observed[name], name, k)
            if covariates[h] is not None and covariates[h] != q:
                raise _error(f"statistics[{k}][{name!r}] covariates", f"{covariates[h]} as before", q)
            info_h = information(n, q)
            if history[h] and info_h <= history[h][-1]:
                raise _error(f"statistics[{k}][{name!r}] n", "larger than at the previous look", n)
            covariates[h] = q
            history[h].append(info_h)
            z[0, h] = fisher_z(rho, n, q)
            prefix = tuple(history[h])
            for r in range(first_r, m):
                if q == design.covariates and prefix == planned[: k + 1]:
                    c, b, _ = _bounds(planned, planned[-1], theta, beta, levels[r], True)
                else:
                    c, b, _ = _bounds(prefix, information(design.looks[-1], q), theta, beta, levels[r], final)
                efficacy[h, r], futility[h, r] = c[k], b[k]
        new_rejected, new_futile, used = _decide_look(z, rejected, futile, efficacy, futility, final)
        for h, (rho, n, q) in values.items():
            r = int(used[0, h])
            decision = "reject" if new_rejected[0, h] else "futility" if new_futile[0, h] else "continue"
            entries[h] = HypothesisLook(
                name=names[h],
                rho=rho,
                z=float(z[0, h]),
                efficacy=float(efficacy[h, r]),
                futility=float(futility[h, r]),
                level=levels[r],
                decision=decision,
                rci=repeated_ci(rho, n, float(efficacy[h, r]), q),
            )
        rejected, futile = new_rejected, new_futile
        decided = int((rejected | futile).sum())
        where = f"look {k + 1} (n = {design.looks[k]})"
        if final:
            stop, reason = True, f"cap reached at {where}: the hypotheses still open are not supported"
        elif decided == m:
            stop, reason = True, f"every primary hypothesis decided at {where}"
        else:
            stop, reason = False, f"{m - decided} of {m} primary hypotheses still open at {where}"
        out.append(Look(k, design.looks[k], tuple(e for e in entries if e is not None), stop, reason))
        if stop:
            break
    return out


# ------------------------------------------------------------------------------------------------- the Monte Carlo


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """Whole sweeps by Monte Carlo. Rates are fractions of ``sequences``; ``*_se`` their Monte Carlo standard errors.

    Attributes:
        rho_true: The population Spearman rho of each hypothesis.
        sequences: Number of simulated sweeps.
        rejection_rate: (m,) fraction rejected, per hypothesis.
        futility_rate: (m,) fraction stopped for futility before the last look, per hypothesis.
        fwer: Fraction of sweeps with a rejection among the hypotheses with rho_true == 0 (NaN if none).
        early_stop_rate: Fraction of sweeps that stopped before the cap.
        mean_n: Mean population size at the stop.
        stop_looks: (K,) number of sweeps that stopped at each look.
        looks: The design's looks.
    """

    rho_true: tuple[float, ...]
    sequences: int
    rejection_rate: np.ndarray
    rejection_se: np.ndarray
    futility_rate: np.ndarray
    futility_se: np.ndarray
    fwer: float
    fwer_se: float
    early_stop_rate: float
    early_stop_se: float
    mean_n: float
    mean_n_se: float
    stop_looks: np.ndarray
    looks: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        return json_safe(dataclasses.asdict(self))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 along the last axis (continuous data: no ties)."""
    order = np.argsort(values, axis=-1)
    ranks = np.empty(values.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(values.shape[-1], dtype=float), values.shape), -1)
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Spearman rho along the last axis; given covariates w (..., q, n) the partial Spearman (from the inverse of
    the rank correlation matrix)."""
    n = x.shape[-1]
    rx, ry = _ranks(x), _ranks(y)
    if w is None:
        return 1.0 - 6.0 * np.sum((rx - ry) ** 2, axis=-1) / (n * (n * n - 1.0))
    ranks = np.concatenate([rx[..., None, :], ry[..., None, :], _ranks(w)], axis=-2)
    ranks -= (n - 1) / 2.0
    gram = ranks @ np.swapaxes(ranks, -1, -2)
    precision = np.linalg.inv(gram)
    return -precision[..., 0, 1] / np.sqrt(precision[..., 0, 0] * precision[..., 1, 1])


def simulate(
    design: SequentialDesign,
    rho_true: float | Sequence[float],
    family_size: int = 1,
    *,
    sequences: int = 2000,
    seed: int = 0,
) -> SimulationResult:
    """Monte Carlo of whole sweeps with :func:`monitor`'s rule (the shared ``_decide_look`` on the design's bounds).

    Each sweep draws, for each of ``family_size`` independent hypotheses, ``max(looks)`` bivariate normal pairs with
    Pearson ``r = 2 sin(pi rho / 6)`` (population Spearman ``rho_true``; with ``design.covariates = q``, q independent
    normal covariates and the partial Spearman), computes the Spearman rho on the first n_k runs at each look and
    decides. ``rho_true``: one per hypothesis or one for all. Randomness: ``numpy.random.default_rng(seed)``.
    """
    values = np.atleast_1d(np.asarray(rho_true, dtype=float))
    if values.ndim != 1 or not np.all(np.abs(values) < 1.0):
        raise _error("rho_true", "in (-1, 1)", rho_true)
    check(isinstance(family_size, int) and family_size >= 1, "family_size", ">= 1", family_size)
    if values.size == 1:
        values = np.repeat(values, family_size)
    elif family_size not in (1, values.size):
        raise _error("family_size", f"1 or len(rho_true) = {values.size}", family_size)
    check(isinstance(sequences, int) and sequences >= 2, "sequences", ">= 2", sequences)
    m, count, q = values.size, len(design.looks), design.covariates
    rng = np.random.default_rng(seed)
    size = (sequences, m, design.looks[-1])
    r = 2.0 * np.sin(np.pi * values / 6.0)[None, :, None]
    x = rng.standard_normal(size)
    y = r * x + np.sqrt(1.0 - r * r) * rng.standard_normal(size)
    w = rng.standard_normal((sequences, m, q, design.looks[-1])) if q else None
    levels = _levels(design.alpha_one, m)
    efficacy, futility = np.full((count, m, m + 1), np.inf), np.full((count, m, m + 1), np.inf)
    for j, level in enumerate(levels):
        bounds = design.boundaries(level)
        efficacy[:, :, j], futility[:, :, j] = bounds.efficacy[:, None], bounds.futility[:, None]
    rejected, futile = np.zeros((sequences, m), bool), np.zeros((sequences, m), bool)
    early = np.zeros((sequences, m), bool)
    stop_look = np.full(sequences, count - 1)
    for k, n in enumerate(design.looks):
        open_rows = ~np.all(rejected | futile, axis=1)
        rho = _spearman(x[open_rows, :, :n], y[open_rows, :, :n], None if w is None else w[open_rows, :, :, :n])
        z = np.arctanh(np.clip(rho, -_RHO_MAX, _RHO_MAX)) * math.sqrt(information(n, q))
        final = k == count - 1
        new_rejected, new_futile, _ = _decide_look(
            z, rejected[open_rows], futile[open_rows], efficacy[k], futility[k], final
        )
        if not final:
            early[open_rows] |= new_futile & ~futile[open_rows]
        rejected[open_rows], futile[open_rows] = new_rejected, new_futile
        done = np.all(new_rejected | new_futile, axis=1)
        stop_look[np.flatnonzero(open_rows)[done]] = k
        if np.all(rejected | futile):
            break
    stopped_n = np.asarray(design.looks)[stop_look]
    null = values == 0.0
    any_null = np.any(rejected[:, null], axis=1) if null.any() else None

    def se(p: Any) -> Any:
        return np.sqrt(np.asarray(p) * (1.0 - np.asarray(p)) / sequences)

    rejection, futility_rate = rejected.mean(axis=0), early.mean(axis=0)
    fwer = float(any_null.mean()) if any_null is not None else math.nan
    early_stop = float(np.mean(stop_look < count - 1))
    return SimulationResult(
        rho_true=tuple(float(v) for v in values),
        sequences=sequences,
        rejection_rate=rejection,
        rejection_se=se(rejection),
        futility_rate=futility_rate,
        futility_se=se(futility_rate),
        fwer=fwer,
        fwer_se=float(se(fwer)),
        early_stop_rate=early_stop,
        early_stop_se=float(se(early_stop)),
        mean_n=float(stopped_n.mean()),
        mean_n_se=float(stopped_n.std(ddof=1) / math.sqrt(sequences)),
        stop_looks=np.bincount(stop_look, minlength=count),
        looks=design.looks,
    )
