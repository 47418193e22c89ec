from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import mlflow.pytorch
import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from landscape_core.config import ANALYSES, get_preset
from landscape_core.measure import population_barriers
from landscape_core.models import SeedCNN, build_model, count_parameters
from landscape_core.splits import TrialData
from sweeps import seeds
from sweeps.cli import preset_from_args, preset_line
from sweeps.space import REFERENCE_SEED
from tests.sweeps.conftest import REPO, SMOKE, client_for, run_cli
from tracking.checkpoints import load_run_model

#: The smallest real trials of FAST, with only connectivity measured.
TINY_TRIALS = [*SMOKE, "--train-size", "256", "--test-size", "128", "--epochs", "1"]

EPOCH_KEYS = {"train/loss", "train/acc", "test/loss", "test/acc"}
FINAL_KEYS = {"final/train_loss", "final/test_loss", "final/test_acc", "gen/gap_loss", "gen/gap_acc", "gen/test_error"}


def _runs(root):
    client = client_for(root)
    experiment = client.get_experiment_by_name("seeds")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "parent"]
    children = [r for r in runs if r.data.tags.get("run_kind") == "trial"]
    return client, parents, children


def test_three_trial_sweep_logs_one_parent_and_three_finished_children(seed_sweep):
    root, result = seed_sweep
    client, parents, children = _runs(root)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert sorted(int(c.data.tags["seed"]) for c in children) == [1, 2, 3]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["study"] == "seeds-smoke"
        assert child.data.params["preset"] == "smoke"
        assert child.data.params["lr"] == "0.01" and child.data.params["epochs"] == "2"
        assert EPOCH_KEYS | FINAL_KEYS <= set(child.data.metrics)
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert [m.step for m in history] == [1, 2]
    assert "test loss" in result.stdout and "complete" in result.stdout


def test_checkpoint_loads_into_a_seed_cnn_with_weights_only(seed_sweep, tmp_path):
    root, _ = seed_sweep
    client, _, children = _runs(root)
    child = children[0]
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")}
    assert artifacts == {"checkpoint/model.pt"}
    path = client.download_artifacts(child.info.run_id, "checkpoint/model.pt", str(tmp_path))
    model = SeedCNN()
    model.load_state_dict(torch.load(path, weights_only=True))
    figures = {a.path for a in client.list_artifacts(child.info.run_id, "figures")}
    assert "figures/training_curves.png" in figures
    history = json.loads(open(client.download_artifacts(child.info.run_id, "data/history.json", str(tmp_path))).read())
    assert len(history) == 2


def test_trials_record_their_run_ids_and_a_rerun_does_nothing(seed_sweep):
    root, _ = seed_sweep
    study = optuna.load_study(
        study_name="seeds-smoke", storage=JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    )
    _, _, children = _runs(root)
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {c.info.run_id for c in children}
    again = run_cli("sweeps.seeds", "--n", "3", *SMOKE, "--root", str(root))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "3/3 trials done" in again.stdout
    assert len(_runs(root)[2]) == 3


BARRIER_KEYS = ("barrier/train_loss", "barrier/train_loss_aligned", "barrier/test_loss", "barrier/train_error")


@pytest.mark.parametrize("schedule", [["--batch-trials", "3"], ["--workers", "2"]], ids=["batched", "two-workers"])
def test_batched_and_parallel_trials_match_sequential_ones_barriers_included(seed_sweep, tmp_path, schedule):
    """The same sweep batched (3 trials as one ensemble) or on two worker processes gives every trial the same
    numbers as the sequential sweep, barriers included: they are measured to the study's reference minimum, trained
    from a seed outside the population, not to whichever trial finished first. No trial is left without one."""
    root, _ = seed_sweep
    other_root = tmp_path / "mlruns"
    skip = "density,slices,flatness,noise,noise_test,sharpness,trace,curvature,invariance"
    result = run_cli("sweeps.seeds", "--n", "3", *SMOKE, "--root", str(other_root), *schedule, "--skip", skip)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    sequential = {int(c.data.tags["seed"]): c.data.metrics for c in _runs(root)[2]}
    client, parents, children = _runs(other_root)
    assert len(parents) == 1 and len(children) == 3
    for child in children:
        assert child.info.status == "FINISHED"
        reference = sequential[int(child.data.tags["seed"])]
        for key in ("final/train_loss", "final/test_loss", "final/test_acc", *BARRIER_KEYS):
            assert abs(child.data.metrics[key] - reference[key]) < 1e-4, key
    references = client.search_runs([parents[0].info.experiment_id], "tags.run_kind = 'reference'")
    assert [r.data.tags["seed"] for r in references] == [str(REFERENCE_SEED)]  # trained once, before the workers


def test_every_trial_has_its_barrier_to_the_one_reference_minimum(seed_sweep):
    root, _ = seed_sweep
    client, parents, children = _runs(root)
    study = optuna.load_study(
        study_name="seeds-smoke", storage=JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    )
    reference = study.user_attrs["reference_run_id"]
    assert client.get_run(reference).data.tags["run_kind"] == "reference"
    assert client.get_run(reference).data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert {t.user_attrs["reference_run_id"] for t in study.trials} == {reference}
    for child in children:
        assert set(BARRIER_KEYS) <= set(child.data.metrics), child.data.tags["seed"]


def test_the_parent_run_holds_the_invariance_audit_of_the_first_point(seed_sweep, tmp_path):
    """One minimum per sweep (the first point, seed 1) is audited: the normalized Hessian, Fisher-Rao and adaptive
    sharpness come out invariant, lambda_max and eps-sharpness do not; the ratios are metrics of the parent."""
    root, _ = seed_sweep
    client, parents, children = _runs(root)
    parent = parents[0]
    audit = json.loads(
        open(client.download_artifacts(parent.info.run_id, "data/invariance.json", str(tmp_path))).read()
    )
    first = next(c for c in children if c.data.tags["seed"] == "1")
    assert audit["source_run_id"] == first.info.run_id == parent.data.tags["invariance_source_run_id"]
    measures = audit["measures"]
    for key in ("hessian/lambda_max_normalized", "norm/fisher_rao", "sharpness/adaptive", "sharpness/adaptive_linf"):
        assert measures[key]["invariant"], (key, measures[key]["ratio"])
    for key in ("hessian/lambda_max", "sharpness/eps", "perturb/train_loss_delta/sigma_0.05"):
        assert not measures[key]["invariant"], (key, measures[key]["ratio"])
        assert parent.data.metrics[f"invariance/{key}"] > 1.5
    assert max(audit["output_change"]) < 1e-4


def test_a_second_sweep_of_the_same_code_and_protocol_reuses_the_audit(seed_sweep, tmp_path, capsys):
    """Issue 24: the audit's verdict is a property of the measures and the protocol, so a later sweep in the same
    store logs the first sweep's audit on its own parent instead of measuring it again."""
    root, _ = seed_sweep
    copy = tmp_path / "mlruns"
    shutil.copytree(root, copy)  # the other tests count the parents of the fixture's store
    assert seeds.main(["--n", "1", *SMOKE, "--root", str(copy), "--study-name", "seeds-again"]) == 0
    out = capsys.readouterr().out
    client = client_for(copy)
    parents = {r.data.tags["study"]: r for r in _runs(copy)[1]}
    first, again = parents["seeds-smoke"], parents["seeds-again"]
    assert again.data.tags["invariance_reused_from"] == first.info.run_id
    assert again.data.tags["invariance_key"] == first.data.tags["invariance_key"]
    assert again.data.tags["invariance_source_run_id"] == first.data.tags["invariance_source_run_id"]
    ratios = {k: v for k, v in first.data.metrics.items() if k.startswith("invariance/")}
    assert ratios and {k: again.data.metrics[k] for k in ratios} == ratios
    assert "invariance audit: reused" in out
    text = client.download_artifacts(again.info.run_id, "invariance.txt", str(tmp_path))
    assert open(text).read().startswith(f"Reused from the audit of parent run {first.info.run_id}")


def test_the_parents_barrier_matrix_is_the_population_barriers_of_its_minima(seed_sweep, fashion, tmp_path):
    root, _ = seed_sweep
    client, parents, _ = _runs(root)
    parent = parents[0].info.run_id
    logged = json.loads(open(client.download_artifacts(parent, "data/barrier_matrix.json", str(tmp_path))).read())
    assert logged["labels"] == ["s1", "s2", "s3"]
    preset = get_preset("smoke")
    config = preset.replace(device="cpu").train
    data = TrialData.build(fashion, config).subset("barrier_test", preset.analysis.connectivity.test_subset)
    models = [load_run_model(client, run_id, config.model, "cpu") for run_id in logged["run_ids"]]
    expected = population_barriers(
        models, data, points=preset.analysis.connectivity.points, align=True, seed=config.data_seed
    )
    for name, matrix in expected.items():
        assert torch.allclose(torch.tensor(logged[name], dtype=torch.float64), matrix, rtol=1e-6, atol=1e-7), name
        mean = float(matrix.sum()) / 6
        assert client.get_run(parent).data.metrics[f"population/barrier_{name}_mean"] == pytest.approx(mean, rel=1e-6)


def test_width_is_a_sweep_axis_with_barriers_within_each_width(tmp_path):
    root = tmp_path / "mlruns"
    skip = ",".join(a for a in ANALYSES if a != "connectivity")
    args = ["--n", "2", "--width", "0.5,1", *TINY_TRIALS, "--skip", skip, "--root", str(root)]
    result = run_cli("sweeps.seeds", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "width" in result.stdout
    client, parents, children = _runs(root)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    points = sorted((float(c.data.tags["width"]), int(c.data.tags["seed"])) for c in children)
    assert points == [(0.5, 1), (0.5, 2), (1.0, 1), (1.0, 2)]
    for child in children:
        width = float(child.data.tags["width"])
        assert child.info.status == "FINISHED" and float(child.data.params["width"]) == width
        model = load_run_model(client, child.info.run_id, "seed_cnn", "cpu", width=width)
        assert count_parameters(model) == count_parameters(build_model("seed_cnn", width=width))
    # every minimum measured its barrier to the reference minimum of its own width
    assert all("barrier/train_loss" in c.data.metrics for c in children)
    study = optuna.load_study(
        study_name="seeds-smoke", storage=JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    )
    pinned = {w: study.user_attrs[f"reference_run_id_w{w}"] for w in ("0.5", "1")}
    for trial in study.trials:
        assert trial.user_attrs["reference_run_id"] == pinned[f"{trial.params['width']:g}"]
    for width, run_id in pinned.items():
        assert float(client.get_run(run_id).data.tags["width"]) == float(width)
    path = client.download_artifacts(parents[0].info.run_id, "data/barrier_matrix.json", str(tmp_path))
    logged = json.loads(open(path).read())
    assert logged["labels"] == ["s1 w0.5", "s2 w0.5"]


def test_child_runs_carry_their_model_data_source_and_system_metrics(seed_sweep, fashion, tmp_path):
    root, _ = seed_sweep
    client, parents, children = _runs(root)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    data = TrialData.build(fashion, get_preset("smoke").replace(device="cpu").train)
    digests = {}
    for run in [*parents, *children]:
        tags = run.data.tags
        assert tags["mlflow.source.git.commit"] == head and tags["versions.torch"] == torch.__version__.split("+")[0]
        assert tags["host"] and tags["device"] == "cpu"
    for child in children:
        # the trained network as a LoggedModel, linked to the final metrics, loading back to the same function
        (output,) = child.outputs.model_outputs
        logged = client.get_logged_model(output.model_id)
        assert logged.source_run_id == child.info.run_id
        assert logged.experiment_id == child.info.experiment_id
        assert logged.artifact_location.startswith((root / "artifacts").resolve().as_uri()), logged.artifact_location
        assert {m.key for m in logged.metrics} >= {"final/test_loss", "hessian/lambda_max"}
        mlflow.set_tracking_uri(client.tracking_uri)  # models:/ URIs resolve against the process-wide store
        exported = mlflow.pytorch.load_model(f"models:/{output.model_id}")
        checkpoint = load_run_model(client, child.info.run_id, "seed_cnn", "cpu")
        x = data.test[0][:16]
        torch.testing.assert_close(exported(x), checkpoint(x), rtol=1e-5, atol=1e-5)
        # the images it used, as dataset inputs whose digests identify the images
        inputs = {d.dataset.name: d for d in child.inputs.dataset_inputs}
        assert {"fashion-mnist/train", "fashion-mnist/test", "fashion-mnist/hessian"} <= set(inputs)
        contexts = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in inputs.values()}
        assert contexts["fashion-mnist/train"] == "training" and contexts["fashion-mnist/test"] == "test"
        expected = hashlib.sha256(data.train_index.numpy().astype("int64").tobytes()).hexdigest()[:16]
        assert inputs["fashion-mnist/train"].dataset.digest == expected
        digests[child.info.run_id] = {name: d.dataset.digest for name, d in inputs.items()}
        assert any(key.startswith("system/cpu_utilization") for key in child.data.metrics)
    assert len({tuple(sorted(d.items())) for d in digests.values()}) == 1  # the trials share every image


def test_the_study_names_its_objective_and_opens_from_a_copy_of_the_journal(seed_sweep, tmp_path):
    root, _ = seed_sweep
    copy = tmp_path / "optuna.journal"
    shutil.copy(root / "optuna.journal", copy)
    study = optuna.load_study(study_name="seeds-smoke", storage=JournalStorage(JournalFileBackend(str(copy))))
    assert study.metric_names == ["test_loss"]
    assert sorted(t.params["seed"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE) == [1, 2, 3]


def test_the_headline_command_picks_the_preset_that_fits_the_machine():
    args = seeds.parser().parse_args(["--n", "20"])
    expected = "paper" if torch.cuda.is_available() else "quick"
    assert preset_from_args(args).name == expected
    line = preset_line(args, 20)
    assert line.startswith(f"Preset {expected} (auto: ")
    if expected == "quick":
        assert "about 15 min for 20 trials" in line and "--preset paper" in line
    assert preset_from_args(seeds.parser().parse_args(["--preset", "paper"])).name == "paper"
