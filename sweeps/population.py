"""What a finished sweep adds to its parent run besides the correlation report: the population's barrier matrix."""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

from landscape_core.measure import population_barriers
from landscape_core.plots.geometry import barrier_matrix_plot
from sweeps.pipeline import TrialContext
from tracking.checkpoints import load_run_model
from tracking.runs import RunLogger

__all__ = ["barrier_matrix", "pairs_cap"]


def pairs_cap(n_models: int, max_pairs: int) -> int:
    """The largest m <= n_models with m (m - 1) / 2 <= max_pairs."""
    m = int((1 + math.isqrt(1 + 8 * max(max_pairs, 0))) // 2)
    return min(n_models, m)


def barrier_matrix(study: optuna.Study, context: TrialContext, parent: RunLogger, max_pairs: int) -> None:
    """Pairwise test-loss barriers (raw and aligned) between the first finished trials, logged to the parent.

    With a width axis, only minima of one architecture can be interpolated: the matrix covers the width of the
    first finished trial.
    """
    trials = sorted(
        (t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "mlflow_run_id" in t.user_attrs),
        key=lambda t: t.number,
    )
    if trials and "width" in trials[0].params:
        trials = [t for t in trials if t.params["width"] == trials[0].params["width"]]
    trials = trials[: pairs_cap(len(trials), max_pairs)]
    if len(trials) < 2:
        return
    preset, progress = context.preset, context.progress
    train = preset.replace(width=trials[0].params.get("width")).train
    client = context.store.client()
    connectivity = preset.analysis.connectivity
    data = context.data.subset("barrier_test", connectivity.test_subset)
    models = [
        load_run_model(client, t.user_attrs["mlflow_run_id"], train.model, data[0].device, width=train.width)
        for t in trials
    ]
    if progress:
        progress.trial_started(f"barrier matrix of {len(models)} minima", 1)
    matrices = population_barriers(
        models,
        data,
        points=connectivity.points,
        align=connectivity.align,
        seed=context.data.direction_seed("probes"),
        progress=(lambda done, total: progress.step(1, done, total, float("nan"))) if progress else None,
    )
    labels = [
        f"s{t.params.get('seed')}"
        + (f" lr{t.params['lr']:.2g}" if "lr" in t.params else "")
        + (f" w{t.params['width']:g}" if "width" in t.params else "")
        for t in trials
    ]
    parent.json(
        {
            "labels": labels,
            "run_ids": [t.user_attrs["mlflow_run_id"] for t in trials],
            **{name: matrix.tolist() for name, matrix in matrices.items()},
        },
        "barrier_matrix",
    )
    for name, matrix in matrices.items():
        title = "Test-loss barrier" + (" after weight matching" if name.endswith("aligned") else " (raw)")
        parent.figure(barrier_matrix_plot(matrix.numpy(), labels, title), f"barrier_matrix_{name}")
        m = len(models)
        parent.metrics({f"population/barrier_{name}_mean": float(matrix.sum()) / (m * (m - 1))})
