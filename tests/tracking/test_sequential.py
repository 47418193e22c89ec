"""The group-sequential design of tracking.sequential against closed forms, gsDesign's published bounds, a Monte Carlo
of the canonical joint normal, whole sweeps simulated on real Spearman data, and hand-built monitor scenarios."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tracking.population_stats import partial_spearman
from tracking.sequential import (
    SequentialDesign,
    _spearman,
    crossing_probabilities,
    fisher_z,
    fixed_n,
    make_design,
    monitor,
    repeated_ci,
    simulate,
)


@pytest.fixture(scope="module")
def design() -> SequentialDesign:
    """The default design: looks 20, 30, ..., sized for 80% power at rho = 0.3, one-sided 0.025 (cap 110)."""
    return make_design()


def _first_crossings(z: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of the rows of z (draws x looks) first leaving (lower, upper) above / below at each look."""
    alive = np.ones(z.shape[0], bool)
    up, down = np.zeros(z.shape[1]), np.zeros(z.shape[1])
    for k in range(z.shape[1]):
        hit_up, hit_down = alive & (z[:, k] >= upper[k]), alive & (z[:, k] < lower[k])
        up[k], down[k] = hit_up.mean(), hit_down.mean()
        alive &= ~(hit_up | hit_down)
    return up, down


def _canonical(info: np.ndarray, theta: float, draws: int, seed: int) -> np.ndarray:
    """Z_k = S_k / sqrt(I_k), S a sum of independent N(theta dI, dI) increments: Cov(Z_j, Z_k) = sqrt(I_j / I_k)."""
    rng = np.random.default_rng(seed)
    steps = np.diff(info, prepend=0.0)
    score = np.cumsum(theta * steps + np.sqrt(steps) * rng.standard_normal((draws, info.size)), axis=1)
    return score / np.sqrt(info)


# 1 ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.025, 0.00625])
def test_one_look_is_the_fixed_one_sided_test(level: float) -> None:
    bounds = SequentialDesign((50,), planned_rho=0.3).boundaries(level)
    assert bounds.efficacy[0] == pytest.approx(stats.norm.isf(level), abs=1e-12)
    assert bounds.futility[0] == bounds.efficacy[0]
    assert bounds.alpha_spent[0] == level
    # and fisher_z is atanh(rho) sqrt((n - 3 - q) / 1.06)
    assert fisher_z(0.3, 50, 1) == pytest.approx(math.atanh(0.3) * math.sqrt(46 / 1.06), rel=1e-14)


# 2 ------------------------------------------------------------------------------------------------------------------


def test_gsdesign_obrien_fleming_lan_demets_reference_bounds() -> None:
    # gsDesign::gsDesign(k = 3, test.type = 4, alpha = 0.025, sfu = sfLDOF): 3.7103, 2.5114, 1.9930 at equally
    # spaced information; n = 21, 39, 57 give I = 18, 36, 54 (/ 1.06)
    design = SequentialDesign((21, 39, 57))
    bounds = design.boundaries(0.025)
    np.testing.assert_allclose(bounds.efficacy, [3.7103, 2.5114, 1.9930], atol=0.01)
    assert abs(bounds.efficacy - [3.7103, 2.5114, 1.9930]).max() < 5e-4  # gsDesign's printed digits
    np.testing.assert_allclose(np.diff(design.information(), prepend=0.0), 18 / 1.06, rtol=1e-12)


def test_integration_matches_a_monte_carlo_of_the_canonical_joint_normal(design: SequentialDesign) -> None:
    info, draws = design.information(), 200_000
    bounds = design.boundaries(0.025)
    # efficacy alone under H0 (non-binding futility): the cumulative alpha spent
    up, _ = _first_crossings(_canonical(info, 0.0, draws, seed=1), bounds.efficacy, np.full(info.size, -np.inf))
    cumulative = np.cumsum(up)
    se = np.sqrt(bounds.alpha_spent * (1 - bounds.alpha_spent) / draws)
    assert np.all(np.abs(cumulative - bounds.alpha_spent) <= 3 * se), (cumulative, bounds.alpha_spent)
    # under the planned effect, with futility obeyed: per-look probabilities of crossing_probabilities
    theta = math.atanh(design.planned_rho)
    up, down = _first_crossings(_canonical(info, theta, draws, seed=2), bounds.efficacy, bounds.futility)
    exact = crossing_probabilities(design, 0.025, design.planned_rho)
    for mc, p in [(up, exact["efficacy"]), (down, exact["futility"])]:
        assert np.all(np.abs(mc - p) <= 3 * np.sqrt(p * (1 - p) / draws) + 1e-5), (mc, p)
    # the beta spent: futility exits up to the next-to-last look follow the O'Brien-Fleming-type beta spending
    beta = 1 - design.power
    t = info / info[-1]
    spent = 2 * stats.norm.sf(stats.norm.isf(beta / 2) / np.sqrt(t[:-1]))
    np.testing.assert_allclose(np.cumsum(exact["futility"][:-1]), spent, atol=1e-6)
    assert exact["efficacy"].sum() + exact["futility"].sum() == pytest.approx(1.0, abs=1e-6)


# 3 ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family_size", [2, 4])
def test_family_wise_type_one_error_under_the_null(design: SequentialDesign, family_size: int) -> None:
    result = simulate(design, 0.0, family_size, sequences=2000, seed=3)
    # measured with seed 3: 0.0215 (2 hypotheses) and 0.0135 (4 hypotheses); without Holm (each at 0.025) it is
    # about 0.04 and 0.08
    assert result.fwer <= design.alpha / 2 + 2 * result.fwer_se, result.fwer


# 4 ------------------------------------------------------------------------------------------------------------------


def test_a_strong_effect_stops_early(design: SequentialDesign) -> None:
    result = simulate(design, 0.7, sequences=2000, seed=4)
    share = np.cumsum(result.stop_looks) / result.sequences
    # O'Brien-Fleming spends almost nothing at the first look (t = 0.16, c_1 = 5.5): rho = 0.7 crosses there in
    # 2.5% of the sweeps (measured; a Pocock-type bound would stop most there); by n = 40 (look 3) 92.7% have stopped
    assert share[0] < 0.1
    assert share[2] > 0.8
    assert result.rejection_rate[0] > 0.99
    assert result.mean_n < 0.4 * design.looks[-1]  # measured 35.4 of 110 (SE 0.15)
    exact = crossing_probabilities(design, 0.025, 0.7)["expected_n"]  # 35.3 by the normal approximation
    assert abs(result.mean_n - exact) < 4 * result.mean_n_se


# 5 ------------------------------------------------------------------------------------------------------------------


def test_the_null_stops_for_futility_before_the_cap(design: SequentialDesign) -> None:
    result = simulate(design, 0.0, sequences=2000, seed=5)
    # measured: 97.7% stop for futility before the cap (numerical integration: 97.2%), mean n 50.3 of 110
    assert result.futility_rate[0] > 0.85
    assert result.early_stop_rate > 0.85
    assert result.mean_n < 0.6 * design.looks[-1]
    exact = crossing_probabilities(design, 0.025, 0.0)
    assert result.futility_rate[0] == pytest.approx(exact["futility"][:-1].sum(), abs=4 * result.futility_se[0])


# 6 ------------------------------------------------------------------------------------------------------------------


def test_power_at_the_planned_effect(design: SequentialDesign) -> None:
    # sizing: the smallest cap on the grid with power >= 0.8; one step less falls short
    assert design.looks == tuple(range(20, design.looks[-1] + 1, 10))
    assert crossing_probabilities(design, 0.025, 0.3)["power"] >= 0.8
    shorter = make_design(max_n=design.looks[-1] - 10)
    assert crossing_probabilities(shorter, 0.025, 0.3)["power"] < 0.8
    assert design.looks[-1] >= fixed_n(0.3, 0.025, 0.8) == 90
    result = simulate(design, 0.3, sequences=2000, seed=6)
    assert result.rejection_rate[0] >= design.power - 2 * result.rejection_se[0]  # measured 0.8045 (SE 0.009)
    assert result.mean_n < fixed_n(0.3, 0.025, 0.8)  # measured 73.7 against the fixed design's 90


# 7 ------------------------------------------------------------------------------------------------------------------


def _rho(z: float, n: int) -> float:
    return math.tanh(z / math.sqrt((n - 3) / 1.06))


def test_monitor_recycles_a_rejected_hypothesis_level() -> None:
    design = SequentialDesign((20, 30, 40))
    half, full = design.boundaries(0.0125), design.boundaries(0.025)
    assert full.efficacy[0] < half.efficacy[0]
    between = _rho((full.efficacy[0] + half.efficacy[0]) / 2, 20)
    clear = _rho(half.efficacy[0] + 0.5, 20)

    def decisions(rho_a: float) -> dict[str, tuple[str, float]]:
        look = monitor(design, [{"A": (rho_a, 20, 0), "B": (between, 20, 0)}], ["A", "B"])[0]
        return {h.name: (h.decision, h.level) for h in look.hypotheses}

    # A clearly rejected: B is re-tested at A's recycled level 0.025 and rejected at the same look
    assert decisions(clear) == {"A": ("reject", 0.0125), "B": ("reject", 0.025)}
    # A open: B stays at 0.0125 and continues
    assert decisions(0.1) == {"A": ("continue", 0.0125), "B": ("continue", 0.0125)}
    # A stopped for futility keeps its share unused
    assert decisions(-0.9) == {"A": ("futility", 0.0125), "B": ("continue", 0.0125)}

    # across looks: A rejected at look 1, B between the two levels' bounds at look 2 is rejected there
    b2 = _rho((full.efficacy[1] + half.efficacy[1]) / 2, 30)
    stats2 = [{"A": (clear, 20, 0), "B": (0.1, 20, 0)}, {"B": (b2, 30, 0)}]
    looks = monitor(design, stats2, ["A", "B"])
    assert [h.decision for h in looks[0].hypotheses] == ["reject", "continue"]
    assert looks[0].hypotheses[1].level == 0.025  # already recycled at look 1
    assert [h.decision for h in looks[1].hypotheses] == ["reject", "reject"]
    assert looks[1].stop and looks[1].reason == "every primary hypothesis decided at look 2 (n = 30)"
    no_a = monitor(design, [{"A": (0.1, 20, 0), "B": (0.1, 20, 0)}, {"A": (0.1, 30, 0), "B": (b2, 30, 0)}], ["A", "B"])
    assert [h.decision for h in no_a[1].hypotheses] == ["continue", "continue"]


def test_monitor_replays_deterministically_and_keeps_decisions() -> None:
    design = SequentialDesign((20, 30, 40))
    stats_ = [
        {"A": (0.9, 20, 0), "B": (-0.8, 20, 0), "C": (0.2, 20, 0)},
        {"A": (-0.9, 30, 0), "B": (0.99, 30, 0), "C": (0.25, 30, 0)},  # A and B are decided: these are not read
        {"C": (0.3, 40, 0)},
    ]
    looks = monitor(design, stats_, ["A", "B", "C"])
    assert [[h.to_dict() for h in look.hypotheses] for look in looks] == [
        [h.to_dict() for h in look.hypotheses] for look in monitor(design, stats_, ["A", "B", "C"])
    ]
    assert monitor(design, stats_[:2], ["A", "B", "C"]) == looks[:2]  # a resumed sweep recomputes the same looks
    decisions = [[h.decision for h in look.hypotheses] for look in looks]
    assert decisions[0] == ["reject", "futility", "continue"]
    assert decisions[1][:2] == ["reject", "futility"] and looks[1].hypotheses[0].rho == 0.9  # kept from look 1
    # at the cap the open one is decided (rho 0.3 on 40 runs: z = 1.83 < c_3 = 2.28): not supported
    assert decisions[2] == ["reject", "futility", "futility"]
    assert looks[2].stop and looks[2].reason.startswith("cap reached at look 3 (n = 40)")
    assert not looks[0].stop and looks[0].to_dict()["hypotheses"][0]["rci"][0] > 0
    # with the planned n, monitor's bounds are the design's (levels 0.025/3 then 0.025/2 after A's rejection)
    assert looks[0].hypotheses[2].efficacy == design.boundaries(0.025 / 2).efficacy[0]
    assert looks[1].hypotheses[2].futility == design.boundaries(0.025 / 2).futility[1]
    # an n off the plan (a measure missing on 2 runs): bounds at the observed information fraction, less spent
    off = monitor(design, [{"A": (0.1, 18, 0), "B": (0.1, 20, 0), "C": (0.1, 20, 0)}], ["A", "B", "C"])[0]
    assert off.hypotheses[0].efficacy > off.hypotheses[1].efficacy == design.boundaries(0.025 / 3).efficacy[0]
    with pytest.raises(ValueError, match="no entry for the open hypothesis 'C'"):
        monitor(design, [stats_[0], {"A": (0.1, 30, 0)}], ["A", "B", "C"])
    with pytest.raises(ValueError, match="larger than at the previous look"):
        monitor(design, [stats_[0], {"C": (0.1, 20, 0)}], ["A", "B", "C"])


# 8 ------------------------------------------------------------------------------------------------------------------


def test_repeated_ci_by_hand() -> None:
    # rho 0.4 on 50 runs given 1 covariate, c = 2.5: I = 46 / 1.06 = 43.3962, c / sqrt(I) = 0.37950,
    # atanh(0.4) = 0.42365: tanh(0.04415) = 0.04412, tanh(0.80315) = 0.66579
    lo, hi = repeated_ci(0.4, 50, 2.5, covariates=1)
    assert lo == pytest.approx(0.04412, abs=1e-5) and hi == pytest.approx(0.66579, abs=1e-5)
    # duality with the test: the interval excludes 0 exactly when z >= c
    for rho in (0.3, 0.35, 0.4):
        assert (repeated_ci(rho, 60, 2.5)[0] > 0) == (fisher_z(rho, 60) >= 2.5)
    assert repeated_ci(0.4, 50, math.inf) == (-1.0, 1.0)


# the pieces -----------------------------------------------------------------------------------------------------------


def test_simulated_spearman_matches_scipy_and_partial_spearman() -> None:
    rng = np.random.default_rng(7)
    x, y, w = rng.standard_normal((3, 2, 25))
    raw = _spearman(x, y, None)
    partial = _spearman(x, y, w[:, None, :])
    for i in range(2):
        assert raw[i] == pytest.approx(stats.spearmanr(x[i], y[i]).statistic, abs=1e-12)
        assert partial[i] == pytest.approx(partial_spearman(x[i], y[i], w[i])[0], abs=1e-10)


def test_make_design_and_validation() -> None:
    assert make_design(20, 10, 45).looks == (20, 30, 40, 45)
    sized = make_design(family_size=4)
    assert sized.looks[-1] == 150 and fixed_n(0.3, 0.025 / 4, 0.8) == 127
    assert crossing_probabilities(sized, 0.025 / 4, 0.3)["power"] >= 0.8
    with pytest.raises(ValueError, match=r"Expected `planned_rho` in \(0, 1\), got 1.5"):
        SequentialDesign((20, 30), planned_rho=1.5)
    with pytest.raises(ValueError, match="strictly increasing"):
        SequentialDesign((20, 20))
    with pytest.raises(ValueError, match="first look >= 8"):
        SequentialDesign((5, 20))
    with pytest.raises(ValueError, match=r"Expected `level` in \(0, 0.5\)"):
        SequentialDesign((20,)).boundaries(0.7)
