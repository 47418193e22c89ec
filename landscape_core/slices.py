"""Loss slices through the minimum: 1D and 2D evaluations of L(theta + alpha d1 + beta d2), and the directional
curvature by central differences.

All evaluations go through :func:`functional.evaluate` (eval mode, ``torch.inference_mode``, exact chunked mean), at
parameter dicts built from detached copies of the model's parameters; the model itself is never modified. Directions
may be parameter dicts or flat vectors ``[P]`` (see :func:`directions.as_params`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from landscape_core.common import check_positive
from landscape_core.directions import as_params
from landscape_core.functional import DEFAULT_CHUNK, Data, LossFn, Params, evaluate, flatten, param_dict

__all__ = ["Slice2DResult", "SliceResult", "directional_curvature", "slice_1d", "slice_2d"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SliceResult:
    """A 1D slice ``alpha -> L(theta + alpha d)``.

    Attributes:
        alphas: ``[n]`` float64.
        loss: ``[n]`` float64 mean loss at each alpha.
        accuracy: ``[n]`` float64 accuracy in [0, 1] at each alpha.
    """

    alphas: Tensor
    loss: Tensor
    accuracy: Tensor


@dataclass(frozen=True)
class Slice2DResult:
    """A 2D slice ``(alpha, beta) -> L(theta + alpha d1 + beta d2)``.

    Attributes:
        alphas: ``[n]`` float64 (first axis).
        betas: ``[m]`` float64 (second axis).
        loss: ``[n, m]`` float64, ``loss[i, j]`` at ``(alphas[i], betas[j])``.
        accuracy: ``[n, m]`` float64.
    """

    alphas: Tensor
    betas: Tensor
    loss: Tensor
    accuracy: Tensor


def _grid(values: Tensor | Sequence[float], name: str) -> Tensor:
    grid = torch.as_tensor(values, dtype=torch.float64).detach().cpu().reshape(-1)
    if grid.numel() == 0:
        raise ValueError(f"Expected non-empty `{name}`, got 0 values")
    if not bool(torch.isfinite(grid).all()):
        raise ValueError(f"Expected finite `{name}`, got {grid.tolist()}")
    return grid


def _shifted(theta: Params, steps: Sequence[tuple[float, Params]]) -> Params:
    out = {}
    for name, t in theta.items():
        value = t
        for coeff, direction in steps:
            value = value + coeff * direction[name]
        out[name] = value
    return out


def slice_1d(
    model: nn.Module,
    data: Data,
    direction: Tensor | Params,
    alphas: Tensor | Sequence[float],
    *,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
    progress: Progress | None = None,
) -> SliceResult:
    """Loss and accuracy along ``theta + alpha d`` for each ``alpha``.

    The direction is used as given (not normalized): pass a filter-normalized or unit eigen direction.

    Args:
        model: The model (not mutated; evaluated in eval mode).
        data: ``(inputs [N, ...], targets [N])``.
        direction: A parameter dict or flat vector ``[P]``.
        alphas: Step sizes ``[n]``.
        chunk_size: Examples per forward pass.
        loss_fn: Mean loss of a chunk; cross-entropy when ``None``.
        progress: Called as ``progress(done, total)`` after each point.

    Returns:
        A :class:`SliceResult` with ``[n]`` tensors.
    """
    grid = _grid(alphas, "alphas")
    theta = param_dict(model)
    d = as_params(direction, theta)
    loss, acc = torch.empty_like(grid), torch.empty_like(grid)
    for i, alpha in enumerate(grid.tolist()):
        loss[i], acc[i] = evaluate(
            model, data, params=_shifted(theta, [(alpha, d)]), chunk_size=chunk_size, loss_fn=loss_fn
        )
        if progress is not None:
            progress(i + 1, grid.numel())
    return SliceResult(alphas=grid, loss=loss, accuracy=acc)


def slice_2d(
    model: nn.Module,
    data: Data,
    d1: Tensor | Params,
    d2: Tensor | Params,
    alphas: Tensor | Sequence[float],
    betas: Tensor | Sequence[float],
    *,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
    progress: Progress | None = None,
) -> Slice2DResult:
    """Loss and accuracy on the plane ``theta + alpha d1 + beta d2``.

    Args:
        model: The model (not mutated; evaluated in eval mode).
        data: ``(inputs [N, ...], targets [N])``.
        d1: First direction (dict or flat ``[P]``), scaled by ``alphas``.
        d2: Second direction, scaled by ``betas``.
        alphas: ``[n]`` values along ``d1``.
        betas: ``[m]`` values along ``d2``.
        chunk_size: Examples per forward pass.
        loss_fn: Mean loss of a chunk; cross-entropy when ``None``.
        progress: Called as ``progress(done, total)`` after each of the ``n * m`` points.

    Returns:
        A :class:`Slice2DResult` with ``[n, m]`` loss and accuracy.
    """
    a_grid, b_grid = _grid(alphas, "alphas"), _grid(betas, "betas")
    theta = param_dict(model)
    u, v = as_params(d1, theta), as_params(d2, theta)
    shape = (a_grid.numel(), b_grid.numel())
    loss = torch.empty(shape, dtype=torch.float64)
    acc = torch.empty(shape, dtype=torch.float64)
    total, done = shape[0] * shape[1], 0
    for i, alpha in enumerate(a_grid.tolist()):
        for j, beta in enumerate(b_grid.tolist()):
            params = _shifted(theta, [(alpha, u), (beta, v)])
            loss[i, j], acc[i, j] = evaluate(model, data, params=params, chunk_size=chunk_size, loss_fn=loss_fn)
            done += 1
            if progress is not None:
                progress(done, total)
    return Slice2DResult(alphas=a_grid, betas=b_grid, loss=loss, accuracy=acc)


def directional_curvature(
    model: nn.Module,
    data: Data,
    direction: Tensor | Params,
    *,
    eps: float = 1e-3,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
) -> float:
    """Second directional derivative by central differences, ``c(v) = (L(t+eps v) - 2 L(t) + L(t-eps v)) / eps^2``.

    The direction is first normalized to unit flat norm, so ``c(v) ~ v^T H v`` with ``||v|| = 1`` (exact for a
    quadratic loss up to rounding; O(eps^2) error otherwise, plus ``~machine_eps * L / eps^2`` of cancellation,
    so keep ``eps`` well above ``sqrt(machine_eps)`` in float32).

    Args:
        model: The model (not mutated; evaluated in eval mode).
        data: ``(inputs [N, ...], targets [N])``.
        direction: A parameter dict or flat vector ``[P]``, non-zero.
        eps: Step length (> 0) along the unit direction.
        chunk_size: Examples per forward pass.
        loss_fn: Mean loss of a chunk; cross-entropy when ``None``.

    Returns:
        The curvature as a Python float.
    """
    check_positive("eps", eps)
    theta = param_dict(model)
    d = as_params(direction, theta)
    norm = float(torch.linalg.vector_norm(flatten(d)))
    if not norm > 0:
        raise ValueError("Expected a non-zero direction, got norm 0")

    def loss_at(step: float) -> float:
        params = _shifted(theta, [(step / norm, d)])
        return evaluate(model, data, params=params, chunk_size=chunk_size, loss_fn=loss_fn)[0]

    return (loss_at(eps) - 2 * loss_at(0.0) + loss_at(-eps)) / eps**2
