"""Tests for tracking.pairs: the A-versus-B fraction against Kendall's tau and brute force, its clustered interval,
Dziugaite et al.'s sign-error on a hand example, and the claim sentence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from tracking.pairs import (
    PairAgreement,
    claim_sentence,
    claim_verdict,
    pair_agreement,
    sign_error,
)

SEED = 2024


def _normal_pair(n: int, r: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    z = rng.normal(size=(2, n))
    return z[0], r * z[0] + math.sqrt(1 - r * r) * z[1]


def _brute_force(x: list[float], y: list[float]) -> tuple[int, int, int]:
    """(agree, disagree, tied) over pairs i < j: the flatter (smaller x) run has the lower y, or the higher."""
    agree = disagree = tied = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            if x[i] == x[j] or y[i] == y[j]:
                tied += 1
            elif (x[i] < x[j]) == (y[i] < y[j]):
                agree += 1
            else:
                disagree += 1
    return agree, disagree, tied


# ----------------------------------------------------------------------------------------------------------------
# The fraction
# ----------------------------------------------------------------------------------------------------------------


def test_fraction_is_one_plus_tau_a_over_two_on_untied_data() -> None:
    x, y = _normal_pair(25, 0.4, np.random.default_rng(SEED))
    assert np.unique(x).size == 25 and np.unique(y).size == 25  # untied: scipy's tau-b is tau-a here
    tau = stats.kendalltau(x, y).statistic
    agreement = pair_agreement(x, y, n_boot=50)
    assert agreement.fraction == pytest.approx((1 + tau) / 2, abs=1e-12)
    assert (agreement.n_pairs, agreement.n_tied, agreement.n_runs) == (300, 0, 25)
    assert agreement.n_agree == _brute_force(list(x), list(y))[0]
    assert abs(tau) > 0.1  # not the trivial 1/2


def test_ties_are_left_out_and_missing_runs_dropped() -> None:
    x = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, np.nan, 6.0]
    y = [2.0, 1.0, 3.0, 3.0, 5.0, 4.0, 1.0, np.inf]
    agreement = pair_agreement(x, y, n_boot=50)
    agree, disagree, tied = _brute_force(x[:6], y[:6])
    assert (agreement.n_agree, agreement.n_pairs, agreement.n_tied) == (agree, agree + disagree, tied)
    assert agreement.fraction == pytest.approx(agree / (agree + disagree))
    assert (agreement.n_runs, agreement.n_dropped) == (6, 2)
    # With ties, the fraction is C / (C + D), not (1 + tau_a) / 2, which counts tied pairs as half right.
    tau_a = (agree - disagree) / 15
    assert agreement.fraction != pytest.approx((1 + tau_a) / 2)


# ----------------------------------------------------------------------------------------------------------------
# The interval
# ----------------------------------------------------------------------------------------------------------------


def test_cluster_bootstrap_matches_a_slow_resampling_of_runs() -> None:
    rng = np.random.default_rng(7)
    x, y = _normal_pair(12, 0.3, rng)
    x[3] = x[4]  # a tie in x: its pair never counts, in any resample
    n_boot, seed = 200, 5
    agreement = pair_agreement(x, y, n_boot=n_boot, alpha=0.1, seed=seed)
    draws = np.random.default_rng(seed).integers(0, 12, size=(n_boot, 12))
    fractions = []
    for idx in draws:
        agree, disagree, _ = _brute_force(list(x[idx]), list(y[idx]))  # all pairs of positions of the resample
        if agree + disagree:
            fractions.append(agree / (agree + disagree))
    low, high = np.quantile(fractions, [0.05, 0.95])
    assert agreement.ci_method == "cluster_bootstrap"
    assert (agreement.ci_low, agreement.ci_high) == pytest.approx((low, high), abs=1e-12)


def test_interval_covers_and_a_pairs_as_independent_interval_does_not() -> None:
    rng = np.random.default_rng(11)
    n, r, sims = 30, 0.5, 200
    truth = 0.5 + math.asin(r) / math.pi  # P(concordant) for a normal pair: (1 + tau) / 2, tau = 2 asin(r) / pi
    hits = naive_hits = 0
    for s in range(sims):
        x, y = _normal_pair(n, r, rng)
        agreement = pair_agreement(x, y, n_boot=400, seed=s)
        hits += agreement.ci_low <= truth <= agreement.ci_high
        naive = stats.binomtest(agreement.n_agree, agreement.n_pairs).proportion_ci(0.95)
        naive_hits += naive.low <= truth <= naive.high
    assert 0.88 <= hits / sims <= 0.995
    assert naive_hits / sims < 0.8  # 435 pairs of 30 runs are not 435 independent comparisons


def test_same_seed_same_numbers_other_seed_other_interval() -> None:
    x, y = _normal_pair(20, 0.3, np.random.default_rng(1))
    assert pair_agreement(x, y, n_boot=300, seed=3) == pair_agreement(x, y, n_boot=300, seed=3)
    assert pair_agreement(x, y, n_boot=300, seed=3).ci_low != pair_agreement(x, y, n_boot=300, seed=4).ci_low


def test_perfect_agreement_falls_back_to_disjoint_pairs() -> None:
    x = np.arange(20.0)
    agreement = pair_agreement(x, np.exp(x / 4), n_boot=100)  # every pair agrees: every resample gives 1
    assert (agreement.fraction, agreement.ci_method, agreement.ci_high) == (1.0, "disjoint_pairs", 1.0)
    assert agreement.ci_low == pytest.approx(0.025 ** (1 / 10), abs=1e-12)  # Clopper-Pearson, 10 of 10
    assert claim_verdict(agreement) == "supports"
    reversed_ = pair_agreement(x, -x, n_boot=100)
    assert (reversed_.fraction, reversed_.ci_low) == (0.0, 0.0)
    assert reversed_.ci_high == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12)
    assert claim_verdict(reversed_) == "refutes"
    few = pair_agreement(x[:6], x[:6], n_boot=100)  # 6 runs, 15 pairs, all agreeing: only 3 independent pairs
    assert few.ci_method == "disjoint_pairs" and few.ci_low < 0.5 and claim_verdict(few) == "cannot tell"


def test_no_untied_pair_is_undefined() -> None:
    agreement = pair_agreement([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], n_boot=10)
    assert math.isnan(agreement.fraction) and math.isnan(agreement.ci_low) and agreement.ci_method == "undefined"
    assert agreement.n_tied == 3
    assert json.loads(json.dumps(agreement.to_dict(), allow_nan=False))["fraction"] is None
    assert claim_verdict(agreement) == "cannot tell"
    assert claim_sentence(agreement, measure="m").startswith("No pair of runs differs in both m and test loss")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pair_agreement([1.0, 2.0], [1.0, 2.0, 3.0]), r"same length, got 2 and 3"),
        (lambda: pair_agreement(np.zeros((3, 2)), np.zeros((3, 2))), r"to be 1-D"),
        (lambda: pair_agreement([1.0, np.nan], [1.0, 2.0]), r"at least 2 runs with finite `x` and `y`.*got 1"),
        (lambda: pair_agreement([1.0, 2.0], [1.0, 2.0], n_boot=0), r"Expected `n_boot` >= 1, got 0"),
        (lambda: pair_agreement([1.0, 2.0], [1.0, 2.0], alpha=0.0), r"Expected 0 < `alpha` < 1, got 0.0"),
        (lambda: sign_error([1.0], [1.0]), r"at least 2 runs"),
        (lambda: sign_error([1.0, 2.0], [1.0, 2.0], {"lr": [1, 2, 3]}), r"`axes\['lr'\]` to have length 2, got 3"),
        (lambda: sign_error([1.0, 2.0], [1.0, 2.0], quantile=1.5), r"Expected `quantile` in \[0, 1\], got 1.5"),
        (lambda: sign_error([1.0, 2.0], [1.0, 2.0], tolerance=-1.0), r"Expected `tolerance` >= 0, got -1.0"),
    ],
)
def test_bad_input_raises(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------------------------------------------
# Sign-error
# ----------------------------------------------------------------------------------------------------------------


def test_sign_error_without_axes_is_one_environment_of_all_pairs() -> None:
    x = [1.0, 2.0, 3.0, 3.0, 5.0]
    y = [1.0, 3.0, 2.0, 4.0, 4.0]
    # Pairs i < j (1-based): err 0 when x and y move together, 1 when they move apart, 1/2 when x is tied; a pair
    # tied in y does not count. 12: 0, 13: 0, 14: 0, 15: 0, 23: 1 (x 2 -> 3, y 3 -> 2), 24: 0, 25: 0,
    # 34: 1/2 (x tied), 35: 0, 45: out (y tied). Mean over the 9 pairs that count: 1.5 / 9.
    result = sign_error(x, y)
    assert result.n_environments == 1 and result.environments[0].axis is None
    assert result.environments[0].n_pairs == 9
    assert result.mean == result.worst == result.quantile == pytest.approx(1.5 / 9)
    # On untied data it is one minus the A-versus-B fraction; a seed-only "axis" changes nothing.
    xs, ys = _normal_pair(15, 0.2, np.random.default_rng(3))
    seeds = np.arange(15)
    assert sign_error(xs, ys, {"seed": seeds}).mean == pytest.approx(1 - pair_agreement(xs, ys, n_boot=10).fraction)


GRID = {
    # lr in {0.1, 0.01} x bs in {32, 128}, two seeds per point (8 runs)
    "lr": [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01],
    "bs": [32, 32, 128, 128, 32, 32, 128, 128],
    "seed": [1, 2, 1, 2, 1, 2, 1, 2],
    "x": [1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 0.0, 7.0],
    "y": [1.0, 3.0, 2.0, 9.0, 4.0, 2.0, 8.0, 5.0],
}
# Environments (4 run pairs each, one from each point; err = 1 when the sharper run has the lower y):
#   lr at bs 32:   runs {0,1} vs {4,5}: (1,1)-(3,4) 0, (1,1)-(4,2) 0, (2,3)-(3,4) 0, (2,3)-(4,2) 1      -> 1/4
#   lr at bs 128:  runs {2,3} vs {6,7}: (5,2)-(0,8) 1, (5,2)-(7,5) 0, (6,9)-(0,8) 0, (6,9)-(7,5) 1      -> 1/2
#   bs at lr 0.1:  runs {0,1} vs {2,3}: (1,1)-(5,2) 0, (1,1)-(6,9) 0, (2,3)-(5,2) 1, (2,3)-(6,9) 0      -> 1/4
#   bs at lr 0.01: runs {4,5} vs {6,7}: (3,4)-(0,8) 1, (3,4)-(7,5) 0, (4,2)-(0,8) 1, (4,2)-(7,5) 0      -> 1/2
# Pairs of seeds at one point, and the diagonal pairs (both axes differ), are never compared.
GRID_ERRORS = [0.25, 0.5, 0.25, 0.5]


def test_sign_error_environments_differ_in_exactly_one_axis() -> None:
    axes = {k: GRID[k] for k in ("lr", "bs", "seed")}
    result = sign_error(GRID["x"], GRID["y"], axes)
    assert [e.sign_error for e in result.environments] == pytest.approx(GRID_ERRORS)
    assert [(e.axis, e.values, e.fixed) for e in result.environments] == [
        ("lr", (0.1, 0.01), {"bs": 32}),
        ("lr", (0.1, 0.01), {"bs": 128}),
        ("bs", (32, 128), {"lr": 0.1}),
        ("bs", (32, 128), {"lr": 0.01}),
    ]
    assert all(e.n_pairs == 4 for e in result.environments)
    assert (result.mean, result.worst) == pytest.approx((0.375, 0.5))
    assert result.quantile == pytest.approx(np.quantile(GRID_ERRORS, 0.9))
    assert result.by_axis == {
        "lr": {"mean": 0.375, "worst": 0.5, "n_environments": 2},
        "bs": {"mean": 0.375, "worst": 0.5, "n_environments": 2},
    }
    # All 28 pairs as one environment would give another number: the axes matter.
    assert sign_error(GRID["x"], GRID["y"]).mean != pytest.approx(result.mean)
    json.dumps(result.to_dict(), allow_nan=False)


def test_sign_error_tolerance_and_no_pair() -> None:
    x = [1.0, 2.0, 3.0]
    y = [1.0, 1.05, 0.0]  # pair (1, 2) is right by 0.05, the other two are wrong
    assert sign_error(x, y).mean == pytest.approx(2 / 3)
    assert sign_error(x, y, tolerance=0.1).mean == pytest.approx(1.0)  # the near-tie no longer counts
    empty = sign_error(x, [1.0, 1.0, 1.0])
    assert empty.n_environments == 0 and math.isnan(empty.worst) and empty.environments == ()


# ----------------------------------------------------------------------------------------------------------------
# The claim
# ----------------------------------------------------------------------------------------------------------------


def _agreement(fraction: float, low: float, high: float) -> PairAgreement:
    return PairAgreement(fraction, low, high, "cluster_bootstrap", 0.05, 20, 0, 190, round(190 * fraction), 0)


def test_claim_sentence_supports_refutes_or_cannot_tell() -> None:
    assert claim_sentence(_agreement(0.71, 0.62, 0.80), measure="lambda_max") == (
        "In 71% [62%, 80%] of 190 pairs the flatter model (smaller lambda_max) has the lower test loss: "
        "the population supports the paper's A-versus-B claim."
    )
    refuted = claim_sentence(_agreement(0.3, 0.2, 0.41), target="test error")
    assert refuted.startswith("In 30% [20%, 41%] of 190 pairs the flatter model has the lower test error: ")
    assert refuted.endswith(
        "the population refutes the paper's A-versus-B claim (the sharper model does better more often)."
    )
    assert claim_sentence(_agreement(0.55, 0.45, 0.65)).endswith("cannot tell (the interval contains 50%).")
    # An end that rounds to 50% without being on it keeps a decimal, so the words and the numbers agree.
    assert "[50.2%, 70%]" in claim_sentence(_agreement(0.6, 0.502, 0.7))
    assert [claim_verdict(_agreement(0.6, low, low + 0.2)) for low in (0.5, 0.501, 0.29)] == [
        "cannot tell",
        "supports",
        "refutes",
    ]
