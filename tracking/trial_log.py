"""What a trial's child run records: per-epoch curves, final metrics, the training figure and the checkpoint."""

from __future__ import annotations

import dataclasses

from landscape_core.measure import Measurements
from landscape_core.plots.geometry import geometry_figures
from landscape_core.plots.training import training_curves
from landscape_core.train import EpochMetrics, TrainResult
from tracking.runs import RunLogger

__all__ = ["final_metrics", "log_epoch", "log_measurements", "log_training"]


def log_epoch(run: RunLogger, metrics: EpochMetrics) -> None:
    """Per-epoch step metrics: ``train/loss``, ``train/acc``, ``test/loss``, ``test/acc``, ``time/epoch_s``, extras."""
    values = {
        "train/loss": metrics.train_loss,
        "train/acc": metrics.train_acc,
        "test/loss": metrics.test_loss,
        "test/acc": metrics.test_acc,
        "time/epoch_s": metrics.seconds,
        **metrics.extra,
    }
    run.metrics(values, step=metrics.epoch)


def final_metrics(result: TrainResult) -> dict[str, float]:
    """Final metrics and generalization: gap = test - train loss (train loss over the train set, eval mode)."""
    final = result.final
    return {
        "final/train_loss": final.train_loss,
        "final/train_acc": final.train_acc,
        "final/test_loss": final.test_loss,
        "final/test_acc": final.test_acc,
        "gen/test_error": 1.0 - final.test_acc,
        "gen/gap_loss": final.test_loss - final.train_loss,
        "gen/gap_acc": final.train_acc - final.test_acc,
        "time/train_s": sum(m.seconds for m in result.history),
    }


def log_training(run: RunLogger, result: TrainResult) -> None:
    """Final metrics, the training-curves figure (the paper's Figure 1), the history as JSON and the checkpoint."""
    run.metrics(final_metrics(result))
    run.figure(training_curves(result.history), "training_curves")
    run.json([dataclasses.asdict(m) for m in result.history], "history")
    run.checkpoint(result.model.state_dict())


def log_measurements(run: RunLogger, measurements: Measurements) -> None:
    """Scalars as final metrics, seconds as ``time/<analysis>_s``, raw arrays under ``data/``, figures under
    ``figures/`` (the paper's Figures 2-6: eigenvalues, 1D and 2D slices, interpolation path, weight noise; see
    ``landscape_core.plots.geometry.geometry_figures``)."""
    run.metrics({**measurements.scalars, **{f"time/{k}_s": v for k, v in measurements.seconds.items()}})
    for name, data in measurements.arrays.items():
        run.json(data, name)
    for name, figure in geometry_figures(measurements.arrays).items():
        run.figure(figure, name)
