"""The analysis plan (declared primary hypotheses), the two families' corrections, and measured reliability.

References: Holm's and Benjamini-Hochberg's error rates by simulation under nulls (2,000 populations each), scipy's
``false_discovery_control`` for the q-values, hand computations for reliability and disattenuation, and a real MLflow
store for the plan's round trip.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from rich.console import Console
from scipy import stats

from landscape_core import keys
from landscape_core.errors import UsageError
from tracking.correlation import analyze, decided_tests
from tracking.plan import AnalysisPlan, Hypothesis, SequentialPlan, log_plan, parse_primary, read_plan
from tracking.population import Population, PopulationRun, load_population
from tracking.population_stats import benjamini_hochberg, holm
from tracking.reliability import disattenuate, reliabilities, retest_key, retest_reliability
from tracking.render import render, render_text
from tracking.runs import RunLogger
from tracking.store import TrackingStore

SIMULATIONS = 2000


# --------------------------------------------------------------------------------------------------- the plan


def test_default_plan_is_the_papers_claim_and_an_invariant_measure_each_raw_and_given_train_loss():
    plan = AnalysisPlan()
    assert [h.name for h in plan.hypotheses] == ["hessian/lambda_max:test_loss", "sharpness/adaptive_linf:test_loss"]
    assert [t.name for t in plan.tests] == [
        "hessian/lambda_max:test_loss",
        "hessian/lambda_max:test_loss|train_loss",
        "sharpness/adaptive_linf:test_loss",
        "sharpness/adaptive_linf:test_loss|train_loss",
    ]
    assert plan.is_primary(keys.LAMBDA_MAX, "test_loss") and not plan.is_primary(keys.LAMBDA_MAX, "test_error")


def test_primary_option_parses_short_names_targets_and_direction():
    parsed = parse_primary("lambda_max, adaptive:test_error,-norm/weights:gap_loss")
    assert parsed == (
        Hypothesis(keys.LAMBDA_MAX, "test_loss"),
        Hypothesis(keys.ADAPTIVE_SHARPNESS, "test_error"),
        Hypothesis(keys.WEIGHT_NORM, "gap_loss", -1),
    )
    assert parse_primary(None) == AnalysisPlan().hypotheses
    for bad, message in (
        ("nope", "unknown measure 'nope'"),
        ("lambda_max:accuracy", "unknown target 'accuracy'"),
        ("lambda_max,,trace", "without empty items"),
        ("lambda_max,hessian/lambda_max", "distinct"),
    ):
        with pytest.raises(UsageError, match=message):
            parse_primary(bad)


def test_sequential_plan_looks_end_at_the_cap_and_bad_values_are_usage_errors():
    assert SequentialPlan(first=20, step=10, max_n=55).looks == (20, 30, 40, 50, 55)
    assert SequentialPlan(first=20, step=10, max_n=20).looks == (20,)
    with pytest.raises(UsageError, match="max-n"):
        SequentialPlan(first=20, max_n=10)
    with pytest.raises(UsageError, match="planned-rho"):
        SequentialPlan(planned_rho=1.2)


def test_the_plan_round_trips_through_the_parent_run_and_an_undeclared_one_is_post_hoc(tmp_path):
    store = TrackingStore.resolve(None, str(tmp_path / "mlruns"))
    client = store.client()
    experiment_id = store.experiment_id("plan")
    declared_run = client.create_run(experiment_id).info.run_id
    bare_run = client.create_run(experiment_id).info.run_id
    plan = AnalysisPlan(hypotheses=parse_primary("trace:test_error"), sequential=SequentialPlan(max_n=60)).declared()
    log_plan(RunLogger(client, declared_run), plan)
    back = read_plan(client, declared_run)
    assert back == plan and back.declared_in_advance and back.declared_at.endswith("Z")
    assert client.get_run(declared_run).data.tags["analysis_plan"].startswith(f"declared {plan.declared_at}")
    assert read_plan(client, bare_run) == AnalysisPlan().post_hoc() == read_plan(client, None)
    assert "NOT declared in advance" in read_plan(client, bare_run).summary()


# ------------------------------------------------------------------------------------- the two families' errors


def _spearman_p(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided asymptotic p of Spearman's rho along the last axis (vectorized over simulations)."""
    rx, ry = stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1)
    rx = rx - rx.mean(-1, keepdims=True)
    ry = ry - ry.mean(-1, keepdims=True)
    rho = (rx * ry).sum(-1) / np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))
    n = x.shape[-1]
    t = rho * np.sqrt((n - 2) / np.clip(1 - rho**2, 1e-12, None))
    return 2 * stats.t.sf(np.abs(t), n - 2)


def test_benjamini_hochberg_matches_scipy_and_keeps_nan_out_of_the_family():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=30) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p), rtol=1e-12)
    with_nan = np.concatenate([p[:5], [np.nan]])
    q = benjamini_hochberg(with_nan)
    assert math.isnan(q[-1])
    np.testing.assert_allclose(q[:5], stats.false_discovery_control(p[:5]), rtol=1e-12)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        benjamini_hochberg([0.2, 1.5])


def test_under_nulls_the_primary_familys_fwer_and_the_exploratory_fdr_stay_at_alpha():
    """2,000 populations of 20 runs. Primary: 2 measures vs test loss, each raw and given train loss, Holm over the
    4 tests; no effect anywhere, so any rejection is a family-wise error. Exploratory: 60 rows of which 20 carry a
    real effect (rho about 0.7); BH at 0.05; the false discovery proportion's mean must stay at or below 0.05."""
    rng = np.random.default_rng(1)
    n, alpha = 20, 0.05
    target = rng.normal(size=(SIMULATIONS, n))
    train_loss = rng.normal(size=(SIMULATIONS, n))
    measures = rng.normal(size=(SIMULATIONS, 2, n))
    raw = _spearman_p(measures, target[:, None, :])
    cov = train_loss[:, None, :]

    def residual(v: np.ndarray) -> np.ndarray:  # on the covariate (all normal here, so linear residuals)
        return v - cov * (v * cov).sum(-1, keepdims=True) / (cov**2).sum(-1, keepdims=True)

    partial = _spearman_p(residual(measures), residual(np.repeat(target[:, None, :], 2, axis=1)))
    p = np.concatenate([raw, partial], axis=1)  # (simulations, 4)
    rejected = np.array([holm(row) < alpha for row in p])
    fwer = rejected.any(axis=1).mean()
    se = math.sqrt(alpha * (1 - alpha) / SIMULATIONS)
    assert fwer <= alpha + 2 * se, fwer
    # uncorrected, the same family errs far more often: the test can fail
    assert (p < alpha).any(axis=1).mean() > 2 * alpha

    true_effects, nulls = 20, 40
    effect = target[:, None, :] + rng.normal(size=(SIMULATIONS, true_effects, n))
    noise = rng.normal(size=(SIMULATIONS, nulls, n))
    p_explore = np.concatenate([_spearman_p(effect, target[:, None, :]), _spearman_p(noise, target[:, None, :])], 1)
    fdp = []
    for row in p_explore:
        found = benjamini_hochberg(row) < alpha
        fdp.append(found[true_effects:].sum() / max(found.sum(), 1))
    fdr = float(np.mean(fdp))
    assert fdr <= alpha + 2 * np.std(fdp) / math.sqrt(SIMULATIONS), fdr
    uncorrected = np.mean([(r[true_effects:] < alpha).sum() / max((r < alpha).sum(), 1) for r in p_explore])
    assert uncorrected > alpha  # without BH the proportion is well above alpha: the test can fail


def test_analyze_adjusts_primary_rows_over_the_plan_and_exploratory_rows_by_bh(planted):
    population = load_population(planted.store, study="lr-test")
    plan = AnalysisPlan(hypotheses=parse_primary("lambda_max,norm/weights"))
    report = analyze(population, n_boot=50, plan=plan)
    rows = {(e.measure, e.target): e for e in report.entries}
    lam, norm = rows[(keys.LAMBDA_MAX, "test_loss")].row, rows[(keys.WEIGHT_NORM, "test_loss")].row
    by_hand = holm([lam.verdict_p, lam.partial_p, norm.verdict_p, norm.partial_p])
    assert rows[(keys.LAMBDA_MAX, "test_loss")].adjusted_p == pytest.approx(by_hand[0])
    assert rows[(keys.WEIGHT_NORM, "test_loss")].adjusted_p == pytest.approx(by_hand[2])
    # the train-loss control is a confound in no family: BH runs over every other non-primary row
    exploratory = [e for e in report.entries if not e.primary and e.measure != keys.CONTROL]
    q = benjamini_hochberg([e.row.verdict_p for e in exploratory])
    np.testing.assert_allclose([e.adjusted_p for e in exploratory], q)
    assert all(e.verdict.startswith("exploratory") for e in exploratory)
    control = report.entry(keys.CONTROL, "test_loss")
    assert control.family == "control" and control.verdict.startswith("control") and math.isnan(control.adjusted_p)
    verdicts = {p.hypothesis.measure: p.verdict for p in report.primary}
    # lambda_max is planted to hold beyond train loss; the weight norm is planted as a train-loss confound
    assert verdicts == {keys.LAMBDA_MAX: "supported", keys.WEIGHT_NORM: "contradicted"} or verdicts[
        keys.WEIGHT_NORM
    ].startswith(("not beyond", "contradicted"))
    assert verdicts[keys.LAMBDA_MAX] == "supported"


# ----------------------------------------------------------------------------------------------- reliability


def test_test_retest_reliability_and_variance_ratio_match_a_hand_computation():
    first = np.array([1.0, 2.0, 3.0, 4.0, 5.0, np.nan])
    second = np.array([1.5, 1.8, 3.5, 3.9, 6.0, 2.0])
    r = retest_reliability("m", first, second)
    assert r.n == 5
    assert r.spearman == pytest.approx(stats.spearmanr(first[:5], second[:5]).statistic)
    a, b = first[:5], second[:5]
    within = np.mean((a - b) ** 2) / 2
    between = np.var((a + b) / 2, ddof=1)
    assert r.variance_ratio == pytest.approx(within / between)
    assert not r.low and r.ci_low - 1e-12 <= r.spearman <= r.ci_high + 1e-12
    exact = retest_reliability("m", np.arange(8.0), np.arange(8.0) ** 2)  # same ranks on every resample
    assert exact.spearman == exact.ci_low == exact.ci_high == 1.0
    noisy = retest_reliability("m", np.arange(8.0), np.array([3, 7, 1, 0, 6, 2, 5, 4.0]))
    assert noisy.low and noisy.variance_ratio > 0.5 and noisy.ci_low < 0 < noisy.ci_high  # 8 minima: wide
    assert math.isnan(retest_reliability("m", np.arange(3.0), np.arange(3.0)).spearman)  # too few minima


def test_disattenuation_is_spearmans_correction_and_undefined_without_reliability():
    assert disattenuate(0.4, 0.64) == pytest.approx(0.5)
    assert disattenuate(0.9, 0.5) == 1.0  # clipped
    assert math.isnan(disattenuate(0.4, -0.1)) and math.isnan(disattenuate(0.4, math.nan))
    assert math.isnan(disattenuate(0.1, 0.25)) and disattenuate(0.1, 0.36) == pytest.approx(0.1 / 0.6)


def test_the_report_shows_reliability_disattenuates_and_flags_low_reliability():
    rng = np.random.default_rng(3)
    n = 12
    truth = rng.normal(size=n)
    loss = truth + 0.3 * rng.normal(size=n)
    runs = []
    for i in range(n):
        metrics = {
            keys.LAMBDA_MAX: truth[i] + 0.05 * rng.normal(),
            keys.TRACE: truth[i] + rng.normal(),
            keys.FINAL_TEST_LOSS: loss[i],
            keys.CONTROL: rng.normal(),
        }
        if i < 8:  # the audited minima
            metrics[retest_key(keys.LAMBDA_MAX)] = truth[i] + 0.05 * rng.normal()
            metrics[retest_key(keys.TRACE)] = rng.normal()
        runs.append(PopulationRun(f"r{i}", "s", i, i, 0.01, metrics))
    population = Population(runs, source="hand")
    rel = reliabilities(population, population.measure_keys())
    assert set(rel) == {keys.LAMBDA_MAX, keys.TRACE} and rel[keys.LAMBDA_MAX].n == 8
    report = analyze(population, targets=["test_loss"], n_boot=50, n_perm=200, reliability=rel)
    lam, trace = report.entry(keys.LAMBDA_MAX, "test_loss"), report.entry(keys.TRACE, "test_loss")
    assert lam.reliability == pytest.approx(rel[keys.LAMBDA_MAX].spearman)
    assert lam.disattenuated == pytest.approx(disattenuate(lam.row.spearman, lam.reliability))
    assert "LOW RELIABILITY" in trace.verdict and "LOW RELIABILITY" not in lam.verdict


def _look(index: int, n: int, decisions: dict[str, str]) -> dict:
    return {
        "index": index,
        "n": n,
        "stop": False,
        "reason": "",
        "hypotheses": [
            {
                "name": name,
                "rho": 0.5,
                "z": 3.0,
                "efficacy": 2.5,
                "futility": 0.5,
                "level": 0.01,
                "decision": d,
                "rci": [0.1, 0.8],
            }
            for name, d in decisions.items()
        ],
    }


def test_under_a_sequential_plan_the_verdicts_are_the_looks_decisions_at_the_look_that_decided(planted):
    population = load_population(planted.store, study="lr-test")
    plan = AnalysisPlan(hypotheses=parse_primary("lambda_max,norm/weights"), sequential=SequentialPlan(max_n=30))
    names = [t.name for t in plan.tests]
    lam, lam_tl, norm, norm_tl = names
    looks = [
        _look(0, 20, {lam: "reject", lam_tl: "continue", norm: "continue", norm_tl: "continue"}),
        _look(1, 30, {lam: "reject", lam_tl: "reject", norm: "futility", norm_tl: "continue"}),
    ]
    report = analyze(population, n_boot=50, plan=plan, sequential={"looks": looks, "stopped": None})
    verdicts = {p.hypothesis.measure: (p.verdict, p.n_to_decide) for p in report.primary}
    # lambda_max's raw test was decided at n = 20 and carried on: the pair is decided at the later of its two tests
    assert verdicts[keys.LAMBDA_MAX] == ("supported", 30)
    assert verdicts[keys.WEIGHT_NORM] == ("undecided (going on)", None)
    # each test at the look that decided it: lambda_max's raw test at n = 20, though carried into the look at 30
    assert {name: h["n"] for name, h in decided_tests({"looks": looks}).items()} == {
        lam: 20,
        lam_tl: 30,
        norm: 30,
        norm_tl: 30,
    }
    first_only = analyze(population, n_boot=50, plan=plan, sequential={"looks": looks[:1]})
    assert first_only.primary[0].verdict == "undecided (going on)"
    # no look yet: an interim report decides nothing, whatever the fixed-design p-values say
    interim = analyze(population, n_boot=50, plan=plan)
    assert {p.verdict for p in interim.primary} == {"undecided (going on)"}
    assert "INTERIM: not a decision yet" in render_text(interim)


def test_the_summary_of_a_20_run_population_fits_on_one_screen():
    """Every measure of the table, the four targets, reliability on 10 minima: at most 40 lines at 120 columns."""
    rng = np.random.default_rng(5)
    n = 20
    truth = rng.normal(size=n)
    measures = [*keys.MEASURES, keys.WEIGHT_NORM, keys.DIST_INIT, "perturb/train_loss_delta/sigma_0.05"]
    runs = []
    for i in range(n):
        metrics = {key: truth[i] + rng.normal() for key in measures}
        metrics |= {key: truth[i] + rng.normal() for key in keys.TARGETS.values()}
        metrics[keys.CONTROL] = truth[i] + rng.normal()
        if i < 10:
            metrics |= {retest_key(key): metrics[key] + rng.normal() for key in measures}
        runs.append(PopulationRun(f"r{i}", "s", i, i + 1, 0.01, metrics))
    population = Population(runs, source="hand")
    report = analyze(
        population, n_boot=50, n_perm=500, reliability=reliabilities(population, population.measure_keys())
    )
    assert len(report.entries) == (len(measures) + 1) * 4
    console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
    render(report, console, full=False, where="python -m tracking.correlate --parent-run X --full")
    lines = console.export_text().splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    assert all(len(line) <= 120 for line in lines)
    text = "\n".join(lines)
    assert "Primary hypotheses" in text and "Strongest exploratory" in text and "Confound:" in text
    assert "Power:" in text and "--full" in text and "NOT declared in advance" in text
    # the full report is everything: far longer
    full = Console(record=True, width=160, file=io.StringIO(), color_system=None)
    render(report, full, full=True)
    assert len(full.export_text().splitlines()) > 200
