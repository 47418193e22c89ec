"""Population statistics: rank correlations, partial correlations, bootstrap, permutation tests, Holm, power.

Pure numerics on numpy/scipy: no mlflow, no optuna (it lives in ``tracking`` because the correlation report is its
only caller). The entry point is :func:`correlation_table`, which turns a population of runs (one value per run for
each measure and each generalization target) into one :class:`CorrelationRow` per (measure, target) pair with rank
correlations, their p-values, a permutation p-value, a bootstrap confidence interval, a partial correlation given a
covariate (e.g. train loss), a Holm adjustment over the whole family of rows and, when the sweep varies a
hyperparameter axis, the granulated Kendall coefficient of Jiang et al. (2020). :func:`min_detectable_rho` is the
power side: the smallest correlation a population of n runs can detect; :func:`min_detectable_rho_holm` and
:func:`n_needed` give it at the level the report's verdicts actually use (Holm's first step over the whole family).

Conventions:
    * Everything scipy has comes from ``scipy.stats`` (``spearmanr``, ``kendalltau``, ``pearsonr``,
      ``permutation_test``, ``bootstrap``); what it lacks (Holm, partial Spearman, granulated Kendall,
      cluster bootstrap) is written here and tested against hand computations.
    * Randomness is an argument: each row's permutation test and bootstrap use a fresh
      ``numpy.random.default_rng(seed)``, so a row's numbers do not depend on which other rows are in the table.
    * Degenerate inputs (constant columns, too few runs) give NaN, never an exception or a stream of warnings.
      The one exception is the bootstrap interval of a finite rho, which is never NaN: a degenerate bootstrap falls
      back to a documented interval and says so (``CorrelationRow.ci_method``).
    * An axis named ``"seed"`` is not a hyperparameter axis: runs that differ only in their seed are repetitions of
      one hyperparameter point (:data:`REPETITION_AXES`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

from landscape_core.common import check, check_count, json_safe

__all__ = [
    "BootstrapCI",
    "benjamini_hochberg",
    "CorrelationRow",
    "REPETITION_AXES",
    "bootstrap_spearman_ci",
    "correlation_table",
    "granulated_kendall",
    "holm",
    "holm_power",
    "hyperparameter_codes",
    "min_detectable_rho",
    "min_detectable_rho_holm",
    "n_needed",
    "partial_spearman",
    "simpson_flag",
    "permutations_for",
    "spearman_critical_value",
    "spearman_along",
    "spearman_permutation_p",
    "verdict",
    "within_group_spearman",
]

#: Rows with fewer runs than this (after dropping missing values) get NaN statistics.
MIN_N = 4
#: Below this many runs the verdict uses the permutation p-value instead of the asymptotic Spearman p-value.
PERMUTATION_BELOW_N = 30
#: simpson_flag ignores a within-group majority whose n-weighted mean |rho| is at most this.
SIMPSON_MIN_WITHIN = 0.1
#: Axis names that label repetitions (runs at the same hyperparameter point), never hyperparameter axes.
REPETITION_AXES: tuple[str, ...] = ("seed",)
#: The values of ``CorrelationRow.ci_method`` / ``BootstrapCI.method`` (see :func:`bootstrap_spearman_ci`).
CI_METHODS = ("bca", "cluster_percentile", "percentile", "degenerate", "undefined")

_NAN = float("nan")
#: The float statistics of a row (``_row_fields``' order), all NaN when the row has fewer than ``MIN_N`` runs.
_STATISTICS = tuple(
    "spearman spearman_p kendall kendall_p pearson pearson_p ci_low ci_high perm_p partial_spearman partial_p "
    "verdict_p".split()
)


@dataclass(frozen=True)
class CorrelationRow:
    """Association between one measure and one generalization target over a population of runs.

    Attributes:
        measure: Name of the (sharpness) measure, the x variable.
        target: Name of the generalization target, the y variable.
        n: Number of runs used (after pairwise dropping of missing values).
        n_dropped: Number of runs dropped because the measure, target or a covariate was NaN or infinite.
        spearman: Spearman rho (``scipy.stats.spearmanr``).
        spearman_p: Its two-sided asymptotic p-value.
        kendall: Kendall tau-b (``scipy.stats.kendalltau``).
        kendall_p: Its two-sided p-value.
        pearson: Pearson r (``scipy.stats.pearsonr``).
        pearson_p: Its two-sided p-value.
        ci_low: Lower end of the bootstrap confidence interval of Spearman rho at level ``1 - alpha``
            (BCa; percentile over resampled groups when ``groups`` was given; see ``ci_method``).
        ci_high: Upper end of that interval.
        ci_method: How the interval was obtained (:func:`bootstrap_spearman_ci`): ``"bca"``,
            ``"cluster_percentile"`` (groups given), or a fallback: ``"percentile"`` (BCa undefined, percentile
            interval of the finite resamples), ``"degenerate"`` (no spread to resample: ``[rho, rho]``);
            ``"undefined"`` when rho itself is NaN (then the interval is NaN too).
        perm_p: Two-sided permutation p-value of Spearman rho (``scipy.stats.permutation_test``, pairings).
        partial_spearman: Spearman partial correlation given the covariate(s); NaN without covariate.
        partial_p: Its two-sided p-value (t distribution, ``n - 2 - k`` degrees of freedom).
        holm_p: Holm-adjusted ``verdict_p`` across all rows of the table.
        granulated_kendall: Jiang et al.'s granulated Kendall coefficient Psi over the hyperparameter axes
            (:func:`granulated_kendall`; seeds are repetitions, not an axis); None unless a hyperparameter axis varies.
        granulated_by_axis: Per-axis psi_i behind ``granulated_kendall``; None when that is None.
        verdict_p: The p-value the verdict rests on: ``perm_p`` when ``n < 30``, else ``spearman_p``.
        significant: ``holm_p < alpha``.
    """

    measure: str
    target: str
    n: int
    n_dropped: int
    spearman: float
    spearman_p: float
    kendall: float
    kendall_p: float
    pearson: float
    pearson_p: float
    ci_low: float
    ci_high: float
    ci_method: str
    perm_p: float
    partial_spearman: float
    partial_p: float
    holm_p: float
    granulated_kendall: float | None
    granulated_by_axis: dict[str, float] | None
    verdict_p: float
    significant: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the row as a JSON-safe dict: plain Python types, NaN and infinities as None."""
        return {f.name: json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)}


# --------------------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------------------


def _as_float_1d(name: str, values: ArrayLike) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"Expected `{name}` to be 1-D, got shape {arr.shape}")
    return arr


def _as_labels_1d(name: str, values: ArrayLike, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"Expected `{name}` to be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"Expected `{name}` to have length {n}, got {arr.shape[0]}")
    return arr


def _as_covariate_matrix(covariate: ArrayLike | Mapping[str, ArrayLike], n: int) -> np.ndarray:
    """Turn a covariate given as (n,), (n, k) or {name: (n,)} into an (n, k) float matrix."""
    if isinstance(covariate, Mapping):
        if not covariate:
            raise ValueError("Expected at least one covariate in the `covariate` dict, got 0")
        cols = [_as_float_1d(f"covariate[{name!r}]", col) for name, col in covariate.items()]
        for name, col in zip(covariate, cols, strict=True):
            if col.shape[0] != n:
                raise ValueError(f"Expected `covariate[{name!r}]` to have length {n}, got {col.shape[0]}")
        return np.column_stack(cols)
    arr = np.asarray(covariate, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"Expected `covariate` to have shape (n,) or (n, k), got {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"Expected `covariate` to have {n} rows, got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ValueError("Expected `covariate` to have at least one column, got 0")
    return arr


def _check_pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    xa = _as_float_1d("x", x)
    ya = _as_float_1d("y", y)
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(f"Expected `x` and `y` to have the same length, got {xa.shape[0]} and {ya.shape[0]}")
    return xa, ya


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"Expected 0 < `{name}` < 1, got {alpha}")


def _check_resamples(name: str, value: int) -> None:
    """A number of resamples (or of rows): an int (a float would reach numpy's and scipy's samplers), at least 1."""
    check(isinstance(value, (int, np.integer)) and not isinstance(value, bool), name, "to be an int", value)
    check_count(name, value)


# --------------------------------------------------------------------------------------------------------------
# Small vectorized kernels
# --------------------------------------------------------------------------------------------------------------


def _pearson_along(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson r along ``axis`` (broadcasting); NaN where either side is constant."""
    ac = a - a.mean(axis=axis, keepdims=True)
    bc = b - b.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ac * bc).sum(axis=axis) / np.sqrt((ac * ac).sum(axis=axis) * (bc * bc).sum(axis=axis))
    return np.clip(r, -1.0, 1.0)


def spearman_along(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman rho along ``axis``: Pearson r of average ranks (what scipy.stats.spearmanr computes)."""
    return _pearson_along(stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis), axis=axis)


def _quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with scipy's constant-input / degenerate-data warnings silenced (NaN results are the signal)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _finite_mask(*columns: np.ndarray) -> np.ndarray:
    mask = np.ones(columns[0].shape[0], dtype=bool)
    for col in columns:
        mask &= np.isfinite(col) if col.ndim == 1 else np.isfinite(col).all(axis=1)
    return mask


# --------------------------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------------------------


def _adjust(pvalues: ArrayLike, step: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """A multiple-testing adjustment: ``step(sorted p, m)`` on the non-NaN p-values (ascending), capped at 1 and put
    back in input order; NaN entries stay NaN and are not part of the family."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"Expected `pvalues` to be 1-D, got shape {p.shape}")
    present = ~np.isnan(p)
    if np.any((p[present] < 0.0) | (p[present] > 1.0)):
        raise ValueError(f"Expected `pvalues` in [0, 1], got {p[present][(p[present] < 0) | (p[present] > 1)][:3]}")
    out = np.full(p.shape, _NAN)
    pf = p[present]
    if pf.size == 0:
        return out
    order = np.argsort(pf, kind="stable")
    res = np.empty(pf.size)
    res[order] = np.minimum(step(pf[order], pf.size), 1.0)
    out[present] = res
    return out


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm (1979) step-down adjustment of a family of p-values.

    With the m p-values sorted ascending, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` (1-based), returned
    in the input order. It controls the family-wise error rate under any dependence between the tests. NaN entries
    are not part of the family: they stay NaN and do not count towards m.

    Args:
        pvalues: Shape (m,), values in [0, 1] or NaN.

    Returns:
        Shape (m,) adjusted p-values, monotone in the raw p-values and capped at 1.

    Raises:
        ValueError: If ``pvalues`` is not 1-D or holds values outside [0, 1].
    """
    return _adjust(pvalues, lambda ps, m: np.maximum.accumulate((m - np.arange(m)) * ps))


def benjamini_hochberg(pvalues: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg (1995) q-values of a family of p-values (the step-up FDR adjustment).

    With the m p-values sorted ascending, ``q_(i) = min_{j >= i} min(1, m p_(j) / j)`` (1-based), returned in the
    input order. Rejecting every row with ``q < alpha`` controls the false discovery rate at ``alpha`` for
    independent or positively dependent tests. NaN entries are not part of the family (they stay NaN).

    Args:
        pvalues: Shape (m,), values in [0, 1] or NaN.

    Returns:
        Shape (m,) q-values, monotone in the raw p-values and capped at 1.

    Raises:
        ValueError: If ``pvalues`` is not 1-D or holds values outside [0, 1].
    """
    return _adjust(pvalues, lambda ps, m: np.minimum.accumulate((ps * m / np.arange(1, m + 1))[::-1])[::-1])


def partial_spearman(
    x: ArrayLike, y: ArrayLike, covariates: ArrayLike | Mapping[str, ArrayLike]
) -> tuple[float, float]:
    """Spearman partial correlation of x and y given covariates.

    Ranks x, y and each covariate column (average ranks for ties), regresses rank(x) and rank(y) by least squares
    on ``[1, rank(covariates)]`` and returns the Pearson correlation of the two residual vectors. The p-value is
    two-sided from Student's t with ``n - 2 - k`` degrees of freedom, k the number of (linearly independent)
    covariates. For one covariate this equals the textbook
    ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))`` on Spearman coefficients. Runs with a NaN or infinite
    value in x, y or any covariate are dropped first.

    Args:
        x: Shape (n,).
        y: Shape (n,).
        covariates: Shape (n,) or (n, k), or a dict name -> shape (n,).

    Returns:
        ``(rho, p)``; ``(nan, nan)`` when fewer than one residual degree of freedom is left or a residual is zero
        (x or y fully explained by the covariates, or constant).

    Raises:
        ValueError: On mismatched shapes.
    """
    xa, ya = _check_pair(x, y)
    cov = _as_covariate_matrix(covariates, xa.shape[0])
    mask = _finite_mask(xa, ya, cov)
    return _partial_spearman_clean(xa[mask], ya[mask], cov[mask])


def _partial_spearman_clean(x: np.ndarray, y: np.ndarray, cov: np.ndarray) -> tuple[float, float]:
    n = x.shape[0]
    if n < 3:
        return _NAN, _NAN
    design = np.column_stack([np.ones(n), stats.rankdata(cov, axis=0)])
    ranks = np.column_stack([stats.rankdata(x), stats.rankdata(y)])
    coef, _, rank, _ = np.linalg.lstsq(design, ranks, rcond=None)
    resid = ranks - design @ coef
    k = int(rank) - 1
    dof = n - 2 - k
    scale = np.linalg.norm(ranks - ranks.mean(axis=0), axis=0)
    if dof < 1 or np.any(np.linalg.norm(resid, axis=0) <= 1e-10 * np.maximum(scale, 1.0)):
        return _NAN, _NAN
    r = float(_pearson_along(resid[:, 0], resid[:, 1]))
    if abs(r) >= 1.0:
        return r, 0.0
    t = r * math.sqrt(dof / (1.0 - r * r))
    return r, float(min(1.0, 2.0 * stats.t.sf(abs(t), dof)))


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes for arbitrary hashable labels (NaN labels form one group)."""
    seen: dict[Hashable, int] = {}
    out = np.empty(values.shape[0], dtype=np.intp)
    nan_key = object()
    for i, v in enumerate(values.tolist()):
        key = nan_key if isinstance(v, float) and math.isnan(v) else v
        out[i] = seen.setdefault(key, len(seen))
    return out, len(seen)


def granulated_kendall(
    x: ArrayLike,
    y: ArrayLike,
    axes: Mapping[str, ArrayLike],
    *,
    repetitions: Collection[str] = REPETITION_AXES,
) -> tuple[float | None, dict[str, float]]:
    """Granulated Kendall coefficient Psi of Jiang et al. (2020, "Fantastic generalization measures and where to find
    them", ICLR, Sec. 4, eqs. (4)-(5)), over hyperparameter axes only.

    Jiang et al.'s definition, for hyperparameter axes theta_1..theta_K with value sets Theta_1..Theta_K, a measure
    mu and a generalization target g (the population's own ``x`` and ``y``)::

        tau(T)  = 1 / (|T| (|T| - 1)) * sum_{(mu1, g1) in T} sum_{(mu2, g2) in T, != (mu1, g1)}
                      sign(mu1 - mu2) sign(g1 - g2)                                   (Kendall's tau-a)
        psi_i   = 1 / m_i * sum over the m_i cells of the other axes' values (theta_j, j != i, fixed) of
                      tau({(mu(theta), g(theta)) : theta_i in Theta_i})
        Psi     = 1 / K * sum_i psi_i

    tau is the pairwise sign average, tau-a: a pair tied in ``x`` or ``y`` contributes 0 to the sum and still counts
    in the denominator (tau-b, ``scipy.stats.kendalltau``'s default, divides by the untied pairs instead and gives
    larger values on tied data).

    Repetitions. Seeds are not an axis: axes named in ``repetitions`` (default ``("seed",)``) are dropped, and runs
    that share the values of every remaining axis are repetitions of one hyperparameter point. A cell's tau compares
    points, never two repetitions of the same point; each pair of distinct points (p, q) enters with the mean sign
    product over all pairs of their runs::

        tau_cell = 1 / (P (P - 1)) * sum_{p != q} mean_{a in p, b in q} sign(x_a - x_b) sign(y_a - y_b)

    with P the number of points of the cell. This is exactly the expected value of Jiang's tau(T) when each point is
    represented by one of its repetitions drawn uniformly at random (independently per point), for any number of
    seeds per point, balanced or not; with one run per point it is Jiang's tau(T) itself.
    (Pooling the repetitions as extra points of T would mix in pairs of seeds at one point, i.e. seed noise, into
    psi_i; pairing runs by seed label would depend on an arbitrary matching.)

    Other rules: only axes with at least two distinct values count (K is their number); runs with NaN or infinite x
    or y are dropped first; a cell with fewer than two points (after dropping) has no tau and is left out of psi_i's
    mean (so m_i counts the cells that have one); an axis with no such cell gets psi_i NaN and is left out of Psi.
    With one varying axis Psi = psi_1 is the tau over the points of that axis.

    Args:
        x: Shape (n,), the measure.
        y: Shape (n,), the target.
        axes: Axis name -> shape (n,) values per run (any hashable labels); may include repetition labels.
        repetitions: Names in ``axes`` that label repetitions, not hyperparameters.

    Returns:
        ``(Psi, {axis: psi_i})`` over the varying hyperparameter axes in input order; ``(None, {})`` when no
        hyperparameter axis varies (e.g. a population that varies only the seed).

    Raises:
        ValueError: On mismatched lengths.
    """
    xa, ya = _check_pair(x, y)
    n_all = xa.shape[0]
    axes_arr = {name: _as_labels_1d(f"axes[{name!r}]", vals, n_all) for name, vals in axes.items()}
    mask = _finite_mask(xa, ya)
    return _granulated_clean(xa[mask], ya[mask], {k: v[mask] for k, v in axes_arr.items()}, repetitions)


def hyperparameter_codes(
    axes: Mapping[str, np.ndarray], repetitions: Collection[str] = REPETITION_AXES
) -> dict[str, np.ndarray]:
    """Integer codes (shape (n,)) of the axes that are hyperparameters and vary, in input order.

    Axes named in ``repetitions`` are left out (they label repetitions of a point), and so are axes with a single
    distinct value. Used by :func:`granulated_kendall` and ``tracking.pairs.sign_error``.
    """
    codes: dict[str, np.ndarray] = {}
    for name, vals in axes.items():
        if name in repetitions:
            continue
        c, n_distinct = _codes(np.asarray(vals))
        if n_distinct > 1:
            codes[name] = c
    return codes


def _cells(codes: Mapping[str, np.ndarray], exclude: str | None, n: int) -> np.ndarray:
    """Cell id per run: runs share a cell when they agree on every axis in ``codes`` except ``exclude``."""
    others = [c for name, c in codes.items() if name != exclude]
    if not others:
        return np.zeros(n, dtype=np.intp)
    _, ids = np.unique(np.column_stack(others), axis=0, return_inverse=True)
    return ids.reshape(-1)


def _cell_tau(x: np.ndarray, y: np.ndarray, point: np.ndarray) -> float:
    """Jiang's tau-a over the points of one cell, repetitions of a point averaged (see :func:`granulated_kendall`)."""
    _, point = np.unique(point, return_inverse=True)
    point = point.reshape(-1)
    counts = np.bincount(point)
    k = counts.size
    if k < 2:
        return _NAN
    signs = np.sign(x[:, None] - x[None, :]) * np.sign(y[:, None] - y[None, :])
    weights = 1.0 / np.outer(counts[point], counts[point])
    weights[point[:, None] == point[None, :]] = 0.0
    return float(np.sum(weights * signs) / (k * (k - 1)))


def _granulated_clean(
    x: np.ndarray, y: np.ndarray, axes: Mapping[str, np.ndarray], repetitions: Collection[str] = REPETITION_AXES
) -> tuple[float | None, dict[str, float]]:
    codes = hyperparameter_codes(axes, repetitions)
    if not codes:
        return None, {}
    by_axis: dict[str, float] = {}
    for name, axis_codes in codes.items():
        cells = _cells(codes, name, x.shape[0])
        taus = []
        for cell in np.unique(cells):
            idx = np.flatnonzero(cells == cell)
            tau = _cell_tau(x[idx], y[idx], axis_codes[idx])
            if math.isfinite(tau):
                taus.append(tau)
        by_axis[name] = float(np.mean(taus)) if taus else _NAN
    finite = [v for v in by_axis.values() if math.isfinite(v)]
    return (float(np.mean(finite)) if finite else _NAN), by_axis


def min_detectable_rho(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |rho| a two-sided test at level alpha detects with the given power, via Fisher's z.

    ``tanh((z_{1 - alpha/2} + z_{power}) / sqrt(n - 3))``: about 0.59 at n = 20 and 0.20 at n = 200 (alpha 0.05,
    power 0.8). Spearman's rho is treated like Pearson's r here, a standard approximation. This is the power of one
    uncorrected test; the report's verdicts are Holm-adjusted, for which see :func:`min_detectable_rho_holm`.

    Args:
        n: Number of runs, at least 4.
        alpha: Two-sided significance level.
        power: Desired power.

    Returns:
        The minimal detectable |rho| in (0, 1).

    Raises:
        ValueError: If ``n < 4`` or alpha/power are outside (0, 1).
    """
    check_count("n", n, MIN_N)
    _check_alpha(alpha)
    _check_alpha(power, "power")
    z = stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(power)
    return float(math.tanh(z / math.sqrt(n - 3)))


#: Up to this n, :func:`spearman_critical_value` enumerates the n! pairings (8! = 40,320).
EXACT_NULL_MAX_N = 8


@functools.lru_cache(maxsize=8)
def _spearman_null_abs(n: int) -> np.ndarray:
    """Sorted |Spearman rho| over all n! pairings of untied data (the exact permutation null)."""
    perms = np.array(list(itertools.permutations(range(n))), dtype=float)
    d2 = np.sum((perms - np.arange(n)) ** 2, axis=1)
    values = np.sort(np.abs(1.0 - 6.0 * d2 / (n * (n * n - 1))))
    values.setflags(write=False)
    return values


def _spearman_null_moments(n: int) -> tuple[float, float]:
    """Variance and fourth moment of Spearman's rho over the n! equally likely pairings of untied data (H0).

    ``Var = 1 / (n - 1)`` and ``E[rho^4] = 3 (25 n^3 - 38 n^2 - 35 n + 72) / (25 n (n + 1) (n - 1)^3)``, the exact
    null moments (Kendall & Gibbons 1990, "Rank Correlation Methods", ch. 5); the tests check both against a full
    enumeration of the pairings.
    """
    var = 1.0 / (n - 1)
    mu4 = 3.0 * (25 * n**3 - 38 * n**2 - 35 * n + 72) / (25.0 * n * (n + 1) * (n - 1) ** 3)
    return var, mu4


def spearman_critical_value(n: int, level: float) -> float:
    """The |rho| from which the report's two-sided Spearman test at ``level`` rejects (untied data).

    The report's verdict p-value (:func:`correlation_table`) is the permutation p for ``n < 30`` and scipy's
    asymptotic p otherwise, so:

    * ``n >= 30``: ``scipy.stats.spearmanr``'s t test, inverted exactly: ``t_c / sqrt(n - 2 + t_c^2)`` with
      ``t_c = t_{1 - level/2, n - 2}``.
    * ``n <= 8``: the permutation null exactly, by enumerating the n! pairings (scipy's permutation test is exact
      there too, as ``n! <= n_perm``); ``inf`` when no |rho| < 1 has a p-value at or below ``level`` (n = 4:
      2/24 > 0.05 even for perfect ranks; n = 5 at 0.05: only perfect ranks, p = 2/120).
    * ``8 < n < 30``: the permutation null (Spearman's rho over the n! pairings, which the permutation p-value
      estimates), approximated by a Pearson type II curve ``rho = c (2 B - 1)``, ``B ~ Beta(a, a)``, whose variance and
      fourth moment match the exact null moments: with kurtosis ``k = E[rho^4] / Var^2``,
      ``a = 3 (k - 1) / (2 (3 - k))`` and ``c = sqrt(Var (2 a + 1))``. The t approximation that scipy uses is good at
      0.05 but too liberal in the far tail a Holm family reaches (n = 20, level 0.05/104: 0.708 against the
      permutation quantile 0.720; this curve: 0.727).

    Args:
        n: Number of runs, at least 4.
        level: Two-sided level in (0, 1).

    Returns:
        The critical |rho| in (0, 1); ``inf`` when no |rho| < 1 reaches the level (too few runs for it).
    """
    check_count("n", n, MIN_N)
    _check_alpha(level, "level")
    if n <= EXACT_NULL_MAX_N:
        values = _spearman_null_abs(n)  # sorted |rho| of all n! pairings
        # p(|r|) = #{|rho| >= |r|} / n!; the smallest attained |r| with p <= level.
        tail = (values.size - np.searchsorted(values, values - 1e-12, side="left")) / values.size
        attained = values[tail <= level]
        # Only perfect ranks reaching the level is "nothing detectable" for the continuous power model.
        return float(attained.min()) if attained.size and attained.min() < 1.0 - 1e-12 else math.inf
    if n >= PERMUTATION_BELOW_N:
        t = stats.t.ppf(1.0 - level / 2.0, n - 2)
        return float(t / math.sqrt(n - 2 + t * t))
    var, mu4 = _spearman_null_moments(n)
    kurtosis = mu4 / var**2
    a = 3.0 * (kurtosis - 1.0) / (2.0 * (3.0 - kurtosis))
    c = math.sqrt(var * (2.0 * a + 1.0))
    critical = c * (2.0 * float(stats.beta.ppf(1.0 - level / 2.0, a, a)) - 1.0)
    return critical if critical < 1.0 else math.inf


def _check_family(family_size: int) -> None:
    check(
        isinstance(family_size, (int, np.integer)) and not isinstance(family_size, bool),
        "family_size",
        "to be an int",
        family_size,
    )
    check_count("family_size", family_size)


def _power_at(rho: float, n: int, critical: float) -> float:
    """P(|R| >= critical) when atanh(R) ~ N(atanh(rho), (1 + rho^2 / 2) / (n - 3))."""
    if not math.isfinite(critical):
        return 0.0
    z_rho = math.atanh(rho)
    sd = math.sqrt((1.0 + rho * rho / 2.0) / (n - 3))
    z_c = math.atanh(critical)
    return float(stats.norm.sf((z_c - z_rho) / sd) + stats.norm.cdf((-z_c - z_rho) / sd))


def holm_power(rho: float, n: int, family_size: int, alpha: float = 0.05) -> float:
    """Power of the report's Spearman test to detect a population Spearman correlation ``rho`` at Holm's first step.

    Holm's first step tests the smallest p-value of a family of ``family_size`` rows at ``alpha / family_size``
    (two-sided); every later step is less strict, so this is the bar a single true effect must clear when all the
    other rows are null. Power is ``P(|r_s| >= r_c)`` with ``r_c`` = :func:`spearman_critical_value` at that level
    and the sample rho's Fisher z taken as normal with the variance of Bonett & Wright (2000, Psychometrika 65,
    23-28) for Spearman's rho: ``atanh(r_s) ~ N(atanh(rho), (1 + rho^2 / 2) / (n - 3))`` (Pearson's r would have
    ``1 / (n - 3)``; the plain formula overstates the power of the rank test by up to 0.1 at n = 20 and a family of
    104). The tests check it against a Monte Carlo of bivariate normal populations within 0.05.

    Args:
        rho: Population Spearman correlation, ``0 <= |rho| < 1``.
        n: Number of runs, at least 4.
        family_size: Number of rows in the Holm family (1: no correction).
        alpha: Family-wise significance level.

    Returns:
        The power in [0, 1].

    Raises:
        ValueError: On ``n < 4``, ``family_size < 1``, alpha outside (0, 1) or ``|rho| >= 1``.
    """
    check_count("n", n, MIN_N)
    _check_family(family_size)
    _check_alpha(alpha)
    if not abs(rho) < 1.0:
        raise ValueError(f"Expected |`rho`| < 1, got {rho}")
    return _power_at(abs(float(rho)), n, spearman_critical_value(n, alpha / family_size))


def min_detectable_rho_holm(n: int, family_size: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |rho| the report detects with the given power at Holm's first step over its family.

    Solves :func:`holm_power` ``(rho, n, family_size, alpha) = power`` for the population Spearman rho (see there for
    the approximation: the report's own test's critical value at ``alpha / family_size``, Bonett-Wright Fisher z).
    With n = 20 and the report's 104 rows this is 0.82 (the plain Fisher z, ``tanh((z_{1 - alpha/(2m)} + z_power) /
    sqrt(n - 3))``, says 0.78, but a Monte Carlo gives that rho only 69% power); uncorrected it is 0.60
    (:func:`min_detectable_rho`: 0.59).

    Args:
        n: Number of runs, at least 4.
        family_size: Number of rows in the Holm family.
        alpha: Family-wise significance level.
        power: Desired power in (0, 1).

    Returns:
        The minimal detectable |rho| in (0, 1); NaN when no |rho| < 1 is detectable at that level (the test cannot
        reject at ``alpha / family_size`` with n runs, e.g. n = 5 with 104 rows: 2 / 5! > 0.05 / 104).

    Raises:
        ValueError: On ``n < 4``, ``family_size < 1`` or alpha/power outside (0, 1).
    """
    check_count("n", n, MIN_N)
    _check_family(family_size)
    _check_alpha(alpha)
    _check_alpha(power, "power")
    critical = spearman_critical_value(n, alpha / family_size)
    if not math.isfinite(critical):
        return _NAN
    if _power_at(0.0, n, critical) >= power:
        return 0.0
    return float(optimize.brentq(lambda r: _power_at(r, n, critical) - power, 0.0, 1.0 - 1e-15, xtol=1e-12))


def n_needed(rho: float, family_size: int, alpha: float = 0.05, power: float = 0.8) -> int:
    """Smallest number of runs with which the report detects |rho| at Holm's first step with the given power.

    The smallest n >= 4 with :func:`holm_power` ``(rho, n, family_size, alpha) >= power``, found from the closed-form
    start ``3 + (1 + rho^2 / 2) ((z_{1 - alpha/(2m)} + z_power) / atanh|rho|)^2`` and stepped to the exact bound
    (power grows with n). E.g. for a family of 104 rows at 80% power: 202 runs for |rho| = 0.3, 68 for 0.5
    (uncorrected: 87 and 31).

    Args:
        rho: Population Spearman correlation, ``0 < |rho| < 1``.
        family_size: Number of rows in the Holm family.
        alpha: Family-wise significance level.
        power: Desired power in (0, 1).

    Returns:
        The number of runs.

    Raises:
        ValueError: On ``|rho|`` outside (0, 1), ``family_size < 1`` or alpha/power outside (0, 1).
    """
    _check_family(family_size)
    _check_alpha(alpha)
    _check_alpha(power, "power")
    r = abs(float(rho))
    if not 0.0 < r < 1.0:
        raise ValueError(f"Expected 0 < |`rho`| < 1, got {rho}")
    level = alpha / family_size
    z = stats.norm.ppf(1.0 - level / 2.0) + stats.norm.ppf(power)
    n = max(MIN_N, math.ceil(3.0 + (1.0 + r * r / 2.0) * (z / math.atanh(r)) ** 2))

    def enough(k: int) -> bool:
        return _power_at(r, k, spearman_critical_value(k, level)) >= power

    while not enough(n):
        n += 1
    while n > MIN_N and enough(n - 1):
        n -= 1
    return n


def within_group_spearman(x: ArrayLike, y: ArrayLike, groups: ArrayLike) -> dict[Any, tuple[float, int]]:
    """Spearman rho of x and y inside each group (e.g. each learning rate).

    Runs with NaN or infinite x or y are dropped first. Groups with fewer than 3 runs get rho NaN (two points
    always give +-1, which says nothing).

    Args:
        x: Shape (n,).
        y: Shape (n,).
        groups: Shape (n,) group labels.

    Returns:
        ``{label: (rho, n_in_group)}`` in order of first appearance.

    Raises:
        ValueError: On mismatched lengths.
    """
    xa, ya = _check_pair(x, y)
    labels = _as_labels_1d("groups", groups, xa.shape[0])
    mask = _finite_mask(xa, ya)
    xa, ya, labels = xa[mask], ya[mask], labels[mask]
    codes, n_groups = _codes(labels)
    label_list = labels.tolist()
    out: dict[Any, tuple[float, int]] = {}
    for g in range(n_groups):
        idx = np.flatnonzero(codes == g)
        rho = float(_quiet(stats.spearmanr, xa[idx], ya[idx]).statistic) if idx.size >= 3 else _NAN
        out[label_list[idx[0]]] = (rho, int(idx.size))
    return out


def simpson_flag(pooled_rho: float, within: Mapping[Any, tuple[float, int]]) -> bool:
    """Flag a Simpson's-paradox pattern: the pooled correlation points the other way than within groups.

    Rule: take the within-group rhos that are finite and nonzero, and their n-weighted mean ``m``. Flag when
    ``|m| > 0.1`` (a clear within-group majority) and the pooled rho is finite, nonzero and of the opposite sign.

    Args:
        pooled_rho: Spearman rho over all runs.
        within: Output of :func:`within_group_spearman`, ``{label: (rho, n)}``.

    Returns:
        True when the signs disagree as described.
    """
    pairs = [(rho, n) for rho, n in within.values() if math.isfinite(rho) and rho != 0.0 and n > 0]
    if not pairs or not math.isfinite(pooled_rho) or pooled_rho == 0.0:
        return False
    rhos = np.array([p[0] for p in pairs])
    weights = np.array([p[1] for p in pairs], dtype=float)
    majority = float(np.sum(rhos * weights) / np.sum(weights))
    return abs(majority) > SIMPSON_MIN_WITHIN and math.copysign(1.0, majority) != math.copysign(1.0, pooled_rho)


# Resamples per vectorized pass of the permutation test: bounds its memory (PERMUTATION_BATCH x n floats) however many
# resamples a large Holm family asks for.
PERMUTATION_BATCH = 10_000


def spearman_permutation_p(x: ArrayLike, y: ArrayLike, *, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman rho.

    ``scipy.stats.permutation_test((x,), statistic, permutation_type='pairings', n_resamples=n_perm,
    rng=numpy.random.default_rng(seed))`` with statistic rho(x_permuted, y), the idiom scipy documents for
    association tests; exact (all n! pairings) when ``n! <= n_perm``. Runs with NaN or infinite x or y are dropped.

    Args:
        x: Shape (n,).
        y: Shape (n,).
        n_perm: Number of random pairings.
        seed: Seed of the numpy Generator.

    Returns:
        The p-value; NaN when fewer than 3 runs or a constant column (rho undefined).
    """
    _check_resamples("n_perm", n_perm)
    xa, ya = _check_pair(x, y)
    mask = _finite_mask(xa, ya)
    return _perm_p_clean(xa[mask], ya[mask], n_perm, seed)


def _perm_p_clean(x: np.ndarray, y: np.ndarray, n_perm: int, seed: int) -> float:
    if x.shape[0] < 3:
        return _NAN
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    if not np.isfinite(_pearson_along(rx, ry)):
        # A NaN statistic would compare False against every null value and give a spuriously tiny p.
        return _NAN

    def statistic(rx_perm: np.ndarray, axis: int = -1) -> np.ndarray:
        # Permuting x permutes its ranks, so ranking once up front is exact.
        return _pearson_along(rx_perm, ry, axis=axis)

    res = _quiet(
        stats.permutation_test,
        (rx,),
        statistic,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=n_perm,
        batch=PERMUTATION_BATCH,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


class BootstrapCI(NamedTuple):
    """A bootstrap interval of Spearman rho and how it was obtained (one of :data:`CI_METHODS`)."""

    low: float
    high: float
    method: str


def bootstrap_spearman_ci(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> BootstrapCI:
    """Bootstrap confidence interval of Spearman rho at level ``1 - alpha``, never NaN for a finite rho.

    Without ``groups``: ``scipy.stats.bootstrap((x, y), rho, paired=True, method='BCa', n_resamples=n_boot,
    confidence_level=1 - alpha, rng=numpy.random.default_rng(seed))``; runs are re-ranked in every resample
    (method ``"bca"``).

    With ``groups`` (runs nested in groups, e.g. seeds within learning rates), a cluster bootstrap: each resample
    draws as many group labels as there are groups, with replacement, and takes all runs of the drawn groups; the
    interval is the percentile interval of the finite resampled rhos (method ``"cluster_percentile"``; scipy has no
    clustered BCa).

    Fallbacks, in order, for a degenerate bootstrap (a finite rho whose interval above is not finite, or has no
    spread):

    1. ``"percentile"``: BCa is undefined (its acceleration is 0/0 when every jackknife rho is equal, e.g. perfect
       ranks, and it is NaN when some resamples have a constant column, common at n < 8): the percentile interval
       ``[q_{alpha/2}, q_{1 - alpha/2}]`` of the finite resampled rhos, when it has positive width.
    2. ``"degenerate"``: the resampled rhos have no spread (perfect ranks: every resample has rho = +-1; one group;
       n < 3), so no resampling interval exists: ``[rho, rho]``, the observed value at both ends (rho is in
       [-1, 1]). A zero-width interval says "the bootstrap cannot tell", not "rho is known exactly".

    ``"undefined"``: rho itself is NaN (a constant column, or fewer than 2 runs): the interval is ``(nan, nan)``.

    Runs with NaN or infinite x or y are dropped first.

    Args:
        x: Shape (n,).
        y: Shape (n,).
        n_boot: Number of bootstrap resamples.
        alpha: One minus the confidence level.
        seed: Seed of the numpy Generator.
        groups: Optional shape (n,) group labels.

    Returns:
        ``BootstrapCI(low, high, method)``; it unpacks as a 3-tuple.
    """
    _check_resamples("n_boot", n_boot)
    _check_alpha(alpha)
    xa, ya = _check_pair(x, y)
    labels = None if groups is None else _as_labels_1d("groups", groups, xa.shape[0])
    mask = _finite_mask(xa, ya)
    return _ci_clean(xa[mask], ya[mask], None if labels is None else labels[mask], n_boot, alpha, seed)


def _ci_clean(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, n_boot: int, alpha: float, seed: int
) -> BootstrapCI:
    rho = float(spearman_along(x, y)) if x.shape[0] >= 2 else _NAN
    if not math.isfinite(rho):
        return BootstrapCI(_NAN, _NAN, "undefined")
    degenerate = BootstrapCI(rho, rho, "degenerate")
    if x.shape[0] < 3:
        return degenerate
    rng = np.random.default_rng(seed)
    if groups is None:
        res = _quiet(
            stats.bootstrap,
            (x, y),
            spearman_along,
            paired=True,
            vectorized=True,
            method="BCa",
            confidence_level=1.0 - alpha,
            n_resamples=n_boot,
            rng=rng,
        )
        low, high = (float(v) for v in res.confidence_interval)
        if math.isfinite(low) and math.isfinite(high):
            return BootstrapCI(low, high, "bca")
        rhos, method = np.asarray(res.bootstrap_distribution, dtype=float), "percentile"
    else:
        codes, n_groups = _codes(groups)
        members = [np.flatnonzero(codes == g) for g in range(n_groups)]
        draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
        rhos, method = _cluster_rhos(x, y, members, draws), "cluster_percentile"
    rhos = rhos[np.isfinite(rhos)]
    if rhos.size == 0:
        return degenerate
    low, high = (float(v) for v in np.quantile(rhos, [alpha / 2.0, 1.0 - alpha / 2.0]))
    if not high - low > 1e-12:
        return degenerate
    return BootstrapCI(low, high, method)


def _cluster_rhos(x: np.ndarray, y: np.ndarray, members: list[np.ndarray], draws: np.ndarray) -> np.ndarray:
    """Spearman rho of each cluster resample: row ``b`` of ``draws`` picks whole groups (``members[g]``, the rows of
    group ``g``). Resamples of equal length are ranked in one vectorized call (all of them when the groups are of one
    size): the same numbers as one call per resample, 20x faster on an lr sweep of 8 lrs x 3 seeds (``benchmarks``
    row ``cluster_bootstrap_vs_per_resample``)."""
    sizes = np.array([m.size for m in members])
    lengths = sizes[draws].sum(axis=1)
    rhos = np.empty(draws.shape[0])
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        idx = np.stack([np.concatenate([members[g] for g in draws[b]]) for b in rows])
        rhos[rows] = spearman_along(x[idx], y[idx], axis=-1)
    return rhos


# --------------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------------


def permutations_for(family: int, alpha: float = 0.05, *, minimum: int = 2000) -> int:
    """Permutation resamples per row for a Holm family of ``family`` rows at level ``alpha``.

    The smallest two-sided permutation p-value is ``2 / (n_perm + 1)`` and Holm multiplies the smallest p by the family
    size, so a family can only reach significance when ``2 * family / (n_perm + 1) < alpha``. This returns
    ``max(minimum, ceil(20 * family / alpha))``, which puts that floor at ``alpha / 10``: e.g. 40,000 resamples for
    100 rows at 0.05 (vectorized, a fraction of a second per row at n = 20).
    """
    _check_resamples("family", family)
    _check_alpha(alpha)
    return max(minimum, math.ceil(20 * family / alpha))


def correlation_table(
    measures: Mapping[str, ArrayLike],
    targets: Mapping[str, ArrayLike],
    *,
    covariate: ArrayLike | Mapping[str, ArrayLike] | None = None,
    axes: Mapping[str, ArrayLike] | None = None,
    n_boot: int = 2000,
    n_perm: int | None = None,
    alpha: float = 0.05,
    seed: int = 0,
    groups: ArrayLike | None = None,
    repetitions: Collection[str] = REPETITION_AXES,
) -> list[CorrelationRow]:
    """Test every measure against every generalization target over a population of runs.

    Per (measure, target) pair, runs with a NaN or infinite measure, target or covariate value are dropped (and
    counted); the rest give Spearman, Kendall and Pearson coefficients with scipy's p-values, a permutation
    p-value for Spearman, a bootstrap CI for Spearman (see :func:`bootstrap_spearman_ci`), the partial Spearman
    correlation given ``covariate`` and the granulated Kendall coefficient over ``axes``. The verdict p-value is the
    permutation p for n < 30 (the asymptotic one is unreliable there) and Spearman's p otherwise; Holm adjusts it
    over the whole family of rows returned. Rows with n < 4 get NaN statistics and are not significant.

    Each row's permutation test and bootstrap use a fresh ``numpy.random.default_rng(seed)``.

    Args:
        measures: Name -> shape (n,) values of each measure, one per run.
        targets: Name -> shape (n,) values of each generalization target.
        covariate: Optional shape (n,) or (n, k) array, or name -> shape (n,) dict (e.g. train loss).
        axes: Optional axis name -> shape (n,) values per run, for the granulated Kendall. Names in ``repetitions``
            (default: ``"seed"``) label repetitions of a hyperparameter point, not axes (:func:`granulated_kendall`);
            ``axes={"seed": seeds, "lr": lrs}`` gives Psi over the one axis lr, with the seeds as repetitions.
        n_boot: Bootstrap resamples.
        n_perm: Permutation resamples per row; ``None``: :func:`permutations_for` the family (a permutation p-value
            is at least ``2 / (n_perm + 1)``, so too few resamples would keep every Holm-adjusted p above ``alpha``).
        alpha: Significance level; the CI has level ``1 - alpha``.
        seed: Seed for the permutation test and the bootstrap.
        groups: Optional shape (n,) labels of nested groups (e.g. the learning rate of each run): switches the CI
            to a cluster bootstrap over groups.
        repetitions: Names in ``axes`` that label repetitions rather than hyperparameters.

    Returns:
        One row per (measure, target), measure-major in input order.

    Raises:
        ValueError: On empty inputs, mismatched lengths, bad shapes, ``n_boot``/``n_perm`` < 1 or alpha outside
            (0, 1).
    """
    _check_resamples("n_boot", n_boot)
    _check_alpha(alpha)
    if not measures:
        raise ValueError("Expected at least one measure, got 0")
    if not targets:
        raise ValueError("Expected at least one target, got 0")
    if n_perm is None:
        n_perm = permutations_for(len(measures) * len(targets), alpha)
    _check_resamples("n_perm", n_perm)
    m_arr = {name: _as_float_1d(f"measures[{name!r}]", v) for name, v in measures.items()}
    t_arr = {name: _as_float_1d(f"targets[{name!r}]", v) for name, v in targets.items()}
    first_name = next(iter(m_arr))
    n_all = m_arr[first_name].shape[0]
    for kind, arrs in (("measures", m_arr), ("targets", t_arr)):
        for name, arr in arrs.items():
            if arr.shape[0] != n_all:
                raise ValueError(
                    f"Expected all arrays to have the same length: `{kind}[{name!r}]` has {arr.shape[0]}, "
                    f"`measures[{first_name!r}]` has {n_all}"
                )
    cov = None if covariate is None else _as_covariate_matrix(covariate, n_all)
    axes_arr = (
        {} if axes is None else {name: _as_labels_1d(f"axes[{name!r}]", vals, n_all) for name, vals in axes.items()}
    )
    labels = None if groups is None else _as_labels_1d("groups", groups, n_all)

    partial_rows = []
    for m_name, x_all in m_arr.items():
        for t_name, y_all in t_arr.items():
            cols = [x_all, y_all] if cov is None else [x_all, y_all, cov]
            mask = _finite_mask(*cols)
            fields = _row_fields(
                x_all[mask],
                y_all[mask],
                None if cov is None else cov[mask],
                {k: v[mask] for k, v in axes_arr.items()},
                None if labels is None else labels[mask],
                n_boot=n_boot,
                n_perm=n_perm,
                alpha=alpha,
                seed=seed,
                repetitions=repetitions,
            )
            fields.update(measure=m_name, target=t_name, n_dropped=int(n_all - mask.sum()))
            partial_rows.append(fields)

    adjusted = holm([f["verdict_p"] for f in partial_rows])
    rows = []
    for fields, hp in zip(partial_rows, adjusted, strict=True):
        rows.append(CorrelationRow(**fields, holm_p=float(hp), significant=bool(hp < alpha)))
    return rows


def _row_fields(
    x: np.ndarray,
    y: np.ndarray,
    cov: np.ndarray | None,
    axes: Mapping[str, np.ndarray],
    groups: np.ndarray | None,
    *,
    n_boot: int,
    n_perm: int,
    alpha: float,
    seed: int,
    repetitions: Collection[str] = REPETITION_AXES,
) -> dict[str, Any]:
    n = int(x.shape[0])
    if n < MIN_N:
        return dict(
            dict.fromkeys(_STATISTICS, _NAN),
            n=n,
            ci_method="undefined",
            granulated_kendall=None,
            granulated_by_axis=None,
        )
    sp, kt, pr = (_quiet(test, x, y) for test in (stats.spearmanr, stats.kendalltau, stats.pearsonr))
    perm_p = _perm_p_clean(x, y, n_perm, seed)
    ci = _ci_clean(x, y, groups, n_boot, alpha, seed)
    partial = (_NAN, _NAN) if cov is None else _partial_spearman_clean(x, y, cov)
    gran, by_axis = _granulated_clean(x, y, axes, repetitions) if axes else (None, {})
    verdict_p = perm_p if n < PERMUTATION_BELOW_N else sp.pvalue
    coefficients = [value for result in (sp, kt, pr) for value in (result.statistic, result.pvalue)]
    values = (*coefficients, ci.low, ci.high, perm_p, *partial, verdict_p)
    statistics = dict(zip(_STATISTICS, map(float, values), strict=True))
    return dict(
        statistics,
        n=n,
        ci_method=ci.method,
        granulated_kendall=gran,
        granulated_by_axis=None if gran is None else by_axis,
    )


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


def verdict(row: CorrelationRow, alpha: float = 0.05, family_size: int | None = None) -> str:
    """One line in plain words on what a row shows.

    Examples: ``"significant positive (rho=+0.72, Holm p=0.003): larger lambda_max goes with larger test_loss"``,
    ``"no evidence (rho=+0.10, Holm p=0.71; n=20 detects only |rho| >= 0.59)"``. When a covariate was given, the
    partial correlation is appended, and a significant pooled correlation that vanishes given the covariate says so.

    Args:
        row: A row of :func:`correlation_table`.
        alpha: Significance level for the Holm-adjusted p-value.
        family_size: The Holm family's size: the detectable |rho| is then the one at Holm's first step
            (:func:`min_detectable_rho_holm`); None: at alpha, uncorrected.

    Returns:
        The verdict sentence.
    """
    _check_alpha(alpha)
    if row.n < MIN_N or not math.isfinite(row.spearman) or not math.isfinite(row.holm_p):
        why = f"n={row.n}" + (f" after dropping {row.n_dropped} runs with missing values" if row.n_dropped else "")
        if row.n < MIN_N:
            return f"not enough data ({why}; need n >= {MIN_N})"
        return f"undefined ({why}; a column is constant)"
    stats_txt = f"rho={row.spearman:+.2f}, Holm p={_fmt_p(row.holm_p)}"
    has_partial = math.isfinite(row.partial_spearman) and math.isfinite(row.partial_p)
    partial_txt = f"partial rho={row.partial_spearman:+.2f}, p={_fmt_p(row.partial_p)}"
    if row.holm_p < alpha and row.spearman != 0.0:
        direction = "positive" if row.spearman > 0 else "negative"
        more_less = "larger" if row.spearman > 0 else "smaller"
        text = f"significant {direction} ({stats_txt}): larger {row.measure} goes with {more_less} {row.target}"
        if has_partial:
            if row.partial_p >= alpha:
                text += f"; but not beyond the covariate ({partial_txt})"
            else:
                text += f"; holds given the covariate ({partial_txt})"
        return text
    if family_size is None:
        detect = f"n={row.n} detects only |rho| >= {min_detectable_rho(row.n, alpha):.2f}"
    else:
        limit = min_detectable_rho_holm(row.n, family_size, alpha)
        detect = (
            f"n={row.n} detects only |rho| >= {limit:.2f} at Holm's first step"
            if math.isfinite(limit)
            else (f"n={row.n} cannot detect any |rho| at Holm's first step over {family_size} rows")
        )
    text = f"no evidence ({stats_txt}; {detect})"
    if has_partial:
        text += f"; given the covariate: {partial_txt}"
    return text
