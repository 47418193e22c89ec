"""The correlation report over a real MLflow population: analysis (tracking.correlation), JSON, rendering
(tracking.render), CLI and end-of-sweep logging (tracking.correlate)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from landscape_core import keys
from landscape_core.cli import output_console
from landscape_core.errors import UsageError
from landscape_core.invariance import InvarianceAudit
from tracking import correlate
from tracking.correlate import main, report_sweep, scatter_measures
from tracking.correlation import CorrelationReport, analyze, power_note
from tracking.invariance import find_audit, load_invariance, log_invariance
from tracking.population import Population, PopulationRun, load_population
from tracking.population_stats import (
    CorrelationRow,
    correlation_table,
    min_detectable_rho,
    min_detectable_rho_holm,
    partial_spearman,
    within_group_spearman,
)
from tracking.render import SIMPSON_MARK, render_text
from tracking.runs import RunLogger

N_BOOT = 100  # the CI is not under test here
ROW_FIELDS = {f.name for f in dataclasses.fields(CorrelationRow)}
EXTRA_FIELDS = {
    "partial_lr_spearman",
    "partial_lr_p",
    "within_lr",
    "within_seed",
    "within_lr_mean",
    "within_seed_mean",
    "simpson",
    "simpson_axes",
    "missing",
    "min_detectable_rho",
    "verdict",
    "invariance_ratio",
    "invariant",
    "flagged",
    "family",
    "adjusted_p",
    "adjustment",
    "significant_in_family",
    "reliability",
    "disattenuated_spearman",
}


@pytest.fixture(scope="module")
def population(planted):
    return load_population(planted.store, study="lr-test")


@pytest.fixture(scope="module")
def report(population) -> CorrelationReport:
    return analyze(population, n_boot=N_BOOT)


def test_one_entry_per_measure_and_target(planted, report):
    measures = list(planted.measures)
    assert list(report.measures) == measures
    assert report.targets == keys.TARGETS
    assert [(e.measure, e.target) for e in report.entries] == [(m, t) for m in measures for t in keys.TARGETS]
    assert report.lr_varies and report.seed_varies and report.n_runs == 16


def test_planted_relation_is_found_and_holds_beyond_both_confounds(report):
    entry = report.entry("hessian/lambda_max", "test_loss")
    assert entry.row.significant and entry.row.spearman > 0.95 and entry.row.holm_p < 0.05
    assert entry.row.partial_spearman > 0.8 and entry.row.partial_p < 1e-4
    assert entry.partial_lr_spearman > 0.7 and entry.partial_lr_p < 1e-3
    assert not entry.simpson
    assert entry.primary and entry.significant  # a primary hypothesis of the default plan
    assert entry.verdict.startswith("primary: significant positive") and "holds given train loss" in entry.verdict


def test_confound_of_train_loss_vanishes_in_the_partial(report):
    entry = report.entry("norm/weights", "test_loss")
    assert entry.row.significant and entry.row.spearman > 0.7
    assert abs(entry.row.partial_spearman) < 0.3 and entry.row.partial_p > 0.5
    assert "but not beyond train loss" in entry.verdict
    assert not entry.primary and entry.verdict.startswith("exploratory: significant")


def test_independent_measure_is_not_significant(report):
    entry = report.entry("sharpness/eps", "test_loss")
    assert not entry.row.significant and not entry.significant
    assert entry.verdict.startswith("exploratory: no evidence") and "q=" in entry.verdict
    # the detectable |rho| is the one at Holm's first step over the plan's primary tests (2 hypotheses x 2 tests)
    assert entry.min_detectable_rho == pytest.approx(min_detectable_rho_holm(16, 4))


def test_simpson_pattern_is_flagged(planted, report):
    entry = report.entry("hessian/trace", "test_loss")
    assert entry.row.spearman < 0 and entry.within_lr_mean > 0.9
    assert entry.simpson and "lr" in entry.simpson_axes and "SIMPSON" in entry.verdict
    assert set(entry.within_lr) == {"0.001", "0.01", "0.03", "0.1"}
    assert all(n == len(planted.seeds) and rho == pytest.approx(1.0) for rho, n in entry.within_lr.values())


def test_confound_columns_match_the_stats_functions(population, report):
    x, y = population.column("sharpness/eps"), population.column("final/test_loss")
    entry = report.entry("sharpness/eps", "test_loss")
    tl, lr = population.column("final/train_loss"), population.lrs
    rho, p = partial_spearman(x, y, {"tl": tl, "log_lr": np.log(lr)})
    assert entry.partial_lr_spearman == pytest.approx(rho) and entry.partial_lr_p == pytest.approx(p)
    assert entry.row.partial_spearman == pytest.approx(partial_spearman(x, y, tl)[0])
    assert entry.row.spearman == pytest.approx(correlation_table({"x": x}, {"y": y}, n_boot=10)[0].spearman)
    by_seed = within_group_spearman(x, y, population.seeds)
    assert {k: v for k, v in entry.within_seed.items()} == {str(k): v for k, v in by_seed.items()}
    mean = sum(r * n for r, n in by_seed.values()) / sum(n for _, n in by_seed.values())
    assert entry.within_seed_mean == pytest.approx(mean)
    assert entry.row.granulated_kendall is not None and set(entry.row.granulated_by_axis) == {"lr"}  # seed repeats


def test_train_loss_control_has_no_partial_with_itself(report):
    for entry in report.entries:
        if entry.measure == keys.CONTROL:
            assert math.isnan(entry.row.partial_spearman) and math.isnan(entry.partial_lr_spearman)
            assert "given train loss" not in entry.verdict
        else:
            assert math.isfinite(entry.row.partial_spearman)


def test_missing_measure_is_counted_per_row(report):
    for entry in report.for_target("test_loss"):
        expected = 2 if entry.measure == "sharpness/adaptive" else 0
        assert entry.missing == expected and entry.row.n_dropped == expected and entry.row.n == 16 - expected
    assert report.missing["sharpness/adaptive"] == 2


def test_json_has_every_field_and_is_strict_json(planted, report):
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["status"] == "ok" and len(data["rows"]) == len(planted.measures) * len(keys.TARGETS)
    assert len({(r["measure"], r["target"]) for r in data["rows"]}) == len(data["rows"])
    assert all(set(r) == ROW_FIELDS | EXTRA_FIELDS for r in data["rows"])
    assert data["population"]["n_not_finished"] == {"FAILED": 1, "KILLED": 1}
    assert data["population"]["n_duplicates"] == 1 and data["population"]["n_runs"] == 16
    assert data["power"]["min_detectable_rho"] == pytest.approx(min_detectable_rho(16))
    assert data["power"]["min_detectable_rho_holm"] == pytest.approx(min_detectable_rho_holm(16, 4))
    assert data["plan"]["declared_in_advance"] is False and len(data["plan"]["tests"]) == 4
    assert [p["hypothesis"] for p in data["primary"]] == [
        "hessian/lambda_max:test_loss",
        "sharpness/adaptive_linf:test_loss",
    ]
    control = next(r for r in data["rows"] if r["measure"] == keys.CONTROL)
    assert control["partial_spearman"] is None and control["partial_lr_spearman"] is None


def test_selection_of_measures_and_targets(population):
    small = analyze(population, measures=["lambda_max", "norm/weights"], targets=["gap_acc"], n_boot=10, n_perm=50)
    assert [(e.measure, e.target) for e in small.entries] == [
        ("hessian/lambda_max", "gap_acc"),
        ("norm/weights", "gap_acc"),
    ]
    with pytest.raises(ValueError, match="unknown target 'accuracy'"):
        analyze(population, targets=["accuracy"])
    with pytest.raises(ValueError, match="unknown measure 'hessian/nope'"):
        analyze(population, measures=["hessian/nope"])


def test_bad_input_to_analyze_is_a_usage_error(population):
    with pytest.raises(UsageError, match="unknown target 'accuracy'"):
        analyze(population, targets=["accuracy"])
    with pytest.raises(UsageError, match="unknown measure 'nope'"):
        analyze(population, measures=["nope"])
    with pytest.raises(UsageError, match=r"the population \(study x\) has no finished trial runs"):
        analyze(Population(runs=[], source="study x"))


def test_too_few_runs_give_an_empty_valid_report(planted):
    few = load_population(planted.store, experiment="seeds")
    report = analyze(few)
    assert report.status == "too_few_runs" and report.entries == () and "only 3 finished runs" in report.message
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["rows"] == [] and data["population"]["n_runs"] == 3 and data["power"]["min_detectable_rho"] is None
    assert "only 3 finished runs" in render_text(report)


def test_power_note_wording():
    assert power_note(20, family_size=104) == (
        "n = 20 detects only |rho| >= 0.82 at Holm's first step over the 104 primary tests (alpha 0.05/104) with 80% "
        "power; |rho| = 0.3 needs n = 202, |rho| = 0.5 needs n = 68"
    )
    assert power_note(20, family_size=4).startswith("n = 20 detects only |rho| >= 0.69 at Holm's first step over the 4")
    assert power_note(200).startswith("n = 200 detects only |rho| >= 0.20 at alpha 0.05 with 80% power")


def test_rendered_text_shows_every_target_table_verdicts_and_power(report):
    text = render_text(report)
    for target, key in keys.TARGETS.items():
        assert f"{target} ({key}) vs each measure" in text
    assert text.count("• hessian/lambda_max:") == len(keys.TARGETS)
    assert "14 (2 miss)" in text and SIMPSON_MARK + " lr" in text
    holm = min_detectable_rho_holm(16, 4)
    assert f"Power: n = 16 detects only |rho| >= {holm:.2f} at Holm's first step over the 4 primary tests" in text
    assert "Primary hypotheses" in text and "NOT declared in advance" in text
    assert "FAILED 1, KILLED 1" in text and "1 duplicate retry dropped" in text
    assert max(len(line) for line in text.splitlines()) <= 160


def test_scatter_measures_caps_and_keeps_the_main_ones():
    many = tuple(keys.MEASURES) + (
        "perturb/train_loss_delta/sigma_0.01",
        "perturb/train_loss_delta/sigma_0.05",
        "barrier/train_loss",
        *keys.NORM_BASELINES,
        keys.CONTROL,
    )
    report = CorrelationReport(entries=(), measures=many, targets=dict(keys.TARGETS), population={})
    chosen = scatter_measures(report)
    assert len(chosen) == 8 and chosen[-1] == keys.CONTROL
    assert {"hessian/lambda_max", "hessian/trace", "sharpness/eps", "norm/weights"} <= set(chosen)
    assert chosen == [m for m in many if m in chosen]  # report order
    assert scatter_measures(dataclasses.replace(report, measures=many[:3])) == list(many[:3])


# ------------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich's width when stdout is not a terminal


def test_cli_prints_the_table_and_writes_the_json(planted, tmp_path, capsys, wide):
    out_json = tmp_path / "out" / "c.json"
    code = main(["--study", "lr-test", "--root", str(planted.root), "--json", str(out_json), "--n-boot", str(N_BOOT)])
    out = capsys.readouterr().out
    assert code == 0, out
    # the one-screen summary: plan, primary verdicts, top exploratory rows, confound, power, where the rest is
    assert "Primary hypotheses" in out and "hessian/lambda_max:test_loss" in out and "Strongest exploratory" in out
    assert "Power: n = 16 detects only" in out and "Confound: train loss alone" in out and "--full" in out
    assert "test_loss (final/test_loss) vs each measure" not in out
    data = json.loads(out_json.read_text())
    assert len(data["rows"]) == len(planted.measures) * len(keys.TARGETS)
    assert data["population"]["source"] == "study lr-test"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--study", "lr-test", "--parent-run", "abc"], "not allowed with argument"),
        (["--study", "lr-test", "--targets", "accuracy"], "unknown target 'accuracy'"),
        (["--experiment", "nope"], "no experiment named 'nope'"),
        (["--study", "no-such-study"], "no finished trial runs in study no-such-study"),
        (["--study", "lr-test", "--measures", "hessian/nope"], "unknown measure"),
        (["--log-to-parent", "--n-boot", "5", "--n-perm", "50"], "needs one parent run"),  # lr and seeds parents
        (["--study", "lr-test", "--n-boot", "0"], "Expected `--n-boot` >= 1, got 0"),
        (["--study", "lr-test", "--n-perm", "0"], "Expected `--n-perm` >= 1, got 0"),
        (["--study", "lr-test", "--alpha", "1.5"], "Expected `--alpha` in (0, 1), got 1.5"),
        (["--study", "lr-test", "--seed", "-1"], "Expected `--seed` >= 0, got -1"),
        (["--study", "lr-test", "--n-boot", "many"], "invalid int value: 'many'"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(planted, tmp_path, capsys, wide, args, message):
    out_json = tmp_path / "c.json"
    code = main([*args, "--root", str(planted.root), "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 2 and out.startswith("error:") and message in out and out.count("\n") == 1
    assert not out_json.exists()


def test_cli_a_bug_is_not_bad_input_and_keeps_its_traceback(planted, tmp_path, monkeypatch, capsys, wide):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the analysis")

    monkeypatch.setattr(correlate, "analyze", broken)
    out_json = tmp_path / "c.json"
    with pytest.raises(RuntimeError, match="a bug in the analysis"):
        main(["--study", "lr-test", "--root", str(planted.root), "--json", str(out_json)])
    assert "error:" not in capsys.readouterr().out and not out_json.exists()


def test_cli_missing_store_is_an_error_and_creates_nothing(tmp_path, capsys):
    root = tmp_path / "nothing-here"
    assert main(["--root", str(root)]) == 2
    assert "no store at" in capsys.readouterr().out and not root.exists()


def test_cli_too_few_runs_exits_0_with_an_empty_json(planted, tmp_path, capsys, wide):
    out_json = tmp_path / "c.json"
    assert main(["--experiment", "seeds", "--root", str(planted.root), "--json", str(out_json)]) == 0
    assert "only 3 finished runs" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert data["status"] == "too_few_runs" and data["rows"] == []


def _artifacts(client, run_id) -> set[str]:
    found, stack = set(), [None]
    while stack:
        for info in client.list_artifacts(run_id, stack.pop()):
            (stack.append(info.path) if info.is_dir else found.add(info.path))
    return found


def test_cli_log_to_parent(planted, tmp_path, capsys, wide):
    code = main(
        [
            "--experiment",
            "lr",
            "--root",
            str(planted.root),
            "--measures",
            "lambda_max",
            "--targets",
            "test_loss",
            "--n-boot",
            "10",
            "--log-to-parent",
        ]
    )
    assert code == 0 and f"logged to parent run {planted.lr_parent_id}" in capsys.readouterr().out
    client = planted.store.client()
    assert {"data/correlation.json", "figures/correlation_scatter.png", "correlation.txt"} <= _artifacts(
        client, planted.lr_parent_id
    )


# ------------------------------------------------------------------------------------------------------------------
# End of sweep
# ------------------------------------------------------------------------------------------------------------------


def test_report_sweep_logs_json_figure_and_table_to_the_parent(planted, tmp_path):
    buffer = io.StringIO()
    console = Console(file=buffer, width=160)
    result = report_sweep(
        planted.store,
        experiment_id=planted.lr_experiment_id,
        study="lr-test",
        parent_run_id=planted.lr_parent_id,
        console=console,
        n_boot=N_BOOT,
    )
    assert result is not None and len(result.entries) == len(planted.measures) * len(keys.TARGETS)
    assert "hessian/lambda_max" in buffer.getvalue() and "logged to parent run" in buffer.getvalue()
    client = planted.store.client()
    assert {"data/correlation.json", "figures/correlation_scatter.png", "correlation.txt"} <= _artifacts(
        client, planted.lr_parent_id
    )
    path = client.download_artifacts(planted.lr_parent_id, "data/correlation.json", str(tmp_path))
    data = json.loads(open(path).read())
    assert len(data["rows"]) == len(planted.measures) * len(keys.TARGETS)
    text = open(client.download_artifacts(planted.lr_parent_id, "correlation.txt", str(tmp_path))).read()
    assert "Power: n = 16" in text


def test_report_sweep_by_study_name_finds_the_parent(planted):
    console = Console(file=io.StringIO(), width=160)
    result = report_sweep(
        planted.store, experiment="lr", study="lr-test", console=console, measures=["lambda_max"], n_boot=10, n_perm=50
    )
    assert result is not None and f"logged to parent run {planted.lr_parent_id}" in console.file.getvalue()
    assert result.measures == ("hessian/lambda_max",)


def test_report_sweep_never_raises(planted):
    console = Console(file=io.StringIO(), width=160)
    assert report_sweep(planted.store, experiment="seeds", study="seeds-test", console=console) is None
    assert "only 3 finished runs" in console.file.getvalue()
    assert _artifacts(planted.store.client(), planted.seeds_parent_id) == set()
    assert report_sweep(planted.store, parent_run_id="f" * 32, console=console) is None
    assert "correlation report failed" in console.file.getvalue()


# ------------------------------------------------------------------------------------------------------------------
# End to end: real smoke sweeps, then the command line as a user runs it
# ------------------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def _python_m(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=900
    )


@pytest.mark.slow
def test_end_to_end_smoke_sweeps_then_correlate(seed_sweep, smoke_args, tmp_path):
    root, _ = seed_sweep  # the session's smoke seed sweep; the lr sweep joins its store
    # --lr-max 0.05: smoke's default top lr (0.3) diverges for some seeds, leaving fewer than 4 runs to correlate.
    # The audit and the figures' analyses are tested elsewhere (test_seed_sweep): left out here to keep the suite short.
    skip = ["--skip", "invariance,density,slices,noise_test,curve,trajectory"]
    lr = _python_m(
        "sweeps.lr", "--n", "2", "--seeds-per-lr", "2", "--lr-max", "0.05", *smoke_args, *skip, "--root", str(root)
    )
    assert lr.returncode == 0, lr.stdout[-3000:] + lr.stderr[-3000:]

    out_json = tmp_path / "c.json"
    result = _python_m(
        "tracking.correlate",
        "--experiment",
        "lr",
        "--root",
        str(root),
        "--json",
        str(out_json),
        "--n-boot",
        "200",
        "--full",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test_loss (final/test_loss) vs each measure" in result.stdout and "Power: n = 4" in result.stdout
    data = json.loads(out_json.read_text())
    assert data["status"] == "ok" and data["population"]["n_runs"] == 4
    assert keys.CONTROL in data["measures"] and list(data["targets"]) == list(keys.TARGETS)
    pairs = [(row["measure"], row["target"]) for row in data["rows"]]
    assert pairs == [(m, t) for m in data["measures"] for t in keys.TARGETS]


def test_output_to_a_file_is_wide_enough_for_the_tables(monkeypatch) -> None:
    # rich assumes 80 columns off a terminal, where the report's tables collapse; sweeps are often logged to files.
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert output_console().width == 160


# ------------------------------------------------------------------------------------------------------------------
# The invariance audit in the report
# ------------------------------------------------------------------------------------------------------------------


def test_the_report_shows_each_measures_audited_invariance_and_says_so_in_the_verdict(population):
    audited = {"hessian/lambda_max": 11.7, "sharpness/adaptive": 1.0004, "hessian/trace": math.inf}
    report = analyze(population, n_boot=N_BOOT, invariance=audited)
    lam = report.entry("hessian/lambda_max", "test_loss")
    assert lam.invariant is False and lam.invariance_ratio == 11.7
    assert "NOT rescaling-invariant (it changes x11.7" in lam.verdict
    assert report.entry("hessian/trace", "test_loss").invariant is False
    assert "flips sign" in report.entry("hessian/trace", "test_loss").verdict
    adaptive = report.entry("sharpness/adaptive", "test_loss")
    assert adaptive.invariant is True and "invariant" not in adaptive.verdict
    assert report.entry("sharpness/eps", "test_loss").invariant is None  # not audited
    text = render_text(report, width=200)
    assert "invariant" in text and "✗ x11.7" in text and "✓ x1" in text and "✗ sign flips" in text
    row = next(r for r in report.to_json()["rows"] if r["measure"] == "hessian/trace")
    assert row["invariance_ratio"] == "inf" and row["invariant"] is False
    json.dumps(report.to_json(), allow_nan=False)
    plain = analyze(population, n_boot=N_BOOT)
    assert all(e.invariant is None for e in plain.entries)
    assert "invariant" not in render_text(plain)  # no audit, no column


def test_an_audit_logged_on_a_run_reads_back_as_its_ratios(planted):
    client = planted.store.client()
    run = client.create_run(planted.lr_experiment_id, run_name="audit-roundtrip", tags={"run_kind": "scratch"})
    audit = InvarianceAudit(
        rescalings=("conv1x10/conv2",),
        values={"hessian/lambda_max": (2.0, 23.4), "norm/fisher_rao": (3.0, 3.0), "curvature/random_mean": (-1.0, 1.0)},
        output_change=(1e-7,),
    )
    assert find_audit(planted.store, "key-of-this-test") is None
    log_invariance(RunLogger(client, run.info.run_id), audit, source="abc", key="key-of-this-test")
    found, source, origin = find_audit(planted.store, "key-of-this-test")  # what a later sweep with the key reuses
    assert found == audit and source == "abc" and origin == run.info.run_id
    assert find_audit(planted.store, "another-key") is None
    ratios = load_invariance(client, run.info.run_id)
    assert ratios["hessian/lambda_max"] == pytest.approx(11.7)
    assert ratios["norm/fisher_rao"] == 1.0 and math.isinf(ratios["curvature/random_mean"])
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics["invariance/hessian/lambda_max"] == pytest.approx(11.7)
    assert metrics["invariance/curvature/random_mean"] == -1.0
    assert load_invariance(client, planted.seeds_parent_id) == {}  # a parent without an audit


def test_unconverged_and_unbracketed_estimates_are_counted_flagged_and_can_be_excluded():
    rng = np.random.default_rng(4)
    runs = []
    for i in range(10):
        test_loss = 0.3 + 0.01 * i
        metrics = {
            keys.FINAL_TEST_LOSS: test_loss,
            keys.TEST_ERROR: 0.1 + 0.001 * i,
            keys.GAP_LOSS: 0.05 * rng.random(),
            keys.GAP_ACC: 0.05 * rng.random(),
            keys.CONTROL: 0.1 * rng.random(),
            keys.LAMBDA_MAX: 10 + i + rng.random(),
            keys.CONVERGED: 0.0 if i in (3, 7) else 1.0,
            keys.LAMBDA_MAX_NORMALIZED: 100 * rng.random(),
            keys.NORMALIZED_CONVERGED: 0.0 if i == 5 else 1.0,
        }
        runs.append(PopulationRun(run_id=f"r{i}", study="s", trial_number=i, seed=i + 1, lr=0.01, metrics=metrics))
    population = Population(runs=runs, source="hand-made")
    kept = analyze(
        population, measures=["lambda_max", "lambda_max_normalized"], targets=["test_loss"], n_boot=50, n_perm=200
    )
    lam = kept.entry(keys.LAMBDA_MAX, "test_loss")
    assert lam.flagged == 2 and lam.row.n == 10 and "2 runs with an unconverged/unbracketed estimate" in lam.verdict
    assert kept.entry(keys.LAMBDA_MAX_NORMALIZED, "test_loss").flagged == 1 and kept.flagged == {
        keys.LAMBDA_MAX: 2,
        keys.LAMBDA_MAX_NORMALIZED: 1,
    }
    assert "(2 flag)" in render_text(kept)
    dropped = analyze(
        population, measures=["lambda_max"], targets=["test_loss"], n_boot=50, n_perm=200, exclude_flagged=True
    )
    assert dropped.entry(keys.LAMBDA_MAX, "test_loss").row.n == 8 and dropped.to_json()["exclude_flagged"] is True


def test_the_report_asks_the_papers_a_versus_b_question_of_every_measure(planted, report, population):
    asked = [q.measure for q in report.pairs]
    assert asked == [m for m in report.measures if m != keys.CONTROL]
    lam = next(q for q in report.pairs if q.measure == "hessian/lambda_max")
    x, y = population.column("hessian/lambda_max"), population.column(keys.FINAL_TEST_LOSS)
    i, j = np.triu_indices(len(x), 1)
    concordant = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    assert lam.agreement.fraction == pytest.approx(float(np.mean(concordant > 0)))  # untied planted data
    assert lam.agreement.ci_low > 0.5 and "supports" in lam.sentence
    text = render_text(report)
    assert "A-versus-B" in text and lam.sentence.split(":")[0][:40] in text
    assert json.loads(json.dumps(report.to_json(), allow_nan=False))["pairs"][0]["measure"] == asked[0]
