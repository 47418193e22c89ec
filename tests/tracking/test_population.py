"""load_population against a real MLflow sqlite store: selection, status counts, deduplication, paging, columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from landscape_core.errors import UsageError
from tracking import population as population_module
from tracking.population import PopulationError, load_population
from tracking.store import StoreError


def test_study_population_counts_finished_runs_not_finished_and_duplicates(planted):
    pop = load_population(planted.store, study="lr-test")
    assert len(pop.runs) == 16
    assert pop.n_not_finished == {"FAILED": 1, "KILLED": 1}
    assert pop.n_duplicates == 1
    assert [r.trial_number for r in pop.runs] == list(range(16))
    assert {(r.seed, r.lr) for r in pop.runs} == {(s, lr) for s in planted.seeds for lr in planted.lrs}
    assert all(r.study == "lr-test" and r.parent_run_id == planted.lr_parent_id for r in pop.runs)


def test_the_latest_finished_retry_is_kept(planted):
    pop = load_population(planted.store, study="lr-test")
    (kept,) = [r for r in pop.runs if r.trial_number == planted.duplicated_trial]
    assert kept.metrics["final/test_loss"] == pytest.approx(
        planted.planted[planted.duplicated_trial]["final/test_loss"]
    )
    assert 99.0 not in pop.column("final/test_loss")


def test_parent_run_and_experiment_select_the_same_runs(planted):
    by_study = load_population(planted.store, study="lr-test")
    by_parent = load_population(planted.store, parent_run_id=planted.lr_parent_id)
    by_experiment = load_population(planted.store, experiment="lr")
    ids = [r.run_id for r in by_study.runs]
    assert [r.run_id for r in by_parent.runs] == ids
    assert [r.run_id for r in by_experiment.runs] == ids
    assert by_parent.n_not_finished == by_experiment.n_not_finished == {"FAILED": 1, "KILLED": 1}
    assert "parent run" in by_parent.source and by_experiment.source == "experiment lr"


def test_default_selection_reads_the_seeds_and_lr_experiments_only(planted):
    pop = load_population(planted.store)
    assert len(pop.runs) == 16 + 3  # not the "dedupe" experiment
    assert {r.study for r in pop.runs} == {"lr-test", "seeds-test"}


def test_retries_of_one_point_under_new_trial_numbers_are_deduplicated(planted):
    pop = load_population(planted.store, experiment="dedupe")
    assert [(r.trial_number, r.seed) for r in pop.runs] == [(1, 1), (2, 2)]
    assert pop.n_duplicates == 1
    assert pop.runs[0].metrics["final/train_loss"] == 2.0


def test_pages_through_more_runs_than_one_page(planted, monkeypatch):
    monkeypatch.setattr(population_module, "PAGE_SIZE", 4)  # 19 trial runs in "lr": five pages
    pop = load_population(planted.store, experiment="lr")
    assert len(pop.runs) == 16 and pop.n_duplicates == 1 and pop.n_not_finished == {"FAILED": 1, "KILLED": 1}


def test_columns_missing_counts_and_measure_order(planted):
    pop = load_population(planted.store, study="lr-test")
    assert pop.measure_keys() == list(planted.measures)
    adaptive = pop.column("sharpness/adaptive")
    assert adaptive.shape == (16,)
    assert [r.trial_number for r, v in zip(pop.runs, adaptive) if math.isnan(v)] == list(planted.missing_adaptive)
    assert pop.missing("sharpness/adaptive") == 2
    assert pop.missing("hessian/lambda_max") == 0
    assert pop.missing("not/a/metric") == 16
    expected = [planted.planted[r.trial_number]["hessian/lambda_max"] for r in pop.runs]
    np.testing.assert_allclose(pop.column("hessian/lambda_max"), expected)
    np.testing.assert_array_equal(pop.lrs, [planted.lrs[t // len(planted.seeds)] for t in range(16)])


def test_bad_selections_raise_population_errors(planted):
    with pytest.raises(PopulationError, match="either a study or a parent run"):
        load_population(planted.store, study="lr-test", parent_run_id=planted.lr_parent_id)
    with pytest.raises(PopulationError, match="no experiment named 'nope'"):
        load_population(planted.store, experiment="nope")
    with pytest.raises(PopulationError, match="no run with id"):
        load_population(planted.store, parent_run_id="0" * 32)
    assert load_population(planted.store, study="no-such-study").runs == []


def test_selection_and_store_errors_are_usage_errors():
    # Bad input: the command lines print them as one line and exit 2 (landscape_core.cli.run_command).
    assert issubclass(PopulationError, UsageError) and issubclass(StoreError, UsageError)
    assert issubclass(PopulationError, ValueError)
