"""Linear mode connectivity: the linear path between two minima, its barriers, and permutation alignment.

``align`` is weight matching (Ainsworth et al. 2022, "Git Re-Basin", Algorithm 1): model B's hidden units are
permuted so that its weights are as close as possible to model A's, without changing the function B computes. Which
permutations act on which parameter axes is the architecture's :class:`~landscape_core.permutations.PermutationSpec`
(``model.permutation_spec()``, or one passed in); nothing here knows any particular architecture.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from landscape_core.common import check_count
from landscape_core.functional import DEFAULT_CHUNK, Data, LossFn, evaluate, param_dict
from landscape_core.permutations import ParamAxes, PermutationSpec, permute_param

__all__ = [
    "BarrierResult",
    "InterpolationResult",
    "ParamAxes",
    "PermutationSpec",
    "align",
    "apply_permutations",
    "barrier",
    "barriers_between",
    "interpolate",
    "spec_of",
    "weight_matching",
]


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
    dtype: torch.dtype | None = None,
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
        dtype: the forward passes' arithmetic (``functional.evaluate``); None: the models' own.

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
        loss, acc = evaluate(model_a, data, params=params, chunk_size=chunk_size, loss_fn=loss_fn, dtype=dtype)
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


def barriers_between(
    model_a: nn.Module,
    model_b: nn.Module,
    sets: Mapping[str, Data],
    *,
    points: int,
    aligned_b: nn.Module | None = None,
    dtype: torch.dtype | None = None,
) -> dict[tuple[str, bool], tuple[InterpolationResult, BarrierResult]]:
    """The linear path from A to B on each named data set, and from A to ``aligned_b`` (B weight-matched to A by
    :func:`align`) when given.

    Returns:
        ``{(set name, aligned): (path, barriers)}`` over ``points`` evenly spaced ``a`` in [0, 1].
    """
    alphas = torch.linspace(0.0, 1.0, points, dtype=torch.float64).tolist()
    endpoints = {False: model_b} | ({True: aligned_b} if aligned_b is not None else {})
    out = {}
    for aligned, endpoint in endpoints.items():
        for name, data in sets.items():
            path = interpolate(model_a, endpoint, data, alphas, dtype=dtype)
            out[(name, aligned)] = (path, barrier(path))
    return out


# --------------------------------------------------------------------------------------------------- weight matching


def spec_of(model: nn.Module, spec: PermutationSpec | None = None) -> PermutationSpec:
    """``spec`` if given, else the model's own ``model.permutation_spec()``.

    Raises:
        ValueError: neither is there.
    """
    if spec is not None:
        return spec
    declare = getattr(model, "permutation_spec", None)
    if not callable(declare):
        raise ValueError(
            f"Expected a model with a `permutation_spec()` method or a `spec` argument, got {type(model).__name__} "
            "without either"
        )
    return declare()


def _float64_params(model: nn.Module, spec: PermutationSpec) -> dict[str, Tensor]:
    """The spec's parameters of ``model`` in float64 on the CPU, each in its spec view."""
    params = dict(model.named_parameters())
    spec.sizes(params)  # every spec parameter exists and every permutation has one size
    return {name: spec.viewed(name, params[name].detach().to(device="cpu", dtype=torch.float64)) for name in spec}


def _check_same_shapes(model_a: nn.Module, model_b: nn.Module, spec: PermutationSpec) -> None:
    shapes_a = {name: p.shape for name, p in model_a.named_parameters()}
    shapes_b = {name: p.shape for name, p in model_b.named_parameters()}
    for name in spec:
        if name in shapes_a and name in shapes_b and shapes_a[name] != shapes_b[name]:
            raise ValueError(
                f"Expected parameter {name!r} of the same shape in both models, got {tuple(shapes_a[name])} and "
                f"{tuple(shapes_b[name])}"
            )


def _cost(
    spec: PermutationSpec, a: dict[str, Tensor], b: dict[str, Tensor], perms: dict[str, Tensor], perm: str, n: int
) -> np.ndarray:
    """``C[j, k]``: the terms of the weight-matching objective ``sum <W_A, pi(W_B)>`` that involve ``perm``, if B's
    unit ``k`` is moved to position ``j``: for every ``(parameter, axis)`` that ``perm`` acts on, A's weight with that
    axis first, flattened to ``[n, -1]``, times B's weight (all its *other* permuted axes permuted by the current
    ``perms``) likewise, transposed; summed in the order of ``spec.perm_to_axes[perm]``."""
    cost = torch.zeros(n, n, dtype=torch.float64)
    for name, axis in spec.perm_to_axes[perm]:
        w_a = torch.movedim(a[name], axis, 0).reshape(n, -1)
        w_b = torch.movedim(permute_param(spec, name, b[name], perms, except_axis=axis), axis, 0).reshape(n, -1)
        cost += w_a @ w_b.T
    return cost.numpy()


def weight_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    spec: PermutationSpec | None = None,
    seed: int = 0,
    max_iter: int = 100,
) -> dict[str, Tensor]:
    """Permutations of B's hidden units that maximize ``sum_params <W^A, pi(W^B)>`` over the permutation spec.

    Coordinate descent (Ainsworth et al. 2022, Algorithm 1, as git-re-basin's ``weight_matching``): starting from
    identities, repeatedly visit the permutations in a random order (a fresh order per sweep,
    ``np.random.default_rng(seed).permutation(n_perms)`` over ``spec.perm_names``) and solve each one's linear
    assignment with the others fixed (``scipy.optimize.linear_sum_assignment``, maximizing); a new permutation is only
    taken when it strictly improves the objective (``new > old + 1e-12 max(1, |old|)``), and the descent stops after a
    sweep that changes nothing, or after ``max_iter`` sweeps. Computed in float64 on the CPU.

    Args:
        model_a: the reference model; not modified.
        model_b: the model to permute (same architecture); not modified.
        spec: which permutation acts on which parameter axis; ``model_a.permutation_spec()`` when None.
        seed: seeds the visiting order.
        max_iter: the most sweeps (>= 1).

    Returns:
        ``{permutation name: perm [n]}``, e.g. ``{"P_conv1": ..., "P_conv2": ..., "P_fc1": ...}`` for SeedCNN, in
        the order of ``spec.perm_names``: B's unit ``perm[j]`` goes to position ``j``.

    Raises:
        ValueError: no spec, a spec that does not fit the models, or models of different shapes.
    """
    check_count("max_iter", max_iter)
    spec = spec_of(model_a, spec)
    _check_same_shapes(model_a, model_b, spec)
    a, b = _float64_params(model_a, spec), _float64_params(model_b, spec)
    sizes = spec.sizes(a)
    names = spec.perm_names
    perms = {p: torch.arange(sizes[p]) for p in names}
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        changed = False
        for i in rng.permutation(len(names)):
            p = names[int(i)]
            cost = _cost(spec, a, b, perms, p, sizes[p])
            rows = np.arange(cost.shape[0])
            old = cost[rows, perms[p].numpy()].sum()
            _, cols = linear_sum_assignment(cost, maximize=True)
            new = cost[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[p] = torch.as_tensor(cols, dtype=torch.long)
                changed = True
        if not changed:
            break
    return perms


def apply_permutations(
    model: nn.Module, perms: Mapping[str, Tensor], *, spec: PermutationSpec | None = None
) -> nn.Module:
    """A deep copy of ``model`` with its hidden units permuted: it computes exactly the same function.

    Args:
        model: the model to copy; not modified.
        perms: ``{permutation name: perm [n]}`` as ``weight_matching`` returns; unit ``perm[j]`` moves to ``j`` on
            every axis the permutation acts on. Permutations not named are the identity.
        spec: the permutation spec; ``model.permutation_spec()`` when None.

    Returns:
        The permuted copy (same dtype, device, memory layout, train flag and requires_grad flags as ``model``).
    """
    spec = spec_of(model, spec)
    unknown = sorted(set(perms) - set(spec.perm_names))
    if unknown:
        raise ValueError(f"Expected permutations among {list(spec.perm_names)}, got {unknown}")
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    spec.sizes(params)
    with torch.no_grad():
        for name in spec:
            if not any(p in perms for p in spec.axes[name].perms if p is not None):
                continue
            param = params[name]
            param.copy_(permute_param(spec, name, param.detach().clone(), perms).reshape(param.shape))
    return out


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    spec: PermutationSpec | None = None,
    seed: int = 0,
    max_iter: int = 100,
) -> nn.Module:
    """Model B with its hidden units permuted towards model A by weight matching (Ainsworth et al. 2022).

    The permutations are those of the spec (``model_a.permutation_spec()`` by default; for SeedCNN the conv1
    channels, conv2 channels and fc1 units); the result computes exactly the function B computes. See
    ``weight_matching`` for the algorithm.

    Args:
        model_a: the reference; not modified.
        model_b: the model to align; not modified (the result is a deep copy).
        spec: the permutation spec; ``model_a.permutation_spec()`` when None.
        seed: seeds the coordinate-descent order.
        max_iter: the most coordinate-descent sweeps.

    Returns:
        A new ``nn.Module``: B, permuted.
    """
    spec = spec_of(model_a, spec)
    perms = weight_matching(model_a, model_b, spec=spec, seed=seed, max_iter=max_iter)
    return apply_permutations(model_b, perms, spec=spec)
