"""Tests for tracking.population_stats: against scipy.stats, closed forms and hand computations."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from tracking import population_stats
from tracking.population_stats import (
    CorrelationRow,
    bootstrap_spearman_ci,
    correlation_table,
    granulated_kendall,
    holm,
    holm_power,
    min_detectable_rho,
    min_detectable_rho_holm,
    n_needed,
    partial_spearman,
    permutations_for,
    simpson_flag,
    spearman_critical_value,
    spearman_permutation_p,
    verdict,
    within_group_spearman,
)

SEED = 1234


def _population(n: int, seed: int = SEED, rho: float = 0.4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    x = z + rng.normal(size=n)
    y = rho * x + rng.normal(size=n) + 0.3 * z
    return x, y, z


def _spearman_stat(a: np.ndarray, b: np.ndarray) -> float:
    return stats.spearmanr(a, b).statistic


# ----------------------------------------------------------------------------------------------------------------
# Agreement with scipy.stats
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [12, 40])
def test_coefficients_and_p_values_match_scipy(n: int) -> None:
    x, y, _ = _population(n)
    (row,) = correlation_table({"m": x}, {"t": y}, n_boot=50, n_perm=200, seed=7)
    sp, kt, pr = stats.spearmanr(x, y), stats.kendalltau(x, y), stats.pearsonr(x, y)
    for ours, ref in [
        (row.spearman, sp.statistic),
        (row.spearman_p, sp.pvalue),
        (row.kendall, kt.statistic),
        (row.kendall_p, kt.pvalue),
        (row.pearson, pr.statistic),
        (row.pearson_p, pr.pvalue),
    ]:
        assert ours == pytest.approx(ref, abs=1e-12, rel=1e-12)
    assert (row.n, row.n_dropped) == (n, 0)


@pytest.mark.parametrize("n", [5, 25])  # 5! = 120 <= n_perm: exact; 25: random pairings
def test_perm_p_matches_scipy_permutation_test(n: int) -> None:
    x, y, _ = _population(n, seed=n, rho=0.0)  # weak relation: p far from its floor 1 / (n_perm + 1)
    (row,) = correlation_table({"m": x}, {"t": y}, n_boot=20, n_perm=500, seed=11)
    assert 0.02 < row.perm_p < 0.9
    ref = stats.permutation_test(
        (x,),
        lambda xp: _spearman_stat(xp, y),
        permutation_type="pairings",
        n_resamples=500,
        vectorized=False,
        rng=np.random.default_rng(11),
    )
    assert row.perm_p == pytest.approx(ref.pvalue, abs=1e-12)
    assert spearman_permutation_p(x, y, n_perm=500, seed=11) == pytest.approx(ref.pvalue, abs=1e-12)
    # The verdict rests on the permutation p below n = 30.
    assert row.verdict_p == row.perm_p


def test_verdict_p_is_spearman_p_from_30_runs() -> None:
    x, y, _ = _population(30)
    (row,) = correlation_table({"m": x}, {"t": y}, n_boot=20, n_perm=100)
    assert row.verdict_p == row.spearman_p
    assert row.verdict_p != row.perm_p


def test_bca_ci_matches_scipy_bootstrap() -> None:
    x, y, _ = _population(40)
    (row,) = correlation_table({"m": x}, {"t": y}, n_boot=300, n_perm=50, alpha=0.1, seed=3)
    ref = stats.bootstrap(
        (x, y),
        _spearman_stat,
        paired=True,
        vectorized=False,
        method="BCa",
        confidence_level=0.9,
        n_resamples=300,
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert (row.ci_low, row.ci_high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert row.ci_low < row.spearman < row.ci_high
    assert row.ci_method == "bca"


def test_same_seed_same_numbers_other_seed_other_resamples() -> None:
    x, y, z = _population(24)
    kwargs = dict(covariate=z, n_boot=200, n_perm=300)
    a = correlation_table({"m": x}, {"t": y}, seed=5, **kwargs)
    b = correlation_table({"m": x}, {"t": y}, seed=5, **kwargs)
    c = correlation_table({"m": x}, {"t": y}, seed=6, **kwargs)
    assert a == b
    assert (a[0].ci_low, a[0].perm_p) != (c[0].ci_low, c[0].perm_p)


# ----------------------------------------------------------------------------------------------------------------
# Planted relations
# ----------------------------------------------------------------------------------------------------------------


def test_planted_monotone_relation_is_found() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = np.exp(x) + 1e-3 * rng.normal(size=40)
    (row,) = correlation_table({"sharpness": x}, {"test_loss": y}, n_boot=200, n_perm=200)
    assert row.spearman > 0.99
    assert row.spearman_p < 1e-20
    assert row.significant
    assert row.ci_low > 0.95
    text = verdict(row)
    assert text.startswith("significant positive (rho=+1.00, Holm p=")
    assert "larger sharpness goes with larger test_loss" in text


def test_confound_vanishes_given_the_covariate() -> None:
    rng = np.random.default_rng(2)
    n = 200
    z = rng.normal(size=n)  # train loss drives both
    x = z + 0.3 * rng.normal(size=n)
    y = z + 0.3 * rng.normal(size=n)
    (row,) = correlation_table({"m": x}, {"t": y}, covariate={"train_loss": z}, n_boot=100, n_perm=100)
    assert row.spearman > 0.8 and row.significant
    assert abs(row.partial_spearman) < 0.15
    assert row.partial_p > 0.05
    assert "but not beyond the covariate" in verdict(row)
    # A real effect on top of the confound survives.
    y2 = y + 0.5 * x
    (row2,) = correlation_table({"m": x}, {"t": y2}, covariate=z, n_boot=100, n_perm=100)
    assert row2.partial_spearman > 0.3 and row2.partial_p < 1e-6


# ----------------------------------------------------------------------------------------------------------------
# Partial Spearman
# ----------------------------------------------------------------------------------------------------------------


def _direct_partial(x: np.ndarray, y: np.ndarray, cov: np.ndarray) -> tuple[float, float]:
    cov = cov.reshape(len(x), -1)
    design = np.column_stack([np.ones(len(x))] + [stats.rankdata(c) for c in cov.T])
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    ex = rx - design @ np.linalg.lstsq(design, rx, rcond=None)[0]
    ey = ry - design @ np.linalg.lstsq(design, ry, rcond=None)[0]
    r = stats.pearsonr(ex, ey).statistic
    dof = len(x) - 2 - cov.shape[1]
    t = r * math.sqrt(dof / (1 - r**2))
    return r, 2 * stats.t.sf(abs(t), dof)


def test_partial_spearman_matches_direct_and_identity() -> None:
    x, y, z = _population(35, seed=9)
    r, p = partial_spearman(x, y, z)
    r_ref, p_ref = _direct_partial(x, y, z)
    assert r == pytest.approx(r_ref, abs=1e-12)
    assert p == pytest.approx(p_ref, rel=1e-10)
    # Textbook first-order partial correlation on Spearman coefficients.
    rxy, rxz, ryz = (stats.spearmanr(a, b).statistic for a, b in [(x, y), (x, z), (y, z)])
    identity = (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))
    assert r == pytest.approx(identity, abs=1e-12)
    assert abs(r - rxy) > 0.05  # the covariate matters in this population, so the test could tell


def test_partial_spearman_two_covariates_and_dict_form() -> None:
    x, y, z = _population(30, seed=4)
    w = np.random.default_rng(4).normal(size=30) + 0.5 * x
    r, p = partial_spearman(x, y, np.column_stack([z, w]))
    r_ref, p_ref = _direct_partial(x, y, np.column_stack([z, w]))
    assert (r, p) == pytest.approx((r_ref, p_ref), rel=1e-10)
    assert partial_spearman(x, y, {"z": z, "w": w}) == pytest.approx((r, p), rel=1e-12)
    (row,) = correlation_table({"m": x}, {"t": y}, covariate={"z": z, "w": w}, n_boot=20, n_perm=20)
    assert (row.partial_spearman, row.partial_p) == pytest.approx((r, p), rel=1e-12)


def test_partial_spearman_drops_missing_runs() -> None:
    x, y, z = _population(30, seed=6)
    x[2], z[9] = np.nan, np.inf
    keep = np.isfinite(x) & np.isfinite(z)
    assert partial_spearman(x, y, z) == pytest.approx(_direct_partial(x[keep], y[keep], z[keep]), rel=1e-10)


def test_partial_spearman_degenerate_is_nan() -> None:
    x, y, _ = _population(20)
    assert all(math.isnan(v) for v in partial_spearman(x, y, x))  # x fully explained
    assert all(math.isnan(v) for v in partial_spearman(x[:3], y[:3], y[:3]))  # no degrees of freedom


# ----------------------------------------------------------------------------------------------------------------
# Holm
# ----------------------------------------------------------------------------------------------------------------


def test_holm_hand_example() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.02, np.nan, 0.01])  # NaN is not part of the family (m = 2)
    assert out[[0, 2]] == pytest.approx([0.02, 0.02]) and math.isnan(out[1])
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError, match=r"Expected `pvalues` in \[0, 1\]"):
        holm([0.1, 1.5])


def test_holm_is_monotone_and_never_below_raw() -> None:
    p = np.random.default_rng(0).uniform(size=50) ** 3
    adj = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj >= p) and np.all(adj <= 1)


def test_table_holm_over_the_whole_family() -> None:
    x, y, z = _population(40)
    rows = correlation_table({"a": x, "b": z}, {"t": y, "u": x + z}, n_boot=20, n_perm=50)
    assert [(r.measure, r.target) for r in rows] == [("a", "t"), ("a", "u"), ("b", "t"), ("b", "u")]
    assert [r.holm_p for r in rows] == pytest.approx(list(holm([r.verdict_p for r in rows])), abs=1e-15)
    assert all(r.significant == (r.holm_p < 0.05) for r in rows)


# ----------------------------------------------------------------------------------------------------------------
# Calibration under the null
# ----------------------------------------------------------------------------------------------------------------


def _band(trials: int, p: float, level: float = 0.999) -> tuple[float, float]:
    tail = (1 - level) / 2
    return stats.binom.ppf(tail, trials, p) / trials, stats.binom.ppf(1 - tail, trials, p) / trials


def test_spearman_p_is_calibrated_under_the_null() -> None:
    rng = np.random.default_rng(2024)
    trials, n = 400, 30
    x, y = rng.normal(size=(2, trials, n))
    p = np.array([stats.spearmanr(x[i], y[i]).pvalue for i in range(trials)])
    lo, hi = _band(trials, 0.05)
    assert lo <= np.mean(p < 0.05) <= hi


def test_holm_controls_family_wise_error() -> None:
    rng = np.random.default_rng(77)
    families, m, n, alpha = 400, 5, 30, 0.05
    y = rng.normal(size=(families, n))
    x = rng.normal(size=(families, m, n))
    raw = np.array([[stats.spearmanr(x[f, j], y[f]).pvalue for j in range(m)] for f in range(families)])
    any_holm = np.mean([np.any(holm(raw[f]) < alpha) for f in range(families)])
    any_raw = np.mean(np.any(raw < alpha, axis=1))
    slack = stats.binom.ppf(0.999, families, alpha) / families
    assert any_holm <= slack
    assert any_raw > slack  # unadjusted p-values do inflate the family-wise error: the check has teeth


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------------------------


def test_bca_ci_coverage_bivariate_normal() -> None:
    rng = np.random.default_rng(31)
    rho, n, sims = 0.5, 50, 150
    true_spearman = 6 / math.pi * math.asin(rho / 2)
    cov = [[1.0, rho], [rho, 1.0]]
    hits = 0
    for s in range(sims):
        xy = rng.multivariate_normal([0.0, 0.0], cov, size=n)
        lo, hi, _ = bootstrap_spearman_ci(xy[:, 0], xy[:, 1], n_boot=300, alpha=0.05, seed=s)
        hits += lo <= true_spearman <= hi
    assert 0.85 <= hits / sims <= 0.99


def test_the_cluster_bootstrap_gives_each_resample_scipys_spearman_of_its_groups() -> None:
    # Groups of unequal sizes (resamples of several lengths) and ties: each resample's rho is scipy's on the rows of
    # the groups it drew, in that order.
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(5), [1, 2, 3, 4, 2])
    x, y = rng.integers(0, 4, size=12).astype(float), rng.normal(size=12)
    members = [np.flatnonzero(groups == g) for g in range(5)]
    draws = rng.integers(0, 5, size=(200, 5))
    rhos = population_stats._cluster_rhos(x, y, members, draws)
    for b in range(200):
        idx = np.concatenate([members[g] for g in draws[b]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resample of one value: scipy warns and gives NaN, as we do
            expected = stats.spearmanr(x[idx], y[idx]).statistic
        assert rhos[b] == pytest.approx(expected, abs=1e-12, nan_ok=True), b
    assert len(np.unique(np.array([m.size for m in members])[draws].sum(axis=1))) > 3  # several lengths


def test_cluster_bootstrap_is_wider_for_nested_runs() -> None:
    rng = np.random.default_rng(8)
    lrs = np.repeat([1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], 5)
    effect = rng.normal(size=6).repeat(5)  # shared by all seeds of one lr: runs are not independent
    x = effect + 0.1 * rng.normal(size=30)
    y = effect + 0.1 * rng.normal(size=30)
    iid = bootstrap_spearman_ci(x, y, n_boot=300, seed=1)
    clustered = bootstrap_spearman_ci(x, y, n_boot=300, seed=1, groups=lrs)
    assert (iid.method, clustered.method) == ("bca", "cluster_percentile")
    assert clustered.high - clustered.low > 2 * (iid.high - iid.low)
    assert clustered == bootstrap_spearman_ci(x, y, n_boot=300, seed=1, groups=lrs)
    (row,) = correlation_table({"m": x}, {"t": y}, n_boot=300, n_perm=50, seed=1, groups=lrs)
    assert (row.ci_low, row.ci_high, row.ci_method) == clustered
    # One group: every resample is the whole population, so there is no spread to resample.
    rho = stats.spearmanr(x, y).statistic
    assert bootstrap_spearman_ci(x, y, groups=np.zeros(30)) == pytest.approx((rho, rho, "degenerate"))


def test_degenerate_column_gives_nan_without_warnings() -> None:
    x, _, z = _population(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (row,) = correlation_table({"m": x}, {"const": np.ones(20)}, covariate=z, n_boot=50, n_perm=50)
    for name in ("spearman", "kendall", "pearson", "ci_low", "ci_high", "perm_p", "partial_spearman", "holm_p"):
        assert math.isnan(getattr(row, name)), name
    assert row.ci_method == "undefined"  # rho is NaN, so its interval is NaN too (and says why)
    assert not row.significant
    assert verdict(row).startswith("undefined")


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_perfect_ranks_give_a_finite_flagged_interval(sign: float) -> None:
    x = np.arange(20.0)
    y = sign * np.exp(x / 5)  # rho = +-1 exactly: every resample and every jackknife rho is +-1, BCa is 0/0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci = bootstrap_spearman_ci(x, y, n_boot=200, seed=1)
        clustered = bootstrap_spearman_ci(x, y, n_boot=200, seed=1, groups=np.repeat(np.arange(5), 4))
        (row,) = correlation_table({"m": x}, {"t": y}, n_boot=200, n_perm=200)
    assert ci == (sign, sign, "degenerate")
    assert clustered == (sign, sign, "degenerate")
    assert (row.ci_low, row.ci_high, row.ci_method) == (sign, sign, "degenerate")
    assert row.significant and row.spearman == sign
    d = json.loads(json.dumps(row.to_dict(), allow_nan=False))
    assert (d["ci_low"], d["ci_high"], d["ci_method"]) == (sign, sign, "degenerate")


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning", "ignore::scipy.stats.DegenerateDataWarning")
def test_small_sample_bca_falls_back_to_the_percentile_interval() -> None:
    # At n = 5 some resamples draw one run five times (a constant column, rho NaN), which makes BCa NaN.
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    ci = bootstrap_spearman_ci(x, y, n_boot=500, seed=2)
    assert ci.method == "percentile"
    ref = stats.bootstrap(
        (x, y), _spearman_stat, paired=True, vectorized=False, n_resamples=500, rng=np.random.default_rng(2)
    )
    assert math.isnan(ref.confidence_interval.low)  # what scipy's BCa gives, and what the row used to carry
    dist = ref.bootstrap_distribution
    expected = np.quantile(dist[np.isfinite(dist)], [0.025, 0.975])
    assert (ci.low, ci.high) == pytest.approx(tuple(expected), abs=1e-12)
    assert -1.0 <= ci.low < ci.high <= 1.0


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_constant_sample_has_no_rho_and_so_no_interval() -> None:
    x = np.arange(10.0)
    assert math.isnan(stats.spearmanr(x, np.ones(10)).statistic)
    for groups in (None, np.repeat([0, 1], 5)):
        low, high, method = bootstrap_spearman_ci(x, np.ones(10), groups=groups)
        assert math.isnan(low) and math.isnan(high) and method == "undefined"
    low, high, method = bootstrap_spearman_ci([1.0, 2.0], [3.0, 1.0])  # two runs: rho -1, nothing to resample
    assert (low, high, method) == (-1.0, -1.0, "degenerate")


# ----------------------------------------------------------------------------------------------------------------
# Granulated Kendall (Jiang et al. 2020, eqs. (4)-(5))
# ----------------------------------------------------------------------------------------------------------------

# Two hyperparameter axes, lr in {a, b, c} and batch size in {S, L}; the point (c, L) has two seeds.
HAND = {
    "lr": ["a", "b", "c", "a", "b", "c", "c"],
    "bs": ["S", "S", "S", "L", "L", "L", "L"],
    "seed": [1, 1, 1, 1, 1, 1, 2],
    "x": [1.0, 2.0, 3.0, 1.0, 1.0, 2.0, 4.0],
    "y": [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0],
}
# psi_lr, cells bs = S and bs = L, each a tau-a over 3 points (3 unordered pairs):
#   S: a(1,1) b(2,2) c(3,2): ab +1, ac +1, bc: y tied -> 0                                   tau = 2/3
#   L: a(1,3) b(1,4) c{(2,5),(4,6)}: ab: x tied -> 0; ac: mean(+1, +1) = 1; bc: mean(+1, +1) = 1  tau = 2/3
# psi_bs, cells lr = a, b, c, each 2 points (1 pair):
#   a: S(1,1) L(1,3): x tied -> 0; b: S(2,2) L(1,4): -1; c: S(3,2) L{(2,5),(4,6)}: mean(-1, +1) = 0
HAND_PSI = {"lr": 2 / 3, "bs": (0 - 1 + 0) / 3}


def _jiang_tau(mu: list[float], g: list[float]) -> float:
    """Jiang et al.'s eq. (4), literally: the sign average over ordered pairs of distinct elements of T."""
    total = sum(np.sign(mu[i] - mu[j]) * np.sign(g[i] - g[j]) for i in range(len(mu)) for j in range(len(mu)) if i != j)
    return total / (len(mu) * (len(mu) - 1))


def _jiang_psi(x: np.ndarray, y: np.ndarray, grid: dict[str, np.ndarray]) -> dict[str, float]:
    """Jiang et al.'s eq. (5), literally, for one run per hyperparameter point: loop over Theta_1 x ... x Theta_K."""
    names = list(grid)
    point = {tuple(grid[a][r] for a in names): r for r in range(len(x))}
    out = {}
    for i, name in enumerate(names):
        others = [sorted(set(grid[a])) for a in names if a != name]
        taus = []
        for fixed in itertools.product(*others):  # the m_i cells
            runs = [r for key, r in point.items() if tuple(k for j, k in enumerate(key) if j != i) == fixed]
            taus.append(_jiang_tau([x[r] for r in runs], [y[r] for r in runs]))
        out[name] = float(np.mean(taus))
    return out


def test_granulated_kendall_hand_computation() -> None:
    total, by_axis = granulated_kendall(HAND["x"], HAND["y"], {k: HAND[k] for k in ("lr", "bs", "seed")})
    assert by_axis == pytest.approx(HAND_PSI, abs=1e-12)  # "seed" is a repetition, not an axis
    assert list(by_axis) == ["lr", "bs"]
    assert total == pytest.approx((2 / 3 - 1 / 3) / 2, abs=1e-12)
    # Tau-b (scipy's default) divides by the untied pairs instead and would give 2 / sqrt(3 * 2) in cell S.
    assert stats.kendalltau([1.0, 2.0, 3.0], [1.0, 2.0, 2.0]).statistic == pytest.approx(2 / math.sqrt(6))
    (row,) = correlation_table(
        {"m": HAND["x"]}, {"t": HAND["y"]}, axes={k: HAND[k] for k in ("seed", "lr", "bs")}, n_boot=20, n_perm=20
    )
    assert row.granulated_kendall == pytest.approx(total, abs=1e-12)
    assert row.granulated_by_axis == pytest.approx(HAND_PSI, abs=1e-12)


def test_granulated_kendall_matches_jiang_formula_on_a_tied_grid() -> None:
    rng = np.random.default_rng(SEED)
    grid_axes = {"lr": [0.1, 0.03, 0.01], "bs": [32, 128, 512], "momentum": [0.0, 0.9]}
    points = list(itertools.product(*grid_axes.values()))
    grid = {name: np.array([p[i] for p in points]) for i, name in enumerate(grid_axes)}
    x = rng.integers(0, 4, size=len(points)).astype(float)  # coarse values: many ties
    y = rng.integers(0, 4, size=len(points)).astype(float)
    total, by_axis = granulated_kendall(x, y, grid)
    expected = _jiang_psi(x, y, grid)
    assert by_axis == pytest.approx(expected, abs=1e-12)
    assert total == pytest.approx(np.mean(list(expected.values())), abs=1e-12)


def test_repetitions_give_the_expected_tau_over_one_seed_per_point() -> None:
    # Unbalanced repetitions: enumerate every way to keep one seed per point; each choice is a plain Jiang grid.
    rng = np.random.default_rng(3)
    lr = ["a", "a", "a", "b", "c", "c", "a", "b", "b", "c"]
    bs = [32, 32, 32, 32, 32, 32, 64, 64, 64, 64]
    seed = [1, 2, 3, 1, 1, 2, 1, 1, 2, 1]
    x, y = rng.normal(size=10), rng.normal(size=10)
    _, by_axis = granulated_kendall(x, y, {"lr": lr, "bs": bs, "seed": seed})
    reps: dict[tuple, list[int]] = {}
    for r, key in enumerate(zip(lr, bs)):
        reps.setdefault(key, []).append(r)
    choices = list(itertools.product(*reps.values()))
    psis = []
    for chosen in choices:
        idx = np.array(chosen)
        psis.append(_jiang_psi(x[idx], y[idx], {"lr": np.array(lr)[idx], "bs": np.array(bs)[idx]}))
    expected = {name: np.mean([p[name] for p in psis]) for name in ("lr", "bs")}
    assert by_axis == pytest.approx(expected, abs=1e-12)
    # Pooling the seeds as extra points of a cell would compare repetitions of one point and give other numbers.
    pooled_bs = np.mean(
        [
            _jiang_tau(x[[r for r in range(10) if lr[r] == v]], y[[r for r in range(10) if lr[r] == v]])
            for v in ("a", "b", "c")
        ]
    )
    assert abs(pooled_bs - by_axis["bs"]) > 0.05


def test_granulated_kendall_axes_seed_rules_and_missing_runs() -> None:
    lr = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01]
    seed = [1, 2, 3, 1, 2, 3]
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    y = [1.0, 3.0, 2.0, 6.0, 5.0, 4.0]
    # One axis (lr) with the seeds as repetitions: one cell, points 0.1 {(1,1),(2,3),(3,2)} and 0.01 {(4,6),(5,5),
    # (6,4)}; every cross pair is concordant, so psi_lr = 1 (the 3 + 3 within-lr seed pairs do not count).
    assert granulated_kendall(x, y, {"lr": lr, "seed": seed}) == (pytest.approx(1.0), {"lr": pytest.approx(1.0)})
    assert granulated_kendall(x, y, {"seed": seed, "width": [64] * 6}) == (None, {})  # no hyperparameter varies
    # repetitions=() makes the seed an axis again (the pre-issue-12 behaviour, but with tau-a).
    _, by_axis = granulated_kendall(x, y, {"lr": lr, "seed": seed}, repetitions=())
    assert set(by_axis) == {"lr", "seed"}
    # A dropped run empties one point: the cell of seed 1 along lr has one point, so it is left out of psi_lr.
    x_nan = [np.nan, 2.0, 3.0, 4.0, 5.0, 6.0]
    _, by_axis = granulated_kendall(x_nan, y, {"lr": lr, "seed": seed}, repetitions=())
    assert by_axis["lr"] == pytest.approx(1.0)  # seeds 2 and 3: (2,3)-(5,5) and (3,2)-(6,4) concordant
    # seed axis: lr 0.1 has points 2,3 with x 2,3 / y 3,2 (tau -1); lr 0.01 has 4,5,6 / 6,5,4 (tau -1)
    assert by_axis["seed"] == pytest.approx(-1.0)
    # A tie is a zero in Jiang's sum, not a skipped cell.
    _, by_axis = granulated_kendall(x, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], {"lr": lr, "seed": seed})
    assert by_axis == {"lr": 0.0}
    (row,) = correlation_table({"m": x}, {"t": y}, axes={"seed": seed}, n_boot=20, n_perm=20)
    assert row.granulated_kendall is None and row.granulated_by_axis is None


# ----------------------------------------------------------------------------------------------------------------
# Missing values and bad input
# ----------------------------------------------------------------------------------------------------------------


def test_missing_values_are_dropped_pairwise_and_counted() -> None:
    x, y, z = _population(30)
    x[[1, 5]] = np.nan
    y[7] = np.inf
    z[11] = np.nan
    rows = correlation_table({"m": x}, {"t": y, "u": z}, covariate=z, n_boot=20, n_perm=20)
    assert [(r.n, r.n_dropped) for r in rows] == [(26, 4), (27, 3)]
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    assert rows[0].spearman == pytest.approx(stats.spearmanr(x[keep], y[keep]).statistic, abs=1e-12)
    json.dumps([r.to_dict() for r in rows], allow_nan=False)


def test_too_few_runs_gives_nan_row_not_an_error() -> None:
    x = [1.0, 2.0, np.nan, 4.0, 5.0]
    y = [2.0, 1.0, 3.0, np.nan, 7.0]
    (row,) = correlation_table({"m": x}, {"t": y}, n_boot=20, n_perm=20)
    assert (row.n, row.n_dropped) == (3, 2)
    assert math.isnan(row.spearman) and math.isnan(row.ci_low) and math.isnan(row.holm_p)
    assert not row.significant
    assert row.to_dict()["spearman"] is None
    assert verdict(row).startswith("not enough data (n=3")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_boot=0), r"Expected `n_boot` >= 1, got 0"),
        (dict(n_perm=0), r"Expected `n_perm` >= 1, got 0"),
        (dict(alpha=1.5), r"Expected 0 < `alpha` < 1, got 1.5"),
        (dict(covariate=np.zeros(9)), r"Expected `covariate` to have 10 rows, got 9"),
        (dict(axes={"lr": np.zeros(11)}), r"Expected `axes\['lr'\]` to have length 10, got 11"),
        (dict(groups=np.zeros(3)), r"Expected `groups` to have length 10, got 3"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        correlation_table({"m": np.arange(10.0)}, {"t": np.arange(10.0)}, **kwargs)


def test_mismatched_lengths_and_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"same length: `targets\['t'\]` has 9"):
        correlation_table({"m": np.arange(10.0)}, {"t": np.arange(9.0)})
    with pytest.raises(ValueError, match="to be 1-D"):
        correlation_table({"m": np.zeros((10, 2))}, {"t": np.arange(10.0)})
    with pytest.raises(ValueError, match="at least one measure"):
        correlation_table({}, {"t": np.arange(10.0)})
    with pytest.raises(ValueError, match="same length"):
        partial_spearman(np.arange(5.0), np.arange(4.0), np.arange(5.0))


# ----------------------------------------------------------------------------------------------------------------
# Power, Simpson, verdict
# ----------------------------------------------------------------------------------------------------------------


def test_min_detectable_rho_known_values() -> None:
    assert min_detectable_rho(20) == pytest.approx(0.59, abs=0.005)
    assert min_detectable_rho(200) == pytest.approx(0.197, abs=0.005)
    assert min_detectable_rho(20, power=0.9) > min_detectable_rho(20)
    with pytest.raises(ValueError, match=r"Expected `n` >= 4, got 3"):
        min_detectable_rho(3)


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho of every row pair (untied data): Pearson r of the ranks."""
    ra = np.argsort(np.argsort(a, axis=1), axis=1).astype(float)
    rb = np.argsort(np.argsort(b, axis=1), axis=1).astype(float)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    return (ra * rb).sum(axis=1) / np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))


def _monte_carlo_power(rho_s: float, n: int, level: float, draws: int, seed: int) -> float:
    """Fraction of bivariate normal samples (population Spearman rho_s) that the report's test rejects at ``level``.

    The report's verdict p: below n = 30 the permutation p-value, whose null (rho over random pairings) is the same
    for every untied sample, so one shared set of pairings serves all draws; from n = 30 spearmanr's t-test p.
    """
    rng = np.random.default_rng(seed)
    r = 2 * math.sin(math.pi * rho_s / 6)  # the Pearson rho of a normal pair with Spearman rho rho_s
    z = rng.normal(size=(2, draws, n))
    x, y = z[0], r * z[0] + math.sqrt(1 - r * r) * z[1]
    rho = _spearman_rows(x, y)
    for i in range(3):  # the vectorized rho and p are scipy's
        assert rho[i] == pytest.approx(stats.spearmanr(x[i], y[i]).statistic, abs=1e-12)
    if n < 30:
        pairings = 200_000
        perm = np.argsort(rng.random((pairings, n)), axis=1).astype(float)
        null = np.sort(np.abs(_spearman_rows(perm, np.broadcast_to(np.arange(n, dtype=float), perm.shape))))
        exceed = pairings - np.searchsorted(null, np.abs(rho) - 1e-12, side="left")
        p = (1 + exceed) / (pairings + 1)
    else:
        t = rho * np.sqrt((n - 2) / (1 - rho**2))
        p = 2 * stats.t.sf(np.abs(t), n - 2)
        assert p[0] == pytest.approx(stats.spearmanr(x[0], y[0]).pvalue, rel=1e-9)
    return float(np.mean(p < level))  # Holm's first step: m * p < alpha


@pytest.mark.parametrize(("n", "family"), [(20, 10), (20, 104), (40, 104)])
def test_holm_level_power_matches_monte_carlo(n: int, family: int) -> None:
    alpha, draws = 0.05, 2000  # binomial sd of the estimate at 0.8: 0.009
    rho = min_detectable_rho_holm(n, family, alpha)
    assert holm_power(rho, n, family, alpha) == pytest.approx(0.8, abs=1e-9)
    power = _monte_carlo_power(rho, n, alpha / family, draws, seed=n)
    assert power == pytest.approx(0.8, abs=0.05)
    # The uncorrected figure, the one the report's power note used to give, is far from 80% power at Holm's level.
    uncorrected = _monte_carlo_power(min_detectable_rho(n, alpha), n, alpha / family, draws, seed=n)
    assert uncorrected < 0.75


def test_min_detectable_rho_holm_and_n_needed_values() -> None:
    assert min_detectable_rho_holm(20, 104) == pytest.approx(0.82, abs=0.005)  # the plain Fisher z: 0.78
    assert min_detectable_rho_holm(20, 1) == pytest.approx(0.605, abs=0.005)
    assert min_detectable_rho_holm(20, 1) > min_detectable_rho(20)  # the rank test's larger Fisher-z variance
    assert min_detectable_rho_holm(40, 104) < min_detectable_rho_holm(20, 104) < min_detectable_rho_holm(20, 500)
    assert math.isnan(min_detectable_rho_holm(5, 104))  # 5 runs cannot reach p < 0.05 / 104 (2 / 5! = 0.017)
    for rho, family, n in [(0.3, 104, 202), (0.5, 104, 68), (0.5, 1, 31)]:
        assert n_needed(rho, family) == n
        assert min_detectable_rho_holm(n, family) <= rho < min_detectable_rho_holm(n - 1, family)
    assert n_needed(-0.5, 104) == 68
    for bad, message in [
        (lambda: min_detectable_rho_holm(3, 10), r"Expected `n` >= 4, got 3"),
        (lambda: min_detectable_rho_holm(20, 0), r"Expected `family_size` >= 1, got 0"),
        (lambda: min_detectable_rho_holm(20, 10, power=1.0), r"Expected 0 < `power` < 1, got 1.0"),
        (lambda: n_needed(0.0, 10), r"Expected 0 < \|`rho`\| < 1, got 0.0"),
        (lambda: n_needed(1.0, 10), r"Expected 0 < \|`rho`\| < 1, got 1.0"),
        (lambda: holm_power(0.5, 20, 2.5), r"Expected `family_size` to be an int, got 2.5"),
    ]:
        with pytest.raises(ValueError, match=message):
            bad()


@pytest.mark.parametrize("n", [6, 7])
def test_spearman_null_moments_and_exact_critical_values(n: int) -> None:
    perms = np.array(list(itertools.permutations(range(n))), dtype=float)
    rho = 1 - 6 * np.sum((perms - np.arange(n)) ** 2, axis=1) / (n * (n * n - 1))
    var, mu4 = population_stats._spearman_null_moments(n)
    assert (np.mean(rho**2), np.mean(rho**4)) == pytest.approx((var, mu4), rel=1e-12)
    values = np.unique(np.round(np.abs(rho), 12))
    p_of = {v: np.mean(np.abs(rho) >= v - 1e-9) for v in values}  # the exact two-sided permutation p of |rho| = v
    for level in (0.05, 0.01):
        reaching = [v for v in values if p_of[v] <= level and v < 1]
        expected = min(reaching) if reaching else math.inf  # only perfect ranks reaching it: nothing detectable
        assert spearman_critical_value(n, level) == pytest.approx(expected, abs=1e-9)
    assert spearman_critical_value(6, 0.05) == pytest.approx(0.885714, abs=1e-6)  # 31/35, p = 0.033
    assert spearman_critical_value(4, 0.05) == math.inf  # 2 / 4! > 0.05 even for perfect ranks


def test_critical_value_below_30_runs_tracks_the_permutation_null() -> None:
    # The Pearson type II fit against a Monte Carlo permutation null at a Holm-family level; scipy's t is too liberal.
    rng = np.random.default_rng(9)
    n, level = 20, 0.005
    perm = np.argsort(rng.random((200_000, n)), axis=1).astype(float)
    null = np.abs(_spearman_rows(perm, np.broadcast_to(np.arange(n, dtype=float), perm.shape)))
    quantile = np.quantile(null, 1 - level)
    assert spearman_critical_value(n, level) == pytest.approx(quantile, abs=0.006)
    t = stats.t.ppf(1 - level / 2, n - 2)
    assert quantile - t / math.sqrt(n - 2 + t * t) > 0.006
    t30 = stats.t.ppf(1 - level / 2, 28)
    assert spearman_critical_value(30, level) == pytest.approx(t30 / math.sqrt(28 + t30**2), rel=1e-12)


def test_simpson_flag_on_planted_paradox() -> None:
    rng = np.random.default_rng(5)
    groups = np.repeat(["a", "b", "c"], 10)
    t = np.tile(np.linspace(0, 1, 10), 3)
    offset = np.repeat([0.0, 3.0, 6.0], 10)
    x = offset + t
    y = offset - 2 * t + 0.05 * rng.normal(size=30)  # down inside each group, up across groups
    within = within_group_spearman(x, y, groups)
    assert list(within) == ["a", "b", "c"]
    assert all(rho < -0.9 and n == 10 for rho, n in within.values())
    pooled = stats.spearmanr(x, y).statistic
    assert pooled > 0.5
    assert simpson_flag(pooled, within)
    y_same = offset + 2 * t + 0.05 * rng.normal(size=30)
    assert not simpson_flag(stats.spearmanr(x, y_same).statistic, within_group_spearman(x, y_same, groups))
    assert not simpson_flag(0.5, {"a": (-0.05, 10), "b": (-0.05, 10)})  # weak within-group majority
    assert not simpson_flag(0.5, {"a": (float("nan"), 10), "b": (0.0, 10)})
    assert math.isnan(within_group_spearman([1.0, 2.0], [2.0, 1.0], ["a", "a"])["a"][0])


def test_verdict_no_evidence_mentions_detectable_rho() -> None:
    rng = np.random.default_rng(3)
    (row,) = correlation_table({"m": rng.normal(size=20)}, {"t": rng.normal(size=20)}, n_boot=50, n_perm=200)
    assert not row.significant
    text = verdict(row)
    assert text.startswith(f"no evidence (rho={row.spearman:+.2f}, Holm p=")
    assert text.endswith("n=20 detects only |rho| >= 0.59)")


def test_row_to_dict_is_json_safe() -> None:
    x, y, _ = _population(12)
    (row,) = correlation_table({"m": x}, {"t": y}, axes={"a": [0, 1] * 6, "b": [0] * 6 + [1] * 6}, n_boot=20, n_perm=20)
    assert isinstance(row, CorrelationRow)
    d = row.to_dict()
    assert d["partial_spearman"] is None  # no covariate
    assert d["ci_method"] in population_stats.CI_METHODS
    assert set(d["granulated_by_axis"]) == {"a", "b"}
    assert json.loads(json.dumps(d, allow_nan=False))["n"] == 12


def test_default_permutations_let_a_large_holm_family_reach_significance():
    # 25 measures x 4 targets: with 2000 resamples Holm's floor would be 100 x 2 / 2001 ~ 0.1, never below alpha.
    assert permutations_for(100, 0.05) == 40_000
    assert permutations_for(2, 0.05) == 2000  # never below the minimum
    rng = np.random.default_rng(SEED)
    n = 20
    x = rng.normal(size=n)
    measures = {f"m{i}": x + 0.01 * rng.normal(size=n) for i in range(25)}  # all near-perfectly monotone in y
    targets = {f"t{j}": x + 0.01 * rng.normal(size=n) for j in range(4)}
    rows = correlation_table(measures, targets, n_boot=10)
    assert all(r.perm_p == pytest.approx(2 / 40_001) for r in rows)  # two-sided: no random pairing beats rho ~ 1
    assert all(r.significant for r in rows)
    floor = correlation_table(measures, targets, n_boot=10, n_perm=2000)
    assert not any(r.significant for r in floor)
