"""The MLflow UI's view of a sweep: experiments tagged as model-training ones, the parent run's description and its
headline metrics, on a real local MLflow store (sqlite and artifact files in a temporary directory)."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from rich.console import Console

from landscape_core import keys
from tracking.correlate import report_sweep
from tracking.headline import MAX_VERDICTS, N_FINISHED, description, headline_metrics, rho_key, strongest, ui_route
from tracking.runs import find_or_create_parent, start_child
from tracking.store import EXPERIMENT_KIND_TAG, TRAINING_KIND, TrackingStore

N_RUNS = 8
#: ``hessian/lambda_max`` is a monotone function of the test loss (rho = +1), ``sharpness/eps`` is noise,
#: ``norm/weights`` falls with the test loss (rho = -1).
MEASURES = ("hessian/lambda_max", "sharpness/eps", "norm/weights", keys.CONTROL)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> TrackingStore:
    """One store for the module (a new MLflow database takes seconds to create)."""
    store = TrackingStore.resolve(None, tmp_path_factory.mktemp("headline") / "mlruns")
    store.check()
    return store


@pytest.fixture(scope="module")
def swept(store):
    """(experiment id, parent run id, report) of a population of ``N_RUNS``, reported as at the end of a sweep."""
    experiment_id, parent = _population(store, "seeds-headline", N_RUNS)
    console = Console(file=io.StringIO(), width=160)
    report = report_sweep(store, parent_run_id=parent, console=console, n_boot=20)
    assert report is not None, console.file.getvalue()
    return experiment_id, parent, report


def _population(store: TrackingStore, study: str, n: int) -> tuple[str, str]:
    """A finished parent run with ``n`` finished children of planted metrics; (experiment id, parent run id)."""
    rng = np.random.default_rng(3)
    experiment_id = store.experiment_id("seeds")
    parent = find_or_create_parent(store, experiment_id, study, tags={"sweep": "seeds"})
    for trial in range(n):
        seed = trial + 1
        child = start_child(
            store,
            experiment_id,
            parent.run_id,
            run_name=f"trial-{trial:03d}",
            tags={"study": study, "trial_number": trial, "seed": seed, "lr": 0.01},
        )
        child.params({"seed": seed, "lr": 0.01})
        test_loss = 0.3 + 0.05 * trial
        train_loss = 0.2 + 0.3 * rng.uniform()
        child.metrics(
            {
                keys.FINAL_TEST_LOSS: test_loss,
                keys.FINAL_TRAIN_LOSS: train_loss,
                keys.TEST_ERROR: 0.1 + rng.uniform(),
                keys.GAP_LOSS: test_loss - train_loss,
                keys.GAP_ACC: rng.normal(),
                "hessian/lambda_max": 10.0 * test_loss**2,
                "sharpness/eps": rng.normal(),
                "norm/weights": 50.0 - 20.0 * test_loss,
            }
        )
        child.finish("FINISHED")
    parent.finish("FINISHED")
    return experiment_id, parent.run_id


# ------------------------------------------------------------------------------------------------------------------
# The experiment kind
# ------------------------------------------------------------------------------------------------------------------


def test_a_new_experiment_is_a_model_training_experiment(store):
    experiment_id = store.experiment_id("new")
    assert store.client().get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert store.experiment_id("new") == experiment_id  # found again, not created twice


def test_an_existing_experiment_without_a_kind_gets_it_and_a_chosen_kind_stays(store):
    client = MlflowClient(tracking_uri=store.tracking_uri)
    old = client.create_experiment("old")  # as every experiment was created before the kind existed
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert store.experiment_id("old") == old and store.experiment_id("chosen") == chosen
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_kind_is_the_one_the_installed_mlflow_ui_knows():
    """The value is MLflow's own (the UI bundle's ExperimentKind enum), not a guess: the built UI spells it."""

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    spelled = f'CUSTOM_MODEL_DEVELOPMENT="{TRAINING_KIND}"'
    assert any(spelled in path.read_text(errors="replace") for path in bundle.glob("main.*.js"))


# ------------------------------------------------------------------------------------------------------------------
# The parent run's headline
# ------------------------------------------------------------------------------------------------------------------


def test_the_sweep_report_logs_the_headline_metrics_on_the_parent(store, swept):
    _, parent, report = swept
    metrics = store.client().get_run(parent).data.metrics
    assert metrics[N_FINISHED] == N_RUNS
    for measure in MEASURES:
        rho = report.entry(measure, "test_loss").row.spearman
        assert metrics[rho_key(measure)] == pytest.approx(rho, abs=5e-5)
    assert metrics[rho_key("hessian/lambda_max")] == pytest.approx(1.0)
    assert metrics[rho_key("norm/weights")] == pytest.approx(-1.0)
    assert rho_key("hessian/lambda_max") == "headline/rho_test_loss/hessian/lambda_max"
    # only test loss: the other targets are in the report, not in the headline
    assert {k for k in metrics if k.startswith("headline/")} == {N_FINISHED, *map(rho_key, MEASURES)}


def test_the_sweep_report_writes_the_parent_description(store, swept):
    experiment_id, parent, report = swept
    note = store.client().get_run(parent).data.tags[MLFLOW_RUN_NOTE]
    assert note.startswith(f"**Sweep `seeds-headline`: {N_RUNS} finished trials.**")
    assert f"n = {N_RUNS} detects only" in note
    # the primary hypotheses first, in bold with their verdicts; then the exploratory rows by q-value, the perfect
    # relation before the noise; never the train-loss control
    assert "- **hessian/lambda_max:test_loss: supported" in note
    bullets = [line for line in note.splitlines() if line.startswith("- `")]
    assert bullets[0].startswith("- `norm/weights`: exploratory: significant")
    assert {b.split("`")[1] for b in bullets} == {"norm/weights", "sharpness/eps"}
    assert report.entry("norm/weights", "test_loss").verdict in note
    link = ui_route(experiment_id, parent, "artifacts/report.html")
    assert f"[report.html]({link})" in note and "in this run's *Artifacts*" in note
    assert link == f"#/experiments/{experiment_id}/runs/{parent}/artifacts/report.html?workflowType=machine_learning"


def test_the_strongest_verdicts_are_capped_ranked_and_skip_the_control(swept):
    report = swept[2]
    chosen = strongest(report)
    assert 1 <= len(chosen) <= MAX_VERDICTS and all(e.target == "test_loss" for e in chosen)
    assert keys.CONTROL not in {e.measure for e in chosen}
    ranks = [(e.row.holm_p, -abs(e.row.spearman)) for e in chosen]
    assert ranks == sorted(ranks)
    assert [e.measure for e in strongest(report, limit=1)] == [chosen[0].measure]
    text = description(report)  # without a link it still names the file
    assert "open `report.html` in this run's *Artifacts*" in text
    assert headline_metrics(report) == {
        N_FINISHED: N_RUNS,
        **{rho_key(m): round(report.entry(m, "test_loss").row.spearman, 4) for m in MEASURES},
    }


def test_too_few_runs_leave_the_parent_without_a_headline(store):
    _, parent = _population(store, "seeds-few", 3)
    console = Console(file=io.StringIO(), width=160)
    assert report_sweep(store, parent_run_id=parent, console=console, n_boot=20) is None
    run = store.client().get_run(parent)
    assert MLFLOW_RUN_NOTE not in run.data.tags and N_FINISHED not in run.data.metrics
