from __future__ import annotations

import json

import optuna
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from landscape_core.models import SeedCNN
from tests.sweeps.conftest import SMOKE, client_for, run_cli

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


def test_batched_trials_match_sequential_ones(seed_sweep, tmp_path):
    root, _ = seed_sweep
    batched_root = tmp_path / "mlruns"
    result = run_cli(
        "sweeps.seeds",
        "--n",
        "3",
        *SMOKE,
        "--root",
        str(batched_root),
        "--batch-trials",
        "3",
        "--skip",
        "density,slices,flatness,noise,sharpness,trace",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    sequential = {int(c.data.tags["seed"]): c.data.metrics for c in _runs(root)[2]}
    _, parents, batched = _runs(batched_root)
    assert len(parents) == 1 and len(batched) == 3
    for child in batched:
        assert child.info.status == "FINISHED"
        reference = sequential[int(child.data.tags["seed"])]
        for key in ("final/train_loss", "final/test_loss", "final/test_acc"):
            assert abs(child.data.metrics[key] - reference[key]) < 1e-4, key
