"""What a trial's child run records: per-epoch curves, final metrics, the training figure, the checkpoint, and the
trained network as an MLflow LoggedModel."""

from __future__ import annotations

import copy
import dataclasses
import logging

import mlflow
import mlflow.pytorch
import torch
from torch import Tensor, nn

from landscape_core import keys
from landscape_core.config import TrainConfig
from landscape_core.measure import Measurements
from landscape_core.plots.geometry import geometry_figures
from landscape_core.plots.training import edge_of_stability_figure, training_curves
from landscape_core.train import EpochMetrics, TrainResult
from tracking.runs import RunLogger

__all__ = ["final_metrics", "log_epoch", "log_measurements", "log_model", "log_sharpness_steps", "log_training"]


def log_epoch(run: RunLogger, metrics: EpochMetrics) -> None:
    """Per-epoch step metrics: ``train/loss``, ``train/acc``, ``test/loss``, ``test/acc``, ``time/epoch_s``, extras."""
    values = {
        keys.TRAIN_LOSS: metrics.train_loss,
        keys.TRAIN_ACC: metrics.train_acc,
        keys.TEST_LOSS: metrics.test_loss,
        keys.TEST_ACC: metrics.test_acc,
        keys.EPOCH_SECONDS: metrics.seconds,
        **metrics.extra,
    }
    run.metrics(values, step=metrics.epoch)


def final_metrics(result: TrainResult) -> dict[str, float]:
    """Final metrics and generalization: gap = test - train loss (train loss over the train set, eval mode)."""
    final = result.final
    return {
        keys.FINAL_TRAIN_LOSS: final.train_loss,
        keys.FINAL_TRAIN_ACC: final.train_acc,
        keys.FINAL_TEST_LOSS: final.test_loss,
        keys.FINAL_TEST_ACC: final.test_acc,
        keys.TEST_ERROR: 1.0 - final.test_acc,
        keys.GAP_LOSS: final.test_loss - final.train_loss,
        keys.GAP_ACC: final.train_acc - final.test_acc,
        keys.TRAIN_SECONDS: sum(m.seconds for m in result.history),
        keys.EPOCHS_RUN: float(len(result.history)),
        **({} if result.reached_stop_loss is None else {keys.REACHED_STOP_LOSS: float(result.reached_stop_loss)}),
    }


def log_training(run: RunLogger, result: TrainResult, config: TrainConfig) -> None:
    """Final metrics with the protocol's noise scale (``keys.NOISE_SCALE``), the training-curves figure (the paper's
    Figure 1), the history as JSON and the checkpoint."""
    run.metrics(final_metrics(result) | {keys.NOISE_SCALE: config.noise_scale})
    run.figure(training_curves(result.history), "training_curves")
    run.json([dataclasses.asdict(m) for m in result.history], "history")
    run.checkpoint(result.model.state_dict())


def log_sharpness_steps(run: RunLogger, steps: list[tuple[int, float]], threshold: float) -> None:
    """lambda_max tracked every K optimizer steps (``keys.LAMBDA_MAX_STEP``, MLflow step = the optimizer step), as
    JSON, and the edge-of-stability figure: the curve against the threshold (Cohen et al. 2021)."""
    for step, value in steps:
        run.metrics({keys.LAMBDA_MAX_STEP: value}, step=step)
    run.json({"steps": [s for s, _ in steps], "lambda_max": [v for _, v in steps], "threshold": threshold}, "sharpness")
    run.figure(edge_of_stability_figure([s for s, _ in steps], [v for _, v in steps], threshold), "edge_of_stability")


def log_measurements(run: RunLogger, measurements: Measurements) -> None:
    """Scalars as final metrics, seconds as ``time/<analysis>_s``, raw arrays under ``data/``, figures under
    ``figures/`` (the paper's Figures 2-6: eigenvalues, 1D and 2D slices, interpolation path, weight noise; see
    ``landscape_core.plots.geometry.geometry_figures``)."""
    run.metrics({**measurements.scalars, **{keys.seconds(k): v for k, v in measurements.seconds.items()}})
    for name, data in measurements.arrays.items():
        run.json(data, name)
    for name, figure in geometry_figures(measurements.arrays).items():
        run.figure(figure, name)


def log_model(run: RunLogger, model: nn.Module, example: Tensor, tracking_uri: str) -> str:
    """The trained network as an MLflow 3 LoggedModel of the run, linked to the run's final (step 0) metrics.

    Saved with ``torch.export`` (``serialization_format="pt2"``): a traced graph and its weights, no pickled code, so
    loading it (``mlflow.pytorch.load_model("models:/<id>")``) runs nothing from the file. ``example`` (a few input
    images) traces the graph; the batch size stays dynamic. Log it after the final metrics so they are linked to it.

    Returns:
        The LoggedModel's id (its URI is ``models:/<id>``).
    """
    # mlflow.pytorch resolves the store and the model's experiment from process-wide state: point both at the run's
    # (else the model would land in experiment 0, whose artifacts default to ./mlruns in the working directory)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=run.client.get_run(run.run_id).info.experiment_id)
    logging.getLogger("torch._export").setLevel(logging.ERROR)  # "dimension ... specialized" on a 1-image example
    with torch.no_grad():
        info = mlflow.pytorch.log_model(
            # torch.export packs plain (contiguous) CPU weights; channels_last ones make it warn
            copy.deepcopy(model).to(device="cpu", memory_format=torch.contiguous_format).eval(),
            name="model",
            input_example=example.detach().cpu().numpy(),
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            run_id=run.run_id,
        )
    return info.model_id
