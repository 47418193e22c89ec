"""Functional views of a model: parameter dicts, flat vectors and exact chunked losses.

Every measure in landscape_core evaluates the model through these helpers, so that none of them mutates the caller's
model: parameters are detached copies, the model is put in eval mode only for the duration of a call, and losses are
exact means over the whole data, computed in chunks weighted by chunk size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "Data",
    "LossFn",
    "Params",
    "CPU_CHUNK",
    "chunks",
    "effective_chunk",
    "evaluate",
    "evaluate_examples",
    "eval_mode",
    "flat_params",
    "flatten",
    "loss_at",
    "mean_loss",
    "param_dict",
    "unflatten",
]

Data = tuple[Tensor, Tensor]
Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

DEFAULT_CHUNK = 1024
# On a CPU, a forward pass over more examples than this runs ~2x slower per example: SeedCNN's activations of 128
# images (~13 MB per conv2 output) still fit a typical L3 cache, those of 1024-2048 do not (measured on a 2-core EPYC:
# evaluation 4,400 vs 2,000 img/s, one HVP over 1024 images 1.3 vs 2.9 CPU-seconds). Callers' chunk sizes are memory
# bounds; on a CPU they are capped at this, which changes results only by float summation order.
CPU_CHUNK = 128


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(logits, targets)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore each submodule's own flag afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


def param_dict(model: nn.Module) -> Params:
    """Detached copies of the model's parameters, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def flatten(params: Params) -> Tensor:
    """Concatenate a parameter dict into one flat vector ``[P]``."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def flat_params(model: nn.Module) -> tuple[Params, Tensor]:
    """``(like, theta)``: detached copies of the model's parameters by name (:func:`param_dict`) and their flat
    concatenation ``[P]`` (:func:`flatten`), in the model's dtype and device.

    Raises:
        ValueError: the model has no parameters.
    """
    like = param_dict(model)
    if not like:
        raise ValueError("Expected a model with parameters, got none")
    return like, flatten(like)


def unflatten(vector: Tensor, like: Params) -> Params:
    """Split a flat vector ``[P]`` into a dict shaped like ``like``: views of ``vector``, except that a 4-D entry of
    ``like`` stored ``channels_last`` (see ``models.memory_format_for``) gets a copy in that layout, so convolutions
    at the result stay on their fast path (conv weights are small: the copy is cheap)."""
    out, start = {}, 0
    for name, p in like.items():
        view = vector[start : start + p.numel()].view_as(p)
        if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
            view = view.contiguous(memory_format=torch.channels_last)
        out[name] = view
        start += p.numel()
    if start != vector.numel():
        raise ValueError(f"Expected a vector of {start} elements, got {vector.numel()}")
    return out


def chunks(data: Data, chunk_size: int) -> Iterator[tuple[Data, float]]:
    """Yield ``((inputs, targets), weight)`` slices whose weights (chunk size / total) sum to 1."""
    inputs, targets = data
    n = inputs.shape[0]
    if n == 0:
        raise ValueError("Expected non-empty data, got 0 examples")
    if chunk_size < 1:
        raise ValueError(f"Expected `chunk_size` >= 1, got {chunk_size}")
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        yield (inputs[start:stop], targets[start:stop]), (stop - start) / n


def effective_chunk(chunk_size: int, device: torch.device | str) -> int:
    """Examples per forward pass for a requested ``chunk_size`` on ``device``: at most ``CPU_CHUNK`` on a CPU."""
    return min(chunk_size, CPU_CHUNK) if torch.device(device).type == "cpu" else chunk_size


def loss_at(
    model: nn.Module, params: Params, batch: Data, loss_fn: LossFn | None = None, buffers: Params | None = None
) -> Tensor:
    """Differentiable loss of ``model`` evaluated at ``params`` on one batch (the model itself is not touched)."""
    inputs, targets = batch
    state = {**(buffers if buffers is not None else dict(model.named_buffers())), **params}
    logits = functional_call(model, state, (inputs,))
    return (loss_fn or _cross_entropy)(logits, targets)


def mean_loss(
    model: nn.Module,
    params: Params,
    data: Data,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
) -> Tensor:
    """Differentiable exact mean loss over all of ``data``, chunked (weights by chunk size, never a sum)."""
    with eval_mode(model):
        total = None
        for batch, weight in chunks(data, chunk_size):
            term = loss_at(model, params, batch, loss_fn) * weight
            total = term if total is None else total + term
    return total


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Data,
    *,
    params: Params | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` (at ``params`` if given) over ``data``, in eval mode.

    At most ``chunk_size`` examples go through the model at once (at most ``CPU_CHUNK`` on a CPU, where smaller passes
    are faster); the loss is the exact mean, weighted by chunk size.

    ``dtype``: the forward pass's arithmetic (None: the model's own). ``torch.bfloat16`` casts the parameters,
    floating buffers and inputs to it (layouts kept) and computes the loss and accuracy from the logits cast back to
    float32: forward-only evaluations run ~3x faster on a CPU with AVX512-BF16 (``devices.forward_dtype``), and
    ``tests/landscape_core/test_forward_dtype.py`` bounds what it changes in each estimate that uses it.

    Returns:
        ``(loss, accuracy)`` as Python floats; accuracy in [0, 1].
    """
    params = params if params is not None else dict(model.named_parameters())
    loss_fn = loss_fn or _cross_entropy
    state = {**dict(model.named_buffers()), **params}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    loss = correct = 0.0
    with eval_mode(model), torch.inference_mode():
        for (inputs, targets), weight in chunks(data, effective_chunk(chunk_size, data[0].device)):
            if dtype is not None:
                inputs = inputs.to(dtype)
            logits = functional_call(model, state, (inputs,))
            if dtype is not None:
                logits = logits.float()
            loss += float(loss_fn(logits, targets)) * weight
            correct += float((logits.argmax(1) == targets).sum())
    return loss, correct / data[0].shape[0]


@torch.no_grad()
def evaluate_examples(
    model: nn.Module, data: Data, *, params: Params | None = None, chunk_size: int = DEFAULT_CHUNK
) -> tuple[Tensor, Tensor]:
    """Per-example cross-entropy and correctness of ``model`` (at ``params`` if given) over ``data``, in eval mode,
    in passes of at most ``chunk_size`` examples (``CPU_CHUNK`` on a CPU).

    Returns:
        ``(losses [N], correct [N])``, float64 on the CPU (correct is 0 or 1).
    """
    params = params if params is not None else dict(model.named_parameters())
    state = {**dict(model.named_buffers()), **params}
    losses, correct = [], []
    with eval_mode(model), torch.inference_mode():
        for (inputs, targets), _ in chunks(data, effective_chunk(chunk_size, data[0].device)):
            logits = functional_call(model, state, (inputs,))
            losses.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none").double().cpu())
            correct.append((logits.argmax(1) == targets).double().cpu())
    return torch.cat(losses), torch.cat(correct)
