"""Tests for tracking.population_stats: against scipy.stats, closed forms and hand computations."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from tracking.population_stats import (
    CorrelationRow,
    bootstrap_spearman_ci,
    correlation_table,
    granulated_kendall,
    holm,
    min_detectable_rho,
    partial_spearman,
    permutations_for,
    simpson_flag,
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
        lo, hi = bootstrap_spearman_ci(xy[:, 0], xy[:, 1], n_boot=300, alpha=0.05, seed=s)
        hits += lo <= true_spearman <= hi
    assert 0.85 <= hits / sims <= 0.99


def test_cluster_bootstrap_is_wider_for_nested_runs() -> None:
    rng = np.random.default_rng(8)
    lrs = np.repeat([1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], 5)
    effect = rng.normal(size=6).repeat(5)  # shared by all seeds of one lr: runs are not independent
    x = effect + 0.1 * rng.normal(size=30)
    y = effect + 0.1 * rng.normal(size=30)
    iid = bootstrap_spearman_ci(x, y, n_boot=300, seed=1)
    clustered = bootstrap_spearman_ci(x, y, n_boot=300, seed=1, groups=lrs)
    assert clustered[1] - clustered[0] > 2 * (iid[1] - iid[0])
    assert clustered == bootstrap_spearman_ci(x, y, n_boot=300, seed=1, groups=lrs)
    (row,) = correlation_table({"m": x}, {"t": y}, n_boot=300, n_perm=50, seed=1, groups=lrs)
    assert (row.ci_low, row.ci_high) == clustered
    assert all(math.isnan(v) for v in bootstrap_spearman_ci(x, y, groups=np.zeros(30)))  # one group


def test_degenerate_column_gives_nan_without_warnings() -> None:
    x, _, z = _population(20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (row,) = correlation_table({"m": x}, {"const": np.ones(20)}, covariate=z, n_boot=50, n_perm=50)
    for name in ("spearman", "kendall", "pearson", "ci_low", "ci_high", "perm_p", "partial_spearman", "holm_p"):
        assert math.isnan(getattr(row, name)), name
    assert not row.significant
    assert verdict(row).startswith("undefined")


# ----------------------------------------------------------------------------------------------------------------
# Granulated Kendall
# ----------------------------------------------------------------------------------------------------------------


def test_granulated_kendall_hand_computation() -> None:
    lr = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01]
    seed = [1, 2, 3, 1, 2, 3]
    width = [64] * 6  # does not vary: ignored
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    y = [1.0, 3.0, 2.0, 6.0, 5.0, 4.0]
    # axis seed (groups = fixed lr): lr 0.1 -> pairs (1,2)+ (1,3)+ (2,3)- : tau = 1/3; lr 0.01 -> all -: tau = -1
    psi_seed = (1 / 3 - 1) / 2
    # axis lr (groups = fixed seed, two runs each): (1,1)-(4,6), (2,3)-(5,5), (3,2)-(6,4) all concordant: tau = 1
    psi_lr = 1.0
    total, by_axis = granulated_kendall(x, y, {"lr": lr, "seed": seed, "width": width})
    assert by_axis == pytest.approx({"lr": psi_lr, "seed": psi_seed}, abs=1e-12)
    assert total == pytest.approx((psi_lr + psi_seed) / 2, abs=1e-12)
    (row,) = correlation_table({"m": x}, {"t": y}, axes={"lr": lr, "seed": seed}, n_boot=20, n_perm=20)
    assert row.granulated_kendall == pytest.approx(1 / 3, abs=1e-12)
    assert row.granulated_by_axis == pytest.approx({"lr": psi_lr, "seed": psi_seed}, abs=1e-12)


def test_granulated_kendall_skips_nan_groups_and_needs_two_axes() -> None:
    lr = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01]
    seed = [1, 2, 3, 1, 2, 3]
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    y = [1.0, 3.0, 2.0, 6.0, 5.0, 3.0]  # seed 3 pair: y 2 -> 3 concordant; lr 0.01 group: 6,5,3 -> tau = -1
    y_tie = [1.0, 3.0, 2.0, 6.0, 3.0, 2.0]  # seed 2 pair (3,3) and seed 3 pair (2,2): tau NaN, skipped
    _, by_axis = granulated_kendall(x, y_tie, {"lr": lr, "seed": seed})
    assert by_axis["lr"] == pytest.approx(1.0)  # only the seed-1 group counts
    assert granulated_kendall(x, y, {"lr": lr, "seed": [7] * 6}) == (None, {})
    # A run with a missing measure is dropped: the seed-1 pair loses a run, so no lr group has a finite tau
    # (psi_lr NaN, left out of the mean); lr 0.1 keeps x 2,3 / y 3,2 (tau -1), lr 0.01 has x 4,5,6 / y 6,3,2 (-1).
    x_nan = [np.nan, 2.0, 3.0, 4.0, 5.0, 6.0]
    total, by_axis = granulated_kendall(x_nan, y_tie, {"lr": lr, "seed": seed})
    assert total == pytest.approx(-1.0)
    assert math.isnan(by_axis["lr"]) and by_axis["seed"] == pytest.approx(-1.0)
    (row,) = correlation_table({"m": x}, {"t": y}, axes={"lr": lr}, n_boot=20, n_perm=20)
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
