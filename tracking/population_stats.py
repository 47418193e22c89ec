"""Population statistics: rank correlations, partial correlations, bootstrap, permutation tests, Holm, power.

Pure numerics on numpy/scipy: no mlflow, no optuna (it lives in ``tracking`` because the correlation report is its
only caller). The entry point is :func:`correlation_table`, which turns a population of runs (one value per run for
each measure and each generalization target) into one :class:`CorrelationRow` per (measure, target) pair with rank
correlations, their p-values, a permutation p-value, a bootstrap confidence interval, a partial correlation given a
covariate (e.g. train loss), a Holm adjustment over the whole family of rows and, when the sweep varies several
hyperparameter axes, the granulated Kendall coefficient of Jiang et al. (2019). :func:`min_detectable_rho` is the
power side: the smallest correlation a population of n runs can detect.

Conventions:
    * Everything scipy has comes from ``scipy.stats`` (``spearmanr``, ``kendalltau``, ``pearsonr``,
      ``permutation_test``, ``bootstrap``); what it lacks (Holm, partial Spearman, granulated Kendall,
      cluster bootstrap) is written here and tested against hand computations.
    * Randomness is an argument: each row's permutation test and bootstrap use a fresh
      ``numpy.random.default_rng(seed)``, so a row's numbers do not depend on which other rows are in the table.
    * Degenerate inputs (constant columns, too few runs) give NaN, never an exception or a stream of warnings.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from landscape_core.common import check, check_count, json_safe

__all__ = [
    "CorrelationRow",
    "bootstrap_spearman_ci",
    "correlation_table",
    "granulated_kendall",
    "holm",
    "min_detectable_rho",
    "partial_spearman",
    "simpson_flag",
    "permutations_for",
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
            (BCa; percentile over resampled groups when ``groups`` was given).
        ci_high: Upper end of that interval.
        perm_p: Two-sided permutation p-value of Spearman rho (``scipy.stats.permutation_test``, pairings).
        partial_spearman: Spearman partial correlation given the covariate(s); NaN without covariate.
        partial_p: Its two-sided p-value (t distribution, ``n - 2 - k`` degrees of freedom).
        holm_p: Holm-adjusted ``verdict_p`` across all rows of the table.
        granulated_kendall: Jiang et al.'s granulated Kendall coefficient; None unless at least two axes vary.
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


def _spearman_along(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
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
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"Expected `pvalues` to be 1-D, got shape {p.shape}")
    present = ~np.isnan(p)
    if np.any((p[present] < 0.0) | (p[present] > 1.0)):
        raise ValueError(f"Expected `pvalues` in [0, 1], got {p[present][(p[present] < 0) | (p[present] > 1)][:3]}")
    out = np.full(p.shape, _NAN)
    pf = p[present]
    m = pf.size
    if m == 0:
        return out
    order = np.argsort(pf, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate((m - np.arange(m)) * pf[order]), 1.0)
    res = np.empty(m)
    res[order] = adjusted
    out[present] = res
    return out


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
    x: ArrayLike, y: ArrayLike, axes: Mapping[str, ArrayLike]
) -> tuple[float | None, dict[str, float]]:
    """Granulated Kendall coefficient Psi of Jiang et al. (2019, "Fantastic generalization measures").

    For each hyperparameter axis i, runs are grouped by the values of all *other* axes, so that inside a group only
    axis i changes; in every group with at least two runs Kendall's tau-b between x and y is computed;
    ``psi_i`` is the mean over those groups (groups whose tau is NaN, e.g. a constant column, are skipped; NaN if
    no group is left). ``Psi`` is the mean of the finite ``psi_i``. Only axes with more than one distinct value
    count. Runs with NaN or infinite x or y are dropped first.

    Args:
        x: Shape (n,), the measure.
        y: Shape (n,), the target.
        axes: Axis name -> shape (n,) hyperparameter values per run (any hashable labels).

    Returns:
        ``(Psi, {axis: psi_i})``; ``(None, {})`` when fewer than two axes vary.

    Raises:
        ValueError: On mismatched lengths.
    """
    xa, ya = _check_pair(x, y)
    n_all = xa.shape[0]
    axes_arr = {name: _as_labels_1d(f"axes[{name!r}]", vals, n_all) for name, vals in axes.items()}
    mask = _finite_mask(xa, ya)
    return _granulated_clean(xa[mask], ya[mask], {k: v[mask] for k, v in axes_arr.items()})


def _granulated_clean(
    x: np.ndarray, y: np.ndarray, axes: Mapping[str, np.ndarray]
) -> tuple[float | None, dict[str, float]]:
    codes: dict[str, np.ndarray] = {}
    for name, vals in axes.items():
        c, n_distinct = _codes(vals)
        if n_distinct > 1:
            codes[name] = c
    if len(codes) < 2:
        return None, {}
    by_axis: dict[str, float] = {}
    for name in codes:
        others = np.column_stack([c for other, c in codes.items() if other != name])
        _, group_id = np.unique(others, axis=0, return_inverse=True)
        group_id = group_id.reshape(-1)
        taus = []
        for g in np.unique(group_id):
            idx = np.flatnonzero(group_id == g)
            if idx.size >= 2:
                tau = _quiet(stats.kendalltau, x[idx], y[idx]).statistic
                if np.isfinite(tau):
                    taus.append(float(tau))
        by_axis[name] = float(np.mean(taus)) if taus else _NAN
    finite = [v for v in by_axis.values() if math.isfinite(v)]
    return (float(np.mean(finite)) if finite else _NAN), by_axis


def min_detectable_rho(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |rho| a two-sided test at level alpha detects with the given power, via Fisher's z.

    ``tanh((z_{1 - alpha/2} + z_{power}) / sqrt(n - 3))``: about 0.59 at n = 20 and 0.20 at n = 200 (alpha 0.05,
    power 0.8). Spearman's rho is treated like Pearson's r here, a standard approximation.

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


def bootstrap_spearman_ci(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> tuple[float, float]:
    """Bootstrap confidence interval of Spearman rho at level ``1 - alpha``.

    Without ``groups``: ``scipy.stats.bootstrap((x, y), rho, paired=True, method='BCa', n_resamples=n_boot,
    confidence_level=1 - alpha, rng=numpy.random.default_rng(seed))``; runs are re-ranked in every resample.

    With ``groups`` (runs nested in groups, e.g. seeds within learning rates), a cluster bootstrap: each resample
    draws as many group labels as there are groups, with replacement, and takes all runs of the drawn groups; the
    interval is the percentile interval of the finite resampled rhos. scipy has no clustered BCa, so this one is
    percentile; it needs at least two groups.

    Runs with NaN or infinite x or y are dropped first.

    Args:
        x: Shape (n,).
        y: Shape (n,).
        n_boot: Number of bootstrap resamples.
        alpha: One minus the confidence level.
        seed: Seed of the numpy Generator.
        groups: Optional shape (n,) group labels.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for degenerate data (fewer than 3 runs, a constant column, one group).
    """
    _check_resamples("n_boot", n_boot)
    _check_alpha(alpha)
    xa, ya = _check_pair(x, y)
    labels = None if groups is None else _as_labels_1d("groups", groups, xa.shape[0])
    mask = _finite_mask(xa, ya)
    return _ci_clean(xa[mask], ya[mask], None if labels is None else labels[mask], n_boot, alpha, seed)


def _ci_clean(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, n_boot: int, alpha: float, seed: int
) -> tuple[float, float]:
    if x.shape[0] < 3 or not np.isfinite(_spearman_along(x, y)):
        return _NAN, _NAN
    rng = np.random.default_rng(seed)
    if groups is None:
        res = _quiet(
            stats.bootstrap,
            (x, y),
            _spearman_along,
            paired=True,
            vectorized=True,
            method="BCa",
            confidence_level=1.0 - alpha,
            n_resamples=n_boot,
            rng=rng,
        )
        low, high = res.confidence_interval
        return float(low), float(high)
    codes, n_groups = _codes(groups)
    if n_groups < 2:
        return _NAN, _NAN
    members = [np.flatnonzero(codes == g) for g in range(n_groups)]
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    rhos = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([members[g] for g in draws[b]])
        rhos[b] = _spearman_along(x[idx], y[idx])
    rhos = rhos[np.isfinite(rhos)]
    if rhos.size == 0:
        return _NAN, _NAN
    low, high = np.quantile(rhos, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


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
        axes: Optional hyperparameter axis name -> shape (n,) values per run, for the granulated Kendall.
        n_boot: Bootstrap resamples.
        n_perm: Permutation resamples per row; ``None``: :func:`permutations_for` the family (a permutation p-value
            is at least ``2 / (n_perm + 1)``, so too few resamples would keep every Holm-adjusted p above ``alpha``).
        alpha: Significance level; the CI has level ``1 - alpha``.
        seed: Seed for the permutation test and the bootstrap.
        groups: Optional shape (n,) labels of nested groups (e.g. the learning rate of each run): switches the CI
            to a cluster bootstrap over groups.

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
) -> dict[str, Any]:
    n = int(x.shape[0])
    if n < MIN_N:
        return dict(dict.fromkeys(_STATISTICS, _NAN), n=n, granulated_kendall=None, granulated_by_axis=None)
    sp, kt, pr = (_quiet(test, x, y) for test in (stats.spearmanr, stats.kendalltau, stats.pearsonr))
    perm_p = _perm_p_clean(x, y, n_perm, seed)
    ci = _ci_clean(x, y, groups, n_boot, alpha, seed)
    partial = (_NAN, _NAN) if cov is None else _partial_spearman_clean(x, y, cov)
    gran, by_axis = _granulated_clean(x, y, axes) if axes else (None, {})
    verdict_p = perm_p if n < PERMUTATION_BELOW_N else sp.pvalue
    coefficients = [value for result in (sp, kt, pr) for value in (result.statistic, result.pvalue)]
    values = (*coefficients, *ci, perm_p, *partial, verdict_p)
    statistics = dict(zip(_STATISTICS, map(float, values), strict=True))
    return dict(statistics, n=n, granulated_kendall=gran, granulated_by_axis=None if gran is None else by_axis)


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


def verdict(row: CorrelationRow, alpha: float = 0.05) -> str:
    """One line in plain words on what a row shows.

    Examples: ``"significant positive (rho=+0.72, Holm p=0.003): larger lambda_max goes with larger test_loss"``,
    ``"no evidence (rho=+0.10, Holm p=0.71; n=20 detects only |rho| >= 0.59)"``. When a covariate was given, the
    partial correlation is appended, and a significant pooled correlation that vanishes given the covariate says so.

    Args:
        row: A row of :func:`correlation_table`.
        alpha: Significance level for the Holm-adjusted p-value.

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
    text = f"no evidence ({stats_txt}; n={row.n} detects only |rho| >= {min_detectable_rho(row.n, alpha):.2f})"
    if has_partial:
        text += f"; given the covariate: {partial_txt}"
    return text
