"""Linear mode connectivity: the linear path between two minima, its barriers, and permutation alignment.

``align`` is weight matching (Ainsworth et al. 2022, "Git Re-Basin", Algorithm 1) for a chain of conv/linear layers
(by default SeedCNN's ``conv1, conv2, fc1, fc2``): the hidden units of every layer but the last are permuted so that
model B's weights are as close as possible to model A's, without changing the function B computes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from landscape_core.functional import DEFAULT_CHUNK, Data, LossFn, evaluate, param_dict

__all__ = [
    "BarrierResult",
    "InterpolationResult",
    "align",
    "apply_permutations",
    "barrier",
    "interpolate",
    "weight_matching",
]

SEED_CNN_LAYERS = ("conv1", "conv2", "fc1", "fc2")


@dataclass(frozen=True)
class InterpolationResult:
    """Loss and accuracy along ``theta(a) = (1 - a) theta_A + a theta_B``.

    Attributes:
        alphas: the ``a`` values ``[K]``.
        loss: mean loss at each ``a`` ``[K]``.
        accuracy: accuracy in [0, 1] at each ``a`` ``[K]``.
    """

    alphas: tuple[float, ...]
    loss: tuple[float, ...]
    accuracy: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("alphas", "loss", "accuracy"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        if not len(self.alphas) == len(self.loss) == len(self.accuracy):
            raise ValueError(
                "Expected `alphas`, `loss` and `accuracy` of equal length, got "
                f"{len(self.alphas)}, {len(self.loss)} and {len(self.accuracy)}"
            )

    @property
    def error(self) -> tuple[float, ...]:
        """``1 - accuracy`` at each ``a`` ``[K]``."""
        return tuple(1.0 - a for a in self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the path, error included."""
        return {
            "alphas": list(self.alphas),
            "loss": list(self.loss),
            "accuracy": list(self.accuracy),
            "error": list(self.error),
        }


@dataclass(frozen=True)
class BarrierResult:
    """Barrier heights of one linear path.

    Attributes:
        loss_barrier: ``max_a [L(a) - ((1 - a) L_A + a L_B)]`` (Entezari et al. 2022); >= 0.
        error_barrier: ``max_a E(a) - (E_A + E_B) / 2`` (Frankle et al. 2020); >= 0.
        peak_loss: ``max_a L(a)``.
        argmax_alpha: the ``a`` where the loss barrier is attained.
    """

    loss_barrier: float
    error_barrier: float
    peak_loss: float
    argmax_alpha: float

    def to_dict(self) -> dict[str, float]:
        """JSON-safe dict of the fields."""
        return {k: float(getattr(self, k)) for k in ("loss_barrier", "error_barrier", "peak_loss", "argmax_alpha")}


def _matching_params(model_a: nn.Module, model_b: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    params_a, params_b = param_dict(model_a), param_dict(model_b)
    if list(params_a) != list(params_b) or any(params_a[k].shape != params_b[k].shape for k in params_a):
        raise ValueError("Expected two models with the same parameter names and shapes")
    return params_a, params_b


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Data,
    alphas: Sequence[float] | Tensor | np.ndarray,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
) -> InterpolationResult:
    """Loss and accuracy along the straight line between two models' parameters.

    ``theta(a) = (1 - a) theta_A + a theta_B`` (written this way, not as a lerp, so that ``a = 0`` and ``a = 1`` give
    the endpoints bit for bit). Evaluated with ``model_a``'s architecture and buffers, in eval mode.

    Args:
        model_a: the model at ``a = 0``; not modified.
        model_b: the model at ``a = 1`` (same parameter names and shapes); not modified.
        data: ``(inputs [N, ...], targets [N])``.
        alphas: the ``K`` values of ``a`` (any reals; include 0 and 1 to compute barriers).
        chunk_size: examples per forward chunk.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; mean cross-entropy by default.

    Returns:
        ``InterpolationResult`` with ``[K]`` losses and accuracies.
    """
    params_a, params_b = _matching_params(model_a, model_b)
    params_b = {k: v.to(params_a[k]) for k, v in params_b.items()}
    values = [float(a) for a in (alphas.tolist() if hasattr(alphas, "tolist") else alphas)]
    if not values:
        raise ValueError("Expected at least one alpha, got none")
    losses, accs = [], []
    for a in values:
        params = {k: (1.0 - a) * params_a[k] + a * params_b[k] for k in params_a}
        loss, acc = evaluate(model_a, data, params=params, chunk_size=chunk_size, loss_fn=loss_fn)
        losses.append(loss)
        accs.append(acc)
    return InterpolationResult(alphas=tuple(values), loss=tuple(losses), accuracy=tuple(accs))


def barrier(result: InterpolationResult) -> BarrierResult:
    """Loss and error barriers of an interpolation path.

    Args:
        result: a path whose ``alphas`` include exactly 0 and 1 (the endpoints' values are read there).

    Returns:
        ``BarrierResult``.

    Raises:
        ValueError: ``alphas`` lack 0 or 1.
    """
    alphas = np.asarray(result.alphas, dtype=np.float64)
    loss = np.asarray(result.loss, dtype=np.float64)
    error = np.asarray(result.error, dtype=np.float64)
    ends = []
    for end in (0.0, 1.0):
        hits = np.flatnonzero(alphas == end)
        if hits.size == 0:
            raise ValueError(f"Expected `alphas` to include {end:g}, got {result.alphas}")
        ends.append(int(hits[0]))
    i_a, i_b = ends
    excess = loss - ((1.0 - alphas) * loss[i_a] + alphas * loss[i_b])
    k = int(np.argmax(excess))
    return BarrierResult(
        loss_barrier=float(excess[k]),
        error_barrier=float(error.max() - (error[i_a] + error[i_b]) / 2.0),
        peak_loss=float(loss.max()),
        argmax_alpha=float(alphas[k]),
    )


# --------------------------------------------------------------------------------------------------- weight matching


@dataclass(frozen=True)
class _Layer:
    """One layer's weight viewed as ``[out, in, rest]`` (conv: rest = kernel area; linear after a conv: the
    flattened input viewed as ``[C, H*W]``), with its bias ``[out]`` or None, in float64 on the CPU."""

    weight: Tensor
    bias: Tensor | None


def _layers(model: nn.Module, names: Sequence[str]) -> list[_Layer]:
    modules = dict(model.named_modules())
    layers: list[_Layer] = []
    previous_out: int | None = None
    for name in names:
        module = modules.get(name)
        if module is None or not hasattr(module, "weight"):
            raise ValueError(f"Expected a layer named {name!r} with a weight, got {module!r}")
        w = module.weight.detach().to(device="cpu", dtype=torch.float64)
        out, fan_in = w.shape[0], w.shape[1]
        if previous_out is not None:
            if w.dim() == 2 and fan_in % previous_out == 0:
                # a linear layer after the flatten: its input is [C, H*W] channel-major; permute on C
                w = w.reshape(out, previous_out, fan_in // previous_out)
            elif fan_in != previous_out:
                raise ValueError(
                    f"Expected layer {name!r} to take {previous_out} inputs (or a multiple, after a flatten), "
                    f"got {fan_in}"
                )
        w = w.reshape(out, w.shape[1], -1)
        bias = getattr(module, "bias", None)
        bias = None if bias is None else bias.detach().to(device="cpu", dtype=torch.float64)
        layers.append(_Layer(w, bias))
        previous_out = out
    return layers


def _permuted(layer: _Layer, out_perm: Tensor | None, in_perm: Tensor | None) -> tuple[Tensor, Tensor | None]:
    w, b = layer.weight, layer.bias
    if out_perm is not None:
        w = w[out_perm]
        b = None if b is None else b[out_perm]
    if in_perm is not None:
        w = w[:, in_perm]
    return w, b


def _cost(a: list[_Layer], b: list[_Layer], perms: list[Tensor], i: int) -> np.ndarray:
    """``C[j, k]``: the weight-matching objective's terms that involve hidden layer ``i``, if B's unit ``k`` is
    moved to position ``j``: incoming weights and bias of layer ``i`` (B's inputs permuted by ``perms[i - 1]``) and
    outgoing weights of layer ``i + 1`` (B's outputs permuted by ``perms[i + 1]``)."""
    w_b, b_b = _permuted(b[i], None, perms[i - 1] if i > 0 else None)
    cost = a[i].weight.flatten(1) @ w_b.flatten(1).T
    if a[i].bias is not None and b_b is not None:
        cost = cost + torch.outer(a[i].bias, b_b)
    next_out = perms[i + 1] if i + 1 < len(perms) else None
    w_next, _ = _permuted(b[i + 1], next_out, None)
    cost = cost + a[i + 1].weight.transpose(0, 1).flatten(1) @ w_next.transpose(0, 1).flatten(1).T
    return cost.numpy()


def weight_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    layers: Sequence[str] = SEED_CNN_LAYERS,
    seed: int = 0,
    max_iter: int = 100,
) -> dict[str, Tensor]:
    """Permutations of B's hidden units that maximize ``sum_l <W_l^A, P_l W_l^B P_{l-1}^T>`` (+ biases).

    Coordinate descent (Ainsworth et al. 2022, Algorithm 1): starting from identities, repeatedly visit the hidden
    layers in a random order (a fresh order per sweep, from ``seed``) and solve each layer's linear assignment with
    the others fixed (``scipy.optimize.linear_sum_assignment``, maximizing); a new permutation is only taken when it
    strictly improves the objective, and the descent stops after a sweep that changes nothing, or after
    ``max_iter`` sweeps. Computed in float64 on the CPU.

    Args:
        model_a: the reference model; not modified.
        model_b: the model to permute; not modified.
        layers: the chain of conv/linear layer names, input to output; every layer but the last gets a permutation.
            A linear layer after a conv sees its input as ``[C, fan_in // C]`` and is permuted on C.
        seed: seeds the visiting order.
        max_iter: the most sweeps.

    Returns:
        ``{layer name: perm [out]}`` for every layer but the last: B's unit ``perm[j]`` goes to position ``j``.
    """
    if len(layers) < 2:
        raise ValueError(f"Expected at least two `layers`, got {list(layers)}")
    if max_iter < 1:
        raise ValueError(f"Expected `max_iter` >= 1, got {max_iter!r}")
    a, b = _layers(model_a, layers), _layers(model_b, layers)
    for name, la, lb in zip(layers, a, b, strict=True):
        if la.weight.shape != lb.weight.shape:
            raise ValueError(f"Expected layer {name!r} of the same shape in both models")
    hidden = len(layers) - 1
    perms = [torch.arange(a[i].weight.shape[0]) for i in range(hidden)]
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        changed = False
        for i in rng.permutation(hidden):
            cost = _cost(a, b, perms, int(i))
            rows = np.arange(cost.shape[0])
            old = cost[rows, perms[i].numpy()].sum()
            _, cols = linear_sum_assignment(cost, maximize=True)
            new = cost[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[i] = torch.as_tensor(cols, dtype=torch.long)
                changed = True
        if not changed:
            break
    return {layers[i]: perms[i] for i in range(hidden)}


def apply_permutations(
    model: nn.Module, perms: dict[str, Tensor], *, layers: Sequence[str] = SEED_CNN_LAYERS
) -> nn.Module:
    """A deep copy of ``model`` with hidden units permuted: it computes exactly the same function.

    Args:
        model: the model to copy; not modified.
        perms: ``{layer name: perm [out]}`` as ``weight_matching`` returns; unit ``perm[j]`` moves to ``j``. Layers
            not named keep their order.
        layers: the chain of layer names, input to output.

    Returns:
        The permuted copy (same dtype, device, train flag and requires_grad flags as ``model``).
    """
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    previous: tuple[Tensor, int] | None = None  # (permutation of the previous layer's outputs, their count)
    with torch.no_grad():
        for name in layers:
            module = modules[name]
            w = module.weight
            new = w.detach().clone()
            if previous is not None:
                perm, channels = previous
                # a linear layer after a flatten sees [C, H*W] per output: permute the C axis
                shape = new.shape
                view = new.reshape(shape[0], channels, -1) if new.dim() == 2 else new
                new = view[:, perm.to(w.device)].reshape(shape)
            perm = perms.get(name)
            if perm is not None:
                perm = perm.to(w.device)
                new = new[perm]
                if module.bias is not None:
                    module.bias.copy_(module.bias[perm].clone())
            w.copy_(new)
            previous = (perm, w.shape[0]) if perm is not None else None
    return out


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    seed: int = 0,
    max_iter: int = 100,
    layers: Sequence[str] = SEED_CNN_LAYERS,
) -> nn.Module:
    """Model B with its hidden units permuted towards model A by weight matching (Ainsworth et al. 2022).

    For SeedCNN-shaped models (``conv1 [C1, 1, 3, 3]``, ``conv2 [C2, C1, 3, 3]``, ``fc1 [H, C2 * S]``,
    ``fc2 [10, H]``; S = H*W of the pooled map, inferred as ``fc1.in_features // C2``) the conv1 channels, conv2
    channels and fc1 units are permuted; the result computes exactly the function B computes. See
    ``weight_matching`` for the algorithm.

    Args:
        model_a: the reference; not modified.
        model_b: the model to align; not modified (the result is a deep copy).
        seed: seeds the coordinate-descent order.
        max_iter: the most coordinate-descent sweeps.
        layers: the chain of conv/linear layer names.

    Returns:
        A new ``nn.Module``: B, permuted.
    """
    perms = weight_matching(model_a, model_b, layers=layers, seed=seed, max_iter=max_iter)
    return apply_permutations(model_b, perms, layers=layers)
