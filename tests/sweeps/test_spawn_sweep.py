"""``python -m sweeps.spawn``: instability analysis as a sweep (real Optuna journal, real MLflow store): every spawn
epoch with every pair and the independent baseline, each trial's barrier between its two branches, the report."""

from __future__ import annotations

import numpy as np

from landscape_core import keys
from sweeps import spawn
from tests.sweeps.conftest import SMOKE, client_for, run_cli
from tracking.instability import instability_report
from tracking.population import load_population
from tracking.store import TrackingStore


def test_a_spawn_sweep_measures_each_pair_and_reports_the_barrier_against_the_spawn_epoch(tmp_path):
    root = tmp_path / "mlruns"
    args = ["--spawn-epochs", "0,1", "--pairs", "2", *SMOKE, "--test-size", "128", "--root", str(root)]
    result = run_cli("sweeps.spawn", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Where minima come from (instability analysis)" in out and "report.html logged to parent run" in out
    # the answer comes before the per-epoch details
    assert out.index("The initialization determines the minimum") < out.index("Barrier between the two runs")
    store = TrackingStore.resolve(None, str(root))
    population = load_population(store, experiment="spawn")
    assert len(population.runs) == 3 * 2  # the independent pair, spawn at 0 and at 1, two pairs each
    report = instability_report(population)
    assert sorted(report.values) == [-1, 0, 1] and report.spawn_epochs == [0, 1]
    error = keys.instability("test", "error")
    for k, columns in report.values.items():
        assert columns[error].shape == (2,) and np.isfinite(columns[error]).all(), k
        assert (columns[error] >= 0).all()
    assert all(c.verdict == "no evidence" for c in report.claims)  # two pairs decide nothing
    client = client_for(root)
    parent = population.runs[0].parent_run_id
    assert "report.html" in {a.path for a in client.list_artifacts(parent)}


def test_spawn_epochs_beyond_the_training_are_refused_in_one_line(tmp_path, capsys):
    assert spawn.main(["--spawn-epochs", "0,2", *SMOKE, "--root", str(tmp_path / "mlruns")]) == 2
    out = capsys.readouterr().out
    assert "`--spawn-epochs` each in [0, 1] (below --epochs)" in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "mlruns").exists()
