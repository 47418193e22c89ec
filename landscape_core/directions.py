"""Directions in parameter space for loss slices: Gaussian, filter-normalized (Li et al. 2018), orthogonal pairs and
Hessian eigenvectors.

A direction is a parameter dict (``Params``) with the names and shapes of ``model.named_parameters()``; flat vectors
``[P]`` in the same order are accepted wherever a direction is read (see :func:`as_params`). Every function returns
new tensors; none touches the model. Gaussian draws follow landscape_core's one seeded-generator rule
(:mod:`landscape_core.rng`): a CPU ``torch.Generator`` from the seed, float64 draws, then cast to each parameter's
dtype and moved to its device, so a seed gives the same direction on every device.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from landscape_core import rng
from landscape_core.functional import Params, flatten, param_dict, unflatten

__all__ = [
    "as_params",
    "eigen_direction",
    "filter_normalize",
    "orthogonal_pair",
    "random_direction",
    "random_filter_normalized",
    "to_flat",
]


def _like(like: nn.Module | Params) -> Params:
    return param_dict(like) if isinstance(like, nn.Module) else like


def as_params(direction: Tensor | Params, like: nn.Module | Params) -> Params:
    """A direction as a parameter dict shaped like ``like`` (a model or a parameter dict).

    Args:
        direction: A flat vector ``[P]`` (order of ``named_parameters()``) or a dict with exactly the names of
            ``like`` and the same shapes.
        like: The model or parameters whose names, shapes, dtype and device the result takes.

    Returns:
        A new dict ``{name: Tensor}``; flat input is copied, never a view of the caller's tensor.

    Raises:
        ValueError: On a wrong size, missing or extra names, or mismatched shapes.
    """
    like = _like(like)
    if isinstance(direction, dict):
        if set(direction) != set(like):
            raise ValueError(f"Expected a direction with names {sorted(like)}, got {sorted(direction)}")
        out = {}
        for name, ref in like.items():
            d = torch.as_tensor(direction[name])
            if d.shape != ref.shape:
                raise ValueError(f"Expected `{name}` of shape {tuple(ref.shape)}, got {tuple(d.shape)}")
            out[name] = d.detach().to(device=ref.device, dtype=ref.dtype).clone()
        return out
    vector = torch.as_tensor(direction)
    size = sum(p.numel() for p in like.values())
    if vector.ndim != 1 or vector.numel() != size:
        raise ValueError(f"Expected a flat direction of shape [{size}], got {tuple(vector.shape)}")
    return {
        name: piece.to(device=like[name].device, dtype=like[name].dtype).clone()
        for name, piece in unflatten(vector.detach(), like).items()
    }


def to_flat(direction: Tensor | Params) -> Tensor:
    """A direction as a flat vector ``[P]`` (dicts are concatenated in their own order, i.e. ``named_parameters()``)."""
    return flatten(direction) if isinstance(direction, dict) else torch.as_tensor(direction).reshape(-1)


def _gaussian(like: Params, generator: torch.Generator) -> Params:
    return {name: rng.randn(p.shape, generator, dtype=p.dtype, device=p.device) for name, p in like.items()}


def random_direction(model: nn.Module, *, seed: int = 0) -> Params:
    """A standard Gaussian direction shaped like the model's parameters.

    Args:
        model: The model (only read).
        seed: Seeds the draw.

    Returns:
        ``{name: Tensor}`` with each tensor shaped like the parameter, in its dtype and device.
    """
    return _gaussian(param_dict(model), rng.generator(seed))


def filter_normalize(direction: Tensor | Params, params: Params, *, ignore_1d: bool = True) -> Params:
    """Filter normalization (Li et al. 2018): each filter of ``direction`` rescaled to the norm of ``params``' filter.

    For a parameter with ``ndim >= 2`` a filter is a slice along dim 0 (an output channel of a conv, a row, i.e. an
    output neuron, of a linear layer): ``d_f <- d_f * ||theta_f|| / ||d_f||`` exactly (Li et al.'s code adds 1e-10
    to the denominator; here an all-zero filter of ``d`` simply stays zero). Parameters with ``ndim <= 1`` (biases,
    norm scales) are zeroed when ``ignore_1d`` (the default, Li et al.'s ``biasbn``); otherwise they are normalized
    as a whole, like a single filter (``d <- d * ||theta|| / ||d||``), which differs from Li et al.'s code, which
    copies ``theta`` into ``d`` there.

    Args:
        direction: A dict or flat vector ``[P]`` shaped like ``params``.
        params: The point ``theta`` whose filter norms the direction takes.
        ignore_1d: Zero the 1-D parameters (default) or normalize them as a whole.

    Returns:
        A new dict; the inputs are not modified.
    """
    direction = as_params(direction, params)
    out = {}
    for name, theta in params.items():
        d = direction[name]
        if d.ndim <= 1:
            if ignore_1d:
                out[name] = torch.zeros_like(d)
            else:
                out[name] = d * _ratio(torch.linalg.vector_norm(theta), torch.linalg.vector_norm(d))
            continue
        d_norms = torch.linalg.vector_norm(d.reshape(d.shape[0], -1), dim=1)
        t_norms = torch.linalg.vector_norm(theta.reshape(theta.shape[0], -1), dim=1)
        out[name] = d * _ratio(t_norms, d_norms).reshape(-1, *([1] * (d.ndim - 1)))
    return out


def _ratio(target: Tensor, current: Tensor) -> Tensor:
    """``target / current``, and 0 where ``current`` is 0 (an all-zero filter stays zero)."""
    safe = torch.where(current > 0, current, torch.ones_like(current))
    return torch.where(current > 0, target / safe, torch.zeros_like(current))


def random_filter_normalized(model: nn.Module, *, seed: int = 0, ignore_1d: bool = True) -> Params:
    """A Gaussian direction (from ``seed``), filter-normalized to the model's weights (see :func:`filter_normalize`)."""
    return filter_normalize(random_direction(model, seed=seed), param_dict(model), ignore_1d=ignore_1d)


def orthogonal_pair(model: nn.Module, *, seed: int = 0, ignore_1d: bool = True) -> tuple[Params, Params]:
    """Two filter-normalized Gaussian directions, the second made orthogonal to the first, for 2D slices.

    Both are drawn from one generator seeded with ``seed`` and filter-normalized; then, in the flat sense,
    ``d2 <- d2 - (d2.d1 / d1.d1) d1`` (Gram-Schmidt) and ``d2`` is rescaled to ``||d1||``. The projection slightly
    perturbs ``d2``'s per-filter norms (exactly orthogonal and equal-norm, approximately filter-normalized; for
    ``P`` large the correction is ``O(1/sqrt(P))``). Zeroed 1-D parameters stay zero.

    Returns:
        ``(d1, d2)`` dicts shaped like the model's parameters.
    """
    theta = param_dict(model)
    generator = rng.generator(seed)
    d1 = filter_normalize(_gaussian(theta, generator), theta, ignore_1d=ignore_1d)
    d2 = filter_normalize(_gaussian(theta, generator), theta, ignore_1d=ignore_1d)
    f1, f2 = flatten(d1), flatten(d2)
    f2 = f2 - (f2 @ f1) / (f1 @ f1) * f1
    f2 = f2 - (f2 @ f1) / (f1 @ f1) * f1  # a second pass removes the rounding left by the first
    f2 = f2 * (torch.linalg.vector_norm(f1) / torch.linalg.vector_norm(f2))
    return d1, as_params(f2, theta)


def eigen_direction(vector: Tensor, like: nn.Module | Params) -> Params:
    """A flat eigenvector ``[P]`` (e.g. a row of ``EigenResult.eigenvectors``) as a unit-norm parameter dict.

    Args:
        vector: Flat ``[P]``, non-zero.
        like: The model or parameter dict giving names, shapes, dtype and device.

    Returns:
        A dict whose flat form has norm 1.
    """
    vector = torch.as_tensor(vector).detach().reshape(-1)
    norm = torch.linalg.vector_norm(vector)
    if not bool(norm > 0):
        raise ValueError("Expected a non-zero eigenvector, got norm 0")
    return as_params(vector / norm, like)
