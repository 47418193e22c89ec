"""The paper's training: SGD with momentum over in-memory batches, with per-epoch evaluation and divergence checks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from landscape_core.config import TrainConfig
from landscape_core.devices import resolve_device
from landscape_core.functional import Params, evaluate, param_dict
from landscape_core.models import build_model
from landscape_core.splits import TrialData

__all__ = [
    "DivergenceError",
    "EpochMetrics",
    "TrainResult",
    "check_data",
    "reached",
    "stop_outcome",
    "train",
]


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss; names the epoch (1-based) and the step within it."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(f"diverged: non-finite loss {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


@dataclass(frozen=True)
class EpochMetrics:
    """Metrics after one epoch; train metrics are over the training set in eval mode, not a running average."""

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """A trained model, the weights it started from, its per-epoch history, and the splits it saw."""

    model: nn.Module
    init_params: Params
    history: list[EpochMetrics]
    data: TrialData
    #: True when ``stop_at_train_loss`` was reached (training stopped there), False when the epoch cap came first,
    #: None when no target was set.
    reached_stop_loss: bool | None = None

    @property
    def final(self) -> EpochMetrics:
        return self.history[-1]


EpochCallback = Callable[[int, nn.Module], dict[str, float] | None]
StepCallback = Callable[[int, int, int, float], None]


def check_data(data: TrialData, config: TrainConfig) -> None:
    """Raise ``ValueError`` unless ``data`` holds the splits of ``config`` (``TrialData.build(dataset, config)``)."""
    if not data.matches(config):
        raise ValueError(
            f"Expected the splits of data_seed {config.data_seed}, train_size {config.train_size} and test_size "
            f"{config.test_size}, got data_seed {data.seed} with {data.train[0].shape[0]} and {data.test[0].shape[0]} "
            "images"
        )


def train(
    config: TrainConfig,
    data: TrialData,
    *,
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
    on_metrics: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train a fresh model as ``config`` says and evaluate it after every epoch.

    With ``config.stop_at_train_loss`` set, training ends after the first epoch whose train loss is at or below it
    (``reached_stop_loss`` True), or after ``config.epochs`` epochs without reaching it (False): a result, not an
    error.

    Initialization draws from ``config.weights_seed`` and shuffling from ``config.batches_seed`` (both ``config.seed``
    unless ``init_seed`` / ``order_seed`` split its two jobs), so the same config gives the same weights on CPU.

    Args:
        config: the training protocol.
        data: the trial's splits, ``TrialData.build(dataset, config)`` (built once per sweep and shared).
        on_epoch: called after each epoch's evaluation as ``on_epoch(epoch, model)``; the dict it returns is stored
            in that epoch's ``extra`` metrics (e.g. lambda_max tracking). It must not change the model.
        on_step: called every few steps as ``on_step(epoch, step, steps_per_epoch, loss)`` for live progress.
        on_metrics: called with each epoch's complete metrics as soon as they exist (e.g. to log them live).

    Raises:
        DivergenceError: a training loss is not finite.
    """
    check_data(data, config)
    device = resolve_device(config.device)
    train_data, test_data = data.train, data.test
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.weights_seed)
        model = build_model(config.model, device, width=config.width)
    init_params = param_dict(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    shuffler = torch.Generator().manual_seed(config.batches_seed)
    inputs, targets = train_data
    n = inputs.shape[0]
    steps = math.ceil(n / config.batch_size)
    report_every = max(1, steps // 20)
    history: list[EpochMetrics] = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=shuffler).to(device)
        for step in range(steps):
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            loss = nn.functional.cross_entropy(model(inputs[index]), targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % report_every == 0 or step == steps - 1:
                value = loss.item()
                if not math.isfinite(value):
                    raise DivergenceError(epoch, step + 1, value)
                if on_step is not None:
                    on_step(epoch, step + 1, steps, value)
        train_loss, train_acc = evaluate(model, train_data, chunk_size=config.eval_chunk)
        if not math.isfinite(train_loss):
            raise DivergenceError(epoch, steps, train_loss)
        test_loss, test_acc = evaluate(model, test_data, chunk_size=config.eval_chunk)
        seconds = time.perf_counter() - start
        extra = (on_epoch(epoch, model) or {}) if on_epoch is not None else {}
        history.append(EpochMetrics(epoch, train_loss, train_acc, test_loss, test_acc, seconds, dict(extra)))
        if on_metrics is not None:
            on_metrics(history[-1])
        if reached(config, train_loss):
            break
    model.eval()
    return TrainResult(model, init_params, history, data, stop_outcome(config, history))


def reached(config: TrainConfig, train_loss: float) -> bool:
    """True when ``config`` stops at a train loss and ``train_loss`` is at or below it."""
    return config.stop_at_train_loss is not None and train_loss <= config.stop_at_train_loss


def stop_outcome(config: TrainConfig, history: list[EpochMetrics]) -> bool | None:
    """``TrainResult.reached_stop_loss`` of a finished training: None without a target."""
    if config.stop_at_train_loss is None:
        return None
    return bool(history) and reached(config, history[-1].train_loss)
