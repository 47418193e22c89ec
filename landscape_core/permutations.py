"""Permutation specs: which hidden-unit permutation acts on which axis of which parameter (git-re-basin style).

A network's hidden units can be reordered without changing the function it computes, as long as every parameter that
reads or writes those units is permuted consistently. A :class:`PermutationSpec` says, for each parameter name, which
named permutation acts on each of its axes (or None). An architecture declares its own spec
(``model.permutation_spec()``, see :mod:`landscape_core.models`); :mod:`landscape_core.connectivity` is generic over it.

A parameter can be viewed in another shape first: a linear layer after a flatten reads ``C * H * W`` inputs, which are
``[C, H*W]`` channel-major, so ``fc1.weight [hidden, C*H*W]`` is viewed as ``[hidden, C, H*W]`` and permuted on ``C``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor

__all__ = ["ParamAxes", "PermutationSpec", "permute_param"]


@dataclass(frozen=True)
class ParamAxes:
    """The permutations acting on one parameter, axis by axis.

    Attributes:
        perms: one entry per axis of the (viewed) parameter: the name of the permutation acting on it, or None.
        view: the shape the parameter is viewed in before permuting (same number of elements, as many axes as
            ``perms``); None: the parameter's own shape.
    """

    perms: tuple[str | None, ...]
    view: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "perms", tuple(self.perms))
        if self.view is not None:
            object.__setattr__(self, "view", tuple(int(n) for n in self.view))
            if len(self.view) != len(self.perms):
                raise ValueError(f"Expected `view` with {len(self.perms)} axes (one per perm), got {self.view}")
        named = [p for p in self.perms if p is not None]
        if len(set(named)) != len(named):
            raise ValueError(f"Expected each permutation at most once per parameter, got {self.perms}")


@dataclass(frozen=True)
class PermutationSpec:
    """Parameter name -> :class:`ParamAxes`, and the inverse map permutation -> ``[(parameter, axis), ...]``.

    Parameters a spec does not name are never permuted. Permutations are listed in the order they first appear,
    parameter by parameter, axis by axis (``perm_names``); ``perm_to_axes[p]`` lists the ``(parameter, axis)`` pairs
    of ``p`` in the same order, which is the order their terms are summed in weight matching's cost matrix.
    """

    axes: Mapping[str, ParamAxes]
    perm_to_axes: Mapping[str, tuple[tuple[str, int], ...]] = field(init=False)

    def __post_init__(self) -> None:
        axes = {}
        for name, entry in self.axes.items():
            if not isinstance(entry, ParamAxes):
                entry = ParamAxes(tuple(entry))
            axes[name] = entry
        inverse: dict[str, list[tuple[str, int]]] = {}
        for name, entry in axes.items():
            for axis, perm in enumerate(entry.perms):
                if perm is not None:
                    inverse.setdefault(perm, []).append((name, axis))
        object.__setattr__(self, "axes", MappingProxyType(axes))
        object.__setattr__(self, "perm_to_axes", MappingProxyType({p: tuple(v) for p, v in inverse.items()}))

    @property
    def perm_names(self) -> tuple[str, ...]:
        """The permutations, in the order they first appear."""
        return tuple(self.perm_to_axes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.axes)

    def viewed(self, name: str, param: Tensor) -> Tensor:
        """``param`` in the view its spec entry declares (a view when possible), checked against the entry."""
        entry = self.axes[name]
        shape = entry.view if entry.view is not None else tuple(param.shape)
        if len(shape) != len(entry.perms) or (entry.view is not None and _numel(shape) != param.numel()):
            raise ValueError(
                f"Expected parameter {name!r} to fit its spec entry ({len(entry.perms)} axes, view {entry.view}), "
                f"got shape {tuple(param.shape)}"
            )
        return param.reshape(shape)

    def sizes(self, params: Mapping[str, Tensor]) -> dict[str, int]:
        """Each permutation's size, read from ``params`` (checked: every axis it acts on has that size)."""
        missing = [name for name in self.axes if name not in params]
        if missing:
            raise ValueError(f"Expected the spec's parameters {missing} in the model, got {sorted(params)}")
        sizes: dict[str, int] = {}
        for perm, pairs in self.perm_to_axes.items():
            for name, axis in pairs:
                n = self.viewed(name, params[name]).shape[axis]
                if sizes.setdefault(perm, n) != n:
                    raise ValueError(f"Expected permutation {perm!r} of one size, got {sizes[perm]} and {n} ({name!r})")
        return sizes


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def permute_param(
    spec: PermutationSpec, name: str, param: Tensor, perms: Mapping[str, Tensor], *, except_axis: int | None = None
) -> Tensor:
    """``param`` in its spec view with every named permutation in ``perms`` applied on its axis (``except_axis``
    left alone): entry ``j`` of a permuted axis takes entry ``perm[j]``. Permutations absent from ``perms`` are the
    identity. The result keeps the view's shape."""
    w = spec.viewed(name, param)
    for axis, perm in enumerate(spec.axes[name].perms):
        if axis == except_axis or perm is None or perm not in perms:
            continue
        w = torch.index_select(w, axis, perms[perm].to(w.device))
    return w
