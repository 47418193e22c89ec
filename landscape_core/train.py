"""The paper's training: SGD with momentum over in-memory batches (or another optimizer of ``OPTIMIZERS``), with
per-epoch evaluation, divergence checks, and a snapshot to branch from (``Snapshot``: Frankle et al. 2020's spawn)."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from landscape_core.config import TrainConfig
from landscape_core.devices import resolve_device
from landscape_core.functional import Params, evaluate, param_dict
from landscape_core.models import build_model
from landscape_core.optimizers import build_optimizer
from landscape_core.splits import TrialData

__all__ = [
    "DivergenceError",
    "EpochMetrics",
    "Snapshot",
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
    #: Optimizer steps taken since initialization (a branch counts its trunk's).
    steps: int = 0
    #: The optimizer's state at the end (momentum buffers, Adam's moments), for a branch to continue from.
    optimizer_state: dict | None = None

    @property
    def final(self) -> EpochMetrics:
        return self.history[-1]


@dataclass(frozen=True)
class Snapshot:
    """A training stopped after ``epoch`` epochs, to branch from: the weights, the optimizer's state, the initial
    weights and the history so far. ``train(config, data, start=snapshot)`` continues it for epochs ``epoch + 1 ..
    config.epochs``, their batch orders drawn afresh from ``config.batches_seed`` (a branch's own order, Frankle et
    al. 2020: not the order the uninterrupted run would have drawn next, except for full-batch GD, which has none).

    ``Snapshot.initial(config)`` is epoch 0: the initial weights and a fresh optimizer."""

    epoch: int
    params: Params
    optimizer_state: dict | None
    init_params: Params
    history: tuple[EpochMetrics, ...]
    steps: int

    @classmethod
    def of(cls, result: TrainResult) -> Snapshot:
        """The end of a finished training (deep copies: the snapshot does not change with the model)."""
        return cls(
            epoch=len(result.history),
            params=param_dict(result.model),
            optimizer_state=copy.deepcopy(result.optimizer_state),
            init_params=result.init_params,
            history=tuple(result.history),
            steps=result.steps,
        )

    @classmethod
    def initial(cls, config: TrainConfig) -> Snapshot:
        """Epoch 0 of ``config``: its initial weights (``weights_seed``), no optimizer state, no history."""
        params = param_dict(_initial_model(config))
        return cls(epoch=0, params=params, optimizer_state=None, init_params=params, history=(), steps=0)


EpochCallback = Callable[[int, nn.Module], dict[str, float] | None]
StepCallback = Callable[[int, int, int, float], None]
#: Called as ``on_update(step, model)`` before the first optimizer step (step 0 at initialization) and after each.
UpdateCallback = Callable[[int, nn.Module], None]


def check_data(data: TrialData, config: TrainConfig) -> None:
    """Raise ``ValueError`` unless ``data`` holds the splits of ``config`` (``TrialData.build(dataset, config)``)."""
    if not data.matches(config):
        raise ValueError(
            f"Expected the splits of data_seed {config.data_seed}, train_size {config.train_size} and test_size "
            f"{config.test_size}, got data_seed {data.seed} with {data.train[0].shape[0]} and {data.test[0].shape[0]} "
            "images"
        )


def _initial_model(config: TrainConfig) -> nn.Module:
    """A fresh model drawn from ``config.weights_seed`` (the global RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.weights_seed)
        return build_model(config.model, resolve_device(config.device), width=config.width)


def _batches(config: TrainConfig, n: int, shuffler: torch.Generator, device: torch.device) -> list[Tensor]:
    """One epoch's mini-batch indices: a fresh permutation cut into ``batch_size`` pieces; full-batch GD takes all
    ``n`` images in one step (and draws no permutation)."""
    if config.optimizer == "gd":
        return [torch.arange(n, device=device)]
    order = torch.randperm(n, generator=shuffler).to(device)
    return list(order.split(config.batch_size))


def train(
    config: TrainConfig,
    data: TrialData,
    *,
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
    on_metrics: Callable[[EpochMetrics], None] | None = None,
    on_update: UpdateCallback | None = None,
    start: Snapshot | None = None,
) -> TrainResult:
    """Train a model as ``config`` says and evaluate it after every epoch.

    With ``config.stop_at_train_loss`` set, training ends after the first epoch whose train loss is at or below it
    (``reached_stop_loss`` True), or after ``config.epochs`` epochs without reaching it (False): a result, not an
    error.

    Initialization draws from ``config.weights_seed`` and shuffling from ``config.batches_seed`` (both ``config.seed``
    unless ``init_seed`` / ``order_seed`` split its two jobs), so the same config gives the same weights on CPU.
    ``config.optimizer`` picks the update rule (``landscape_core.optimizers``); full-batch ``gd`` takes one step per
    epoch on the whole train split, its gradient accumulated over ``eval_chunk`` pieces.

    Args:
        config: the training protocol.
        data: the trial's splits, ``TrialData.build(dataset, config)`` (built once per sweep and shared).
        on_epoch: called after each epoch's evaluation as ``on_epoch(epoch, model)``; the dict it returns is stored
            in that epoch's ``extra`` metrics (e.g. lambda_max tracking). It must not change the model.
        on_step: called every few steps as ``on_step(epoch, step, steps_per_epoch, loss)`` for live progress.
        on_metrics: called with each epoch's complete metrics as soon as they exist (e.g. to log them live).
        on_update: called as ``on_update(step, model)`` before the first optimizer step and after every one, with the
            steps taken so far (0 at initialization): per-step lambda_max tracking, trajectory checkpoints. It must
            not change the model.
        start: continue from this snapshot (a branch: its weights, optimizer state and history, then epochs
            ``start.epoch + 1 .. config.epochs`` in ``config``'s batch order); None starts from initialization.

    Raises:
        DivergenceError: a training loss is not finite.
    """
    check_data(data, config)
    device = resolve_device(config.device)
    train_data, test_data = data.train, data.test
    model = _initial_model(config)
    init_params = param_dict(model)
    optimizer = build_optimizer(model, config)
    history: list[EpochMetrics] = []
    global_step, first_epoch = 0, 1
    if start is not None:
        if start.epoch > config.epochs:
            raise ValueError(f"Expected a snapshot at epoch <= `epochs` ({config.epochs}), got epoch {start.epoch}")
        with torch.no_grad():
            for name, value in model.named_parameters():
                value.copy_(start.params[name])
        if start.optimizer_state is not None:
            optimizer.load_state_dict(copy.deepcopy(start.optimizer_state))
        init_params = {k: v.clone() for k, v in start.init_params.items()}
        history = [dataclasses.replace(m, extra=dict(m.extra)) for m in start.history]
        global_step, first_epoch = start.steps, start.epoch + 1
    shuffler = torch.Generator().manual_seed(config.batches_seed)
    inputs, targets = train_data
    n = inputs.shape[0]
    steps = 1 if config.optimizer == "gd" else math.ceil(n / config.batch_size)
    report_every = max(1, steps // 20)
    if on_update is not None:
        on_update(global_step, model)
    for epoch in range(first_epoch, config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        for step, index in enumerate(_batches(config, n, shuffler, device)):
            loss = optimizer.step(_closure(model, optimizer, inputs, targets, index, config.eval_chunk))
            global_step += 1
            if on_update is not None:
                on_update(global_step, model)
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
        seconds = time.perf_counter() - epoch_start
        extra = (on_epoch(epoch, model) or {}) if on_epoch is not None else {}
        history.append(EpochMetrics(epoch, train_loss, train_acc, test_loss, test_acc, seconds, dict(extra)))
        if on_metrics is not None:
            on_metrics(history[-1])
        if reached(config, train_loss):
            break
    model.eval()
    # the optimizer ends here, so its state is handed over as it is: Snapshot.of copies it, as train(start=) does
    state = optimizer.state_dict()
    return TrainResult(model, init_params, history, data, stop_outcome(config, history), global_step, state)


def _closure(
    model: nn.Module, optimizer: Any, inputs: Tensor, targets: Tensor, index: Tensor, chunk: int
) -> Callable[[], Tensor]:
    """The optimizer's closure on one batch: zero the gradients, the mean cross-entropy over the batch, backward.
    A batch larger than ``chunk`` (full-batch GD) is accumulated over chunks, each weighted by its share."""

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        if index.numel() <= chunk:
            loss = nn.functional.cross_entropy(model(inputs[index]), targets[index])
            loss.backward()
            return loss
        total = torch.zeros((), device=inputs.device)
        for piece in index.split(chunk):
            part = nn.functional.cross_entropy(model(inputs[piece]), targets[piece]) * (piece.numel() / index.numel())
            part.backward()
            total += part.detach()
        return total

    return closure


def reached(config: TrainConfig, train_loss: float) -> bool:
    """True when ``config`` stops at a train loss and ``train_loss`` is at or below it."""
    return config.stop_at_train_loss is not None and train_loss <= config.stop_at_train_loss


def stop_outcome(config: TrainConfig, history: list[EpochMetrics]) -> bool | None:
    """``TrainResult.reached_stop_loss`` of a finished training: None without a target."""
    if config.stop_at_train_loss is None:
        return None
    return bool(history) and reached(config, history[-1].train_loss)
