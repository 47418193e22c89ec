"""tracking.export: the population as one file, round-tripped against tracking.population, and on the parent run."""

from __future__ import annotations

import math

import pytest

from tests.sweeps.conftest import run_cli
from tracking.export import population_rows, read_rows
from tracking.population import load_population
from tracking.store import TrackingStore


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_the_exported_file_round_trips_to_the_population(seed_sweep, tmp_path, suffix):
    root, _ = seed_sweep
    out = tmp_path / f"population{suffix}"
    result = run_cli("tracking.export", "--root", str(root), "--study", "seeds-smoke", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote 3 trials" in result.stdout
    population = load_population(TrackingStore.resolve(None, root), study="seeds-smoke")
    rows = read_rows(out)
    assert [r["run_id"] for r in rows] == [run.run_id for run in population.runs]
    for row, run in zip(rows, population.runs, strict=True):
        assert (row["seed"], row["trial_number"], row["study"]) == (run.seed, run.trial_number, run.study)
        assert row["model_uri"] == run.model_uri and run.model_uri.startswith("models:/")
        assert {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")} == run.params
        for key, value in run.metrics.items():
            assert row[key] == value, key  # every digit survives the file
        assert all(
            math.isnan(row[k])
            for k in row
            if k not in run.metrics and not isinstance(row[k], str) and k not in ("seed", "trial_number", "lr")
        )


def test_the_sweep_logs_the_population_file_on_its_parent(seed_sweep, tmp_path):
    root, _ = seed_sweep
    store = TrackingStore.resolve(None, root)
    population = load_population(store, study="seeds-smoke")
    parent = population.runs[0].parent_run_id
    path = store.client().download_artifacts(parent, "population.csv", str(tmp_path))
    rows = read_rows(tmp_path / "population.csv")
    assert path.endswith("population.csv")
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in population_rows(population)]


def test_an_unknown_format_is_refused_before_the_store_is_read(tmp_path):
    result = run_cli("tracking.export", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "p.xlsx"))
    assert result.returncode == 2 and "Expected `--out` ending in .csv or .parquet" in result.stdout
    assert not (tmp_path / "p.xlsx").exists()
