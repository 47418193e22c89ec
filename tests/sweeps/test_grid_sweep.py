"""``python -m sweeps.grid``: the cross product of its axes, every point with its seeds, enqueued exactly once,
run, tagged and resumed (real Optuna journal, real MLflow store)."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from landscape_core.config import ANALYSES
from sweeps import grid
from sweeps.space import point_key
from tests.sweeps.conftest import SMOKE, client_for, run_cli
from tracking.population import load_population
from tracking.store import TrackingStore


def test_the_grid_is_the_cross_product_of_its_axes_times_the_seeds():
    options = grid.build_options(
        grid.parser().parse_args(["--lr", "0.01,0.03", "--batch-size", "32,64,128", "--momentum", "0.5", *SMOKE])
    )
    space = options.space
    assert space.grid == (("lr", (0.01, 0.03)), ("batch_size", (32, 64, 128)))
    assert options.preset.train.momentum == 0.5  # one value: an override, not an axis
    points = space.points()
    assert len(points) == 2 * 3 * 2 == space.n_trials
    assert points[:3] == [
        {"lr": 0.01, "batch_size": 32, "seed": 1},
        {"lr": 0.01, "batch_size": 32, "seed": 2},
        {"lr": 0.01, "batch_size": 64, "seed": 1},
    ]
    assert len({point_key(p) for p in points}) == len(points)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0.01"], "a grid needs at least one axis"),
        (["--batch-size", "32,x"], "`--batch-size` a comma-separated list of ints"),
        (["--lr", "0.01,0.01"], "distinct `--lr` values"),
        (["--batch-size", "0,32"], "`batch_size` >= 1, got 0"),
        (["--lr", "0.01,0.02", "--seeds-per-point", "0"], "`--seeds-per-point` >= 1, got 0"),
    ],
)
def test_bad_grids_are_one_line_and_exit_2(args, message, capsys, tmp_path):
    assert grid.main([*args, *SMOKE, "--root", str(tmp_path / "mlruns")]) == 2
    out = capsys.readouterr().out
    assert message in out and len([line for line in out.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "mlruns").exists()


def test_the_optimizer_and_the_seeds_two_jobs_are_axes_too():
    args = ["--optimizer", "sgd, gd,sam", "--init-seed", "1,2", "--order-seed", "5", *SMOKE]
    options = grid.build_options(grid.parser().parse_args(args))
    assert options.space.grid == (("optimizer", ("sgd", "gd", "sam")), ("init_seed", (1, 2)))
    assert options.preset.train.order_seed == 5
    points = options.space.points()
    assert len(points) == 3 * 2 * 2 and len({point_key(p) for p in points}) == len(points)
    assert grid.main(["--optimizer", "sgd,rmsprop", *SMOKE, "--root", "unused"]) == 2


def test_a_grid_sweep_runs_each_point_once_and_a_rerun_resumes_without_repeating(tmp_path):
    """Two axes, the optimizer (SGD against full-batch GD) and the train-set size (each point trains on its own
    split), one seed per point."""
    root = tmp_path / "mlruns"
    args = ["--optimizer", "sgd,gd", "--train-size", "128,256", "--seeds-per-point", "1", *SMOKE, "--epochs", "1"]
    args += ["--test-size", "128", "--skip", ",".join(ANALYSES), "--root", str(root)]
    first = run_cli("sweeps.grid", *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    storage = JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    study = optuna.load_study(study_name="grid-smoke", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = sorted((t.params["optimizer"], t.params["train_size"]) for t in done)
    assert points == [("gd", 128), ("gd", 256), ("sgd", 128), ("sgd", 256)] and len(study.trials) == 4
    population = load_population(TrackingStore.resolve(None, str(root)), experiment="grid")
    assert len(population.runs) == 4  # no two points merged as duplicates
    assert set(population.varying_hyperparameters()) == {"optimizer", "train_size"}
    client = client_for(root)
    for run in population.runs:
        tags = client.get_run(run.run_id).data.tags
        assert tags["optimizer"] == run.params["optimizer"] and tags["train_size"] == run.params["train_size"]
        history = client.get_metric_history(run.run_id, "train/loss")
        assert len(history) == 1
        noise_scale = client.get_run(run.run_id).data.metrics["train/noise_scale"]
        assert (noise_scale == 0) == (run.params["optimizer"] == "gd")  # full-batch GD has no gradient noise
    again = run_cli("sweeps.grid", *args)
    assert again.returncode == 0 and "4/4 trials done" in again.stdout, again.stdout[-2000:]
    assert len(optuna.load_study(study_name="grid-smoke", storage=storage).trials) == 4
