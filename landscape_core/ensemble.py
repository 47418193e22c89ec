"""Batched trials: B models of one protocol trained side by side as one ensemble.

``train_ensemble`` reproduces :func:`landscape_core.train.train` member by member: the same initialization
(``fork_rng`` + ``manual_seed(seed)`` + ``build_model``), the same shuffling generator and batch order, SGD with
momentum with each member's own learning rate, and the same per-epoch evaluation. Every step takes one batch
``[B, batch, ...]`` (each member its own rows) and updates all members.

Two ways to run a step, the same numbers (up to float summation order):

* ``vectorize=True`` (``_StackedMembers``): the members' parameters stacked into tensors ``[B, ...]``
  (``torch.func.stack_module_state``), one ``vmap(functional_call)`` forward over the members and one backward pass of
  the summed member losses (members share no parameter, so each member's gradient is exactly its own loss's gradient).
  This is what pays on a GPU, where B small kernels become one large one.
* ``vectorize=False`` (``_LoopMembers``): a Python loop over B modules, each with its own ``torch.optim.SGD``, doing
  exactly what ``train`` does. On a CPU, ``vmap`` lowers the convolutions of B members to grouped convolutions, which
  oneDNN runs 2-4x slower than B plain ones (measured on SeedCNN, batch 128), and a CPU's cores are already busy with
  one model, so the loop is the faster choice there: batching then saves only the per-trial overheads.

The default (``vectorize=None``) picks ``vmap`` on CUDA and the loop elsewhere.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from landscape_core.config import TrainConfig
from landscape_core.devices import resolve_device
from landscape_core.functional import Data, Params, effective_chunk, evaluate, param_dict
from landscape_core.models import build_model
from landscape_core.splits import TrialData
from landscape_core.train import DivergenceError, EpochMetrics, TrainResult, check_data, reached, stop_outcome

__all__ = [
    "EnsembleEpochCallback",
    "EnsembleMetricsCallback",
    "EnsembleStepCallback",
    "check_ensemble_configs",
    "train_ensemble",
]

EnsembleEpochCallback = Callable[[int, int, nn.Module], dict[str, float] | None]
EnsembleStepCallback = Callable[[int, int, int, int, float], None]
EnsembleMetricsCallback = Callable[[int, EpochMetrics], None]

# Fields that may differ between members; every other TrainConfig field must be shared.
MEMBER_FIELDS = ("seed", "lr", "init_seed", "order_seed")


def check_ensemble_configs(configs: Sequence[TrainConfig]) -> None:
    """Raise ``ValueError`` unless ``configs`` is non-empty, trains with SGD (the only update rule an ensemble
    implements) and its members differ only in ``MEMBER_FIELDS``."""
    if len(configs) == 0:
        raise ValueError("Expected at least one TrainConfig, got 0")
    for config in configs:
        if not isinstance(config, TrainConfig):
            raise ValueError(f"Expected TrainConfig objects, got {type(config).__name__}")
        if config.optimizer != "sgd":
            raise ValueError(
                f"ensemble training (--batch-trials) implements optimizer sgd only, got {config.optimizer!r}: "
                "train it with --batch-trials 1"
            )
    for f in dataclasses.fields(TrainConfig):
        if f.name in MEMBER_FIELDS:
            continue
        values = [getattr(c, f.name) for c in configs]
        if any(v != values[0] for v in values[1:]):
            raise ValueError(
                f"Expected configs that differ only in {', '.join(f'`{n}`' for n in MEMBER_FIELDS)}, "
                f"got different `{f.name}`: {sorted(set(values), key=repr)}"
            )


class _Members:
    """The live members of an ensemble, whichever way their steps run: rows follow ``self.members`` (indices into
    the configs), each with its shuffling generator. Subclasses hold the weights and optimizer state."""

    def __init__(self, configs: Sequence[TrainConfig]) -> None:
        self.members = list(range(len(configs)))
        self.shufflers = [torch.Generator().manual_seed(c.batches_seed) for c in configs]

    @property
    def size(self) -> int:
        return len(self.members)

    def drop(self, rows: list[int]) -> None:
        """Remove members (by row) from the ensemble: their weights and state are discarded."""
        if not rows:
            return
        keep = [r for r in range(self.size) if r not in set(rows)]
        self._keep(keep)
        self.members = [self.members[r] for r in keep]
        self.shufflers = [self.shufflers[r] for r in keep]

    def _keep(self, rows: list[int]) -> None:
        raise NotImplementedError

    def step(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """One SGD step of every member on its own batch (``inputs [A, batch, ...]``, ``targets [A, batch]``);
        returns the members' batch losses ``[A]`` before the step (detached)."""
        raise NotImplementedError

    def evaluate(self, data: Data, chunk_size: int) -> tuple[Tensor, Tensor]:
        """Every member's mean loss and accuracy over all of ``data``, in eval mode: ``([A], [A])`` float64 on CPU."""
        raise NotImplementedError

    def model(self, row: int, like: nn.Module) -> nn.Module:
        """A fresh module (a deep copy of ``like``) holding member ``row``'s current weights, in eval mode."""
        raise NotImplementedError


class _LoopMembers(_Members):
    """Each member a module with its own ``torch.optim.SGD``, stepped in turn exactly as ``train`` steps one model:
    the same operations in the same order, so on a given device each member equals its sequential training."""

    def __init__(self, models: list[nn.Module], configs: Sequence[TrainConfig]) -> None:
        super().__init__(configs)
        self.models = models
        self.optimizers = [
            torch.optim.SGD(m.parameters(), lr=c.lr, momentum=c.momentum) for m, c in zip(models, configs)
        ]

    def _keep(self, rows: list[int]) -> None:
        self.models = [self.models[r] for r in rows]
        self.optimizers = [self.optimizers[r] for r in rows]

    def step(self, inputs: Tensor, targets: Tensor) -> Tensor:
        losses = []
        for row, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            model.train()
            loss = nn.functional.cross_entropy(model(inputs[row]), targets[row])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    def evaluate(self, data: Data, chunk_size: int) -> tuple[Tensor, Tensor]:
        results = [evaluate(model, data, chunk_size=chunk_size) for model in self.models]
        return tuple(torch.tensor(column, dtype=torch.float64) for column in zip(*results))  # type: ignore[return-value]

    def model(self, row: int, like: nn.Module) -> nn.Module:
        return copy.deepcopy(self.models[row]).eval()


class _StackedMembers(_Members):
    """The members' parameters stacked ``[A, ...]`` (``torch.func.stack_module_state``) and stepped together: one
    ``vmap(functional_call)`` forward over the members, one backward pass of the summed member losses (members share
    no parameter, so each gradient is its own loss's), and SGD with momentum applied functionally with per-member
    learning rates."""

    def __init__(self, models: list[nn.Module], configs: Sequence[TrainConfig]) -> None:
        super().__init__(configs)
        params, buffers = stack_module_state(models)
        self.params: Params = {name: p.detach() for name, p in params.items()}
        self.buffers: Params = {name: b.detach() for name, b in buffers.items()}
        self.momentum_buffers: Params | None = None  # torch.optim.SGD: the first step sets buf = grad
        device = next(iter(self.params.values())).device
        dtype = next(iter(self.params.values())).dtype
        self.lrs = torch.tensor([c.lr for c in configs], dtype=dtype, device=device)
        self.momentum = configs[0].momentum
        # A stateless copy of the architecture: functional_call only reads its structure and its train/eval flags.
        self.template = copy.deepcopy(models[0]).to("meta")

    def member_state(self, row: int) -> Params:
        return {**{n: b[row] for n, b in self.buffers.items()}, **{n: p[row] for n, p in self.params.items()}}

    def _forward(self, params: Params, buffers: Params, inputs: Tensor) -> Tensor:
        return functional_call(self.template, (params, buffers), (inputs,))

    def step(self, inputs: Tensor, targets: Tensor) -> Tensor:
        losses, grads = self.losses_and_grads(inputs, targets)
        self.sgd_step(grads)
        return losses

    def losses_and_grads(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Each member's mean cross-entropy on its own batch (``inputs [A, batch, ...]``) and its gradient."""
        self.template.train()
        names = list(self.params)
        leaves = {n: p.requires_grad_(True) for n, p in self.params.items()}
        try:
            logits = vmap(self._forward)(leaves, self.buffers, inputs)  # [A, batch, classes]
            per_example = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
            losses = per_example.view(self.size, -1).mean(dim=1)
            grads = torch.autograd.grad(losses.sum(), [leaves[n] for n in names])
        finally:
            for p in self.params.values():
                p.requires_grad_(False)
        return losses.detach(), dict(zip(names, grads))

    @torch.no_grad()
    def sgd_step(self, grads: dict[str, Tensor]) -> None:
        """torch.optim.SGD (no dampening, no Nesterov, no weight decay) per member: ``buf = momentum * buf + grad``
        (``buf = grad`` on the first step), then ``p -= lr * buf`` with the member's own ``lr``."""
        names = list(self.params)
        params = [self.params[n] for n in names]
        steps = [grads[n] for n in names]
        if self.momentum != 0:
            if self.momentum_buffers is None:
                self.momentum_buffers = {n: grads[n].clone() for n in names}
            else:
                buffers = [self.momentum_buffers[n] for n in names]
                torch._foreach_mul_(buffers, self.momentum)
                torch._foreach_add_(buffers, steps)
            steps = [self.momentum_buffers[n] for n in names]
        for p, step in zip(params, steps):
            p.addcmul_(step, -self.lrs.view(-1, *([1] * (p.ndim - 1))))

    def _keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, dtype=torch.long, device=self.lrs.device)
        self.params = {n: p.index_select(0, index) for n, p in self.params.items()}
        self.buffers = {n: b.index_select(0, index) for n, b in self.buffers.items()}
        if self.momentum_buffers is not None:
            self.momentum_buffers = {n: b.index_select(0, index) for n, b in self.momentum_buffers.items()}
        self.lrs = self.lrs.index_select(0, index)

    @torch.no_grad()
    def evaluate(self, data: Data, chunk_size: int) -> tuple[Tensor, Tensor]:
        """The members share each chunk's inputs (vmap over the parameters only) and a chunk holds
        ``chunk_size // A`` examples, so a pass holds as many member-examples as one pass of ``evaluate`` in ``train``;
        both cap passes on a CPU (``functional.effective_chunk``)."""
        inputs, targets = data
        n = inputs.shape[0]
        chunk_size = effective_chunk(chunk_size, inputs.device)
        if n == 0:
            raise ValueError("Expected non-empty data, got 0 examples")
        total_loss = torch.zeros(self.size, dtype=torch.float64)
        correct = torch.zeros(self.size, dtype=torch.float64)
        self.template.eval()
        with torch.inference_mode():
            step = max(1, chunk_size // self.size)
            forward = vmap(self._forward, in_dims=(0, 0, None))
            for start in range(0, n, step):
                x, y = inputs[start : start + step], targets[start : start + step]
                logits = forward(self.params, self.buffers, x)  # [A, chunk, classes]
                per_example = nn.functional.cross_entropy(
                    logits.flatten(0, 1), y.repeat(self.size), reduction="none"
                ).view(self.size, -1)
                total_loss += per_example.mean(dim=1).double().cpu() * (x.shape[0] / n)
                correct += (logits.argmax(dim=2) == y).sum(dim=1).double().cpu()
        return total_loss, correct / n

    def model(self, row: int, like: nn.Module) -> nn.Module:
        model = copy.deepcopy(like)
        state = self.member_state(row)
        with torch.no_grad():
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                tensor.copy_(state[name])
        return model.eval()


def train_ensemble(
    configs: Sequence[TrainConfig],
    data: TrialData,
    *,
    on_epoch: EnsembleEpochCallback | None = None,
    on_step: EnsembleStepCallback | None = None,
    on_metrics: EnsembleMetricsCallback | None = None,
    vectorize: bool | None = None,
) -> list[TrainResult | DivergenceError]:
    """Train ``len(configs)`` models of one protocol as one ensemble; member ``i`` matches ``train(configs[i])``.

    Each member is initialized exactly as :func:`landscape_core.train.train` does (``fork_rng``, ``manual_seed(seed)``,
    ``build_model``), shuffles with its own ``torch.Generator().manual_seed(seed)`` (the same ``randperm`` per epoch, so
    the same batches), and takes SGD-with-momentum steps with its own ``lr``. Its weights and history equal sequential
    training: bit for bit in the loop, within float tolerance under vmap (summation order differs); the test suite
    checks both.

    Divergence follows ``train``: the loss is checked at the same steps (every ``steps // 20`` and the last of an epoch)
    and after each epoch's evaluation of the training set; a member whose loss is not finite there is dropped from the
    ensemble (its slot in the result is its :class:`DivergenceError`, with the same epoch and step ``train`` would
    report) while the others go on. Members never interact: a diverged member cannot change another's numbers.

    ``EpochMetrics.seconds`` is the wall time of the ensemble's epoch (training and evaluation of all live members):
    the members ran concurrently, so each one's epoch took that long.

    Args:
        configs: one TrainConfig per member, differing only in ``MEMBER_FIELDS`` (``ValueError`` otherwise); the
            shared fields (architecture, batch size, epochs, sizes, ``data_seed``, device, ...) define the protocol.
        data: the protocol's splits, ``TrialData.build(dataset, configs[0])``.
        on_epoch: ``on_epoch(member, epoch, model)`` after each epoch's evaluation, with a fresh module holding the
            member's weights (changing it has no effect on training); the dict it returns goes to ``extra``.
        on_step: ``on_step(member, epoch, step, steps_per_epoch, loss)`` at the steps where losses are checked.
        on_metrics: ``on_metrics(member, metrics)`` with each member's epoch metrics as soon as they exist.
        vectorize: ``True``: ``vmap`` over the members; ``False``: a loop over them; ``None``: ``vmap`` on CUDA only.

    Returns:
        One entry per config, in order: a :class:`TrainResult` shaped like ``train``'s (the model, a fresh module
        in eval mode, holds the member's final weights; ``data`` is shared by all members), or
        the member's :class:`DivergenceError`.

    Raises:
        ValueError: the configs are empty or differ in more than ``MEMBER_FIELDS``.
    """
    configs = list(configs)
    check_ensemble_configs(configs)
    protocol = configs[0]
    device = resolve_device(protocol.device)
    if vectorize is None:
        vectorize = device.type == "cuda"
    check_data(data, protocol)
    train_data, test_data = data.train, data.test
    models, init_params = [], []
    for config in configs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.weights_seed)
            model = build_model(config.model, device, width=config.width)
        models.append(model)
        init_params.append(param_dict(model))
    like = copy.deepcopy(models[0])  # the architecture on the device, for the modules handed out
    ensemble = _StackedMembers(models, configs) if vectorize else _LoopMembers(models, configs)
    del models

    results: list[TrainResult | DivergenceError | None] = [None] * len(configs)
    histories: list[list[EpochMetrics]] = [[] for _ in configs]
    inputs, targets = train_data
    n = inputs.shape[0]
    batch_size = protocol.batch_size
    steps = math.ceil(n / batch_size)
    report_every = max(1, steps // 20)

    def finish(rows: list[int]) -> None:
        """Members that are done (their stop loss reached, or the last epoch): their results, out of the ensemble."""
        for row in rows:
            member = ensemble.members[row]
            outcome = stop_outcome(protocol, histories[member])
            results[member] = TrainResult(
                ensemble.model(row, like), init_params[member], histories[member], data, outcome
            )
        if rows and ensemble.size:
            ensemble.drop(rows)

    def diverge(rows_values: list[tuple[int, float]], epoch: int, step: int) -> None:
        for row, value in rows_values:
            results[ensemble.members[row]] = DivergenceError(epoch, step, value)
        ensemble.drop([row for row, _ in rows_values])

    for epoch in range(1, protocol.epochs + 1):
        if ensemble.size == 0:
            break
        start = time.perf_counter()
        orders = torch.stack([torch.randperm(n, generator=g) for g in ensemble.shufflers]).to(device)  # [A, n]
        for step in range(steps):
            index = orders[:, step * batch_size : (step + 1) * batch_size]  # [A, batch]
            losses = ensemble.step(inputs[index], targets[index])
            if step % report_every == 0 or step == steps - 1:
                values = losses.tolist()
                bad = [(row, v) for row, v in enumerate(values) if not math.isfinite(v)]
                if on_step is not None:
                    for row, value in enumerate(values):
                        if math.isfinite(value):
                            on_step(ensemble.members[row], epoch, step + 1, steps, value)
                diverge(bad, epoch, step + 1)
                if ensemble.size == 0:
                    break
                orders = orders[[r for r in range(orders.shape[0]) if r not in {b for b, _ in bad}]]
        if ensemble.size == 0:
            break
        train_loss, train_acc = ensemble.evaluate(train_data, protocol.eval_chunk)
        bad = [(row, float(v)) for row, v in enumerate(train_loss.tolist()) if not math.isfinite(v)]
        keep = [row for row in range(ensemble.size) if row not in {b for b, _ in bad}]
        train_loss, train_acc = train_loss[keep], train_acc[keep]
        diverge(bad, epoch, steps)
        if ensemble.size == 0:
            break
        test_loss, test_acc = ensemble.evaluate(test_data, protocol.eval_chunk)
        seconds = time.perf_counter() - start
        for row, member in enumerate(ensemble.members):
            extra = {}
            if on_epoch is not None:
                extra = on_epoch(member, epoch, ensemble.model(row, like)) or {}
            metrics = EpochMetrics(
                epoch,
                float(train_loss[row]),
                float(train_acc[row]),
                float(test_loss[row]),
                float(test_acc[row]),
                seconds,
                dict(extra),
            )
            histories[member].append(metrics)
            if on_metrics is not None:
                on_metrics(member, metrics)
        done = [row for row in range(ensemble.size) if reached(protocol, float(train_loss[row]))]
        finish(done)

    finish(list(range(ensemble.size)))
    return results  # type: ignore[return-value]  # every slot is filled: a result or its DivergenceError
