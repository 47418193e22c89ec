"""A real MLflow sqlite store with a planted population of trial runs, built once per test session.

Experiment "lr", study "lr-test": 16 trials over 4 learning rates x 4 seeds, FINISHED, with planted metrics:

* ``hessian/lambda_max`` tracks the test loss (a real, monotone relation);
* ``sharpness/eps`` is independent noise;
* ``norm/weights`` is the train loss plus noise: a confound, related to the test loss only through train loss;
* ``hessian/trace`` rises with the test loss inside each lr but falls across lrs (Simpson's paradox);
* ``sharpness/adaptive`` is missing on two runs; ``perturb/train_loss_delta/sigma_0.05`` is a discovered key;

plus one FAILED run, one KILLED run and a stale FINISHED copy of trial 5 (the later copy is the one to keep).

Experiment "seeds", study "seeds-test": 3 finished runs (too few to correlate). Experiment "dedupe": two FINISHED
runs of the same (seed, lr) under different trial numbers, and one other run.

Test modules read the planted layout from the ``planted`` fixture (``planted.lrs``, ``planted.measures``, ...), never
by importing this module; ``smoke_args`` are the command-line options of a smoke sweep on the CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tracking.runs import RunLogger, find_or_create_parent, start_child
from tracking.store import TrackingStore

LRS = (0.001, 0.01, 0.03, 0.1)
SEEDS = (1, 2, 3, 4)
MISSING_ADAPTIVE = (2, 9)  # trial numbers without sharpness/adaptive
DUPLICATED_TRIAL = 5
#: The measure keys of study "lr-test", in report order (``Population.measure_keys()``).
MEASURES = (
    "hessian/lambda_max",
    "hessian/trace",
    "sharpness/eps",
    "sharpness/adaptive",
    "perturb/train_loss_delta/sigma_0.05",
    "norm/weights",
    "final/train_loss",
)


@dataclass(frozen=True)
class PlantedStore:
    root: Path
    store: TrackingStore
    lr_experiment_id: str
    lr_parent_id: str
    seeds_parent_id: str
    planted: dict[int, dict[str, float]]  # trial number -> metrics of the run that must be kept
    lrs: tuple[float, ...] = LRS
    seeds: tuple[int, ...] = SEEDS
    missing_adaptive: tuple[int, ...] = MISSING_ADAPTIVE  # trial numbers without sharpness/adaptive
    duplicated_trial: int = DUPLICATED_TRIAL  # the trial with a stale FINISHED copy
    measures: tuple[str, ...] = MEASURES


def _child(store, experiment_id, parent_id, study, trial, seed, lr) -> RunLogger:
    run = start_child(
        store,
        experiment_id,
        parent_id,
        run_name=f"trial-{trial:03d}",
        tags={"study": study, "trial_number": trial, "seed": seed, "lr": lr},
    )
    run.params({"lr": lr, "seed": seed, "preset": "smoke"})
    return run


def planted_metrics(rng: np.random.Generator) -> dict[int, dict[str, float]]:
    """The 16 trials' final metrics (trial number = lr index * 4 + seed index)."""
    out = {}
    for i in range(len(LRS)):
        for j in range(len(SEEDS)):
            trial = i * len(SEEDS) + j
            train_loss = rng.uniform(0.1, 1.0)
            test_loss = train_loss + 0.1 * i + 0.05 * rng.normal()
            metrics = {
                "final/train_loss": train_loss,
                "final/test_loss": test_loss,
                "final/test_acc": 0.9 - 0.2 * test_loss,
                "gen/test_error": 0.1 + 0.2 * test_loss + 0.01 * rng.normal(),
                "gen/gap_loss": test_loss - train_loss,
                "gen/gap_acc": 0.02 + 0.01 * rng.normal(),
                "hessian/lambda_max": 10.0 * test_loss + 0.3 * rng.normal(),
                "hessian/trace": 100.0 * test_loss - 400.0 * i,
                "sharpness/eps": rng.normal(),
                "sharpness/adaptive": rng.normal(),
                "perturb/train_loss_delta/sigma_0.05": rng.normal(),
                "norm/weights": 30.0 * train_loss + 3.0 * rng.normal(),
            }
            if trial in MISSING_ADAPTIVE:
                del metrics["sharpness/adaptive"]
            out[trial] = metrics
    return out


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> PlantedStore:
    root = tmp_path_factory.mktemp("population") / "mlruns"
    store = TrackingStore.resolve(None, root)
    store.check()
    # With n = 16 a null partial rho has sd ~0.28; at this seed the confound's is -0.05 (see test_correlate).
    rng = np.random.default_rng(1)
    metrics = planted_metrics(rng)

    lr_exp = store.experiment_id("lr")
    parent = find_or_create_parent(store, lr_exp, "lr-test", tags={"sweep": "lr"})
    for trial, values in metrics.items():
        lr, seed = LRS[trial // len(SEEDS)], SEEDS[trial % len(SEEDS)]
        if trial == DUPLICATED_TRIAL:  # a stale finished copy, superseded by the retry below
            stale = _child(store, lr_exp, parent.run_id, "lr-test", trial, seed, lr)
            stale.metrics({**values, "final/test_loss": 99.0})
            stale.finish("FINISHED")
            time.sleep(0.01)
        run = _child(store, lr_exp, parent.run_id, "lr-test", trial, seed, lr)
        run.metrics({**values, "train/loss": 1.0})
        run.finish("FINISHED")
    failed = _child(store, lr_exp, parent.run_id, "lr-test", 16, 5, 0.1)
    failed.metrics({"train/loss": float("nan")})
    failed.finish("FAILED")
    killed = _child(store, lr_exp, parent.run_id, "lr-test", 17, 1, 0.001)
    killed.finish("KILLED")
    parent.finish("FINISHED")

    seeds_exp = store.experiment_id("seeds")
    seeds_parent = find_or_create_parent(store, seeds_exp, "seeds-test", tags={"sweep": "seeds"})
    for trial, seed in enumerate((1, 2, 3)):
        run = _child(store, seeds_exp, seeds_parent.run_id, "seeds-test", trial, seed, 0.01)
        run.metrics(metrics[trial])
        run.finish("FINISHED")

    dedupe_exp = store.experiment_id("dedupe")
    dedupe_parent = find_or_create_parent(store, dedupe_exp, "d")
    for trial, seed, value in ((0, 1, 1.0), (1, 1, 2.0), (2, 2, 3.0)):
        run = _child(store, dedupe_exp, dedupe_parent.run_id, "d", trial, seed, 0.01)
        run.metrics({"final/train_loss": value})
        time.sleep(0.01)
        run.finish("FINISHED")

    return PlantedStore(root, store, lr_exp, parent.run_id, seeds_parent.run_id, metrics)


@pytest.fixture(scope="session")
def smoke_args() -> list[str]:
    """The options of a smoke sweep on the CPU (as ``tests/sweeps`` runs them)."""
    return ["--preset", "smoke", "--device", "cpu"]
