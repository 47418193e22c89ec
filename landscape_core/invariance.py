"""Function-preserving rescalings (Dinh et al. 2017) and the audit of which measures they change.

A ReLU is positively homogeneous, ``relu(a z) = a relu(z)`` for ``a > 0``, and so is max-pooling. Multiplying one
layer's weights and bias by ``a`` and dividing the next layer's weights by ``a`` therefore leaves the network's
function unchanged, while moving its parameters. A measure that changes under such a rescaling describes the
parametrization, not the function: ranking models by it says nothing about their minima (Dinh et al. 2017, "Sharp
minima can generalize for deep nets"). Each architecture names its layer pairs, ``model.rescaling_pairs()``.

:func:`audit` recomputes a set of measures on rescaled copies of one minimum, checks first that each copy computes the
same function, and reports per measure the ratio max / min over the original and its copies: 1 for an invariant
measure, 11.7 for lambda_max at a = 10 on a quick SeedCNN. The copies are either every pair at every factor, or (the
default, ``combined``) one copy per factor that moves every pair at once: pair k of n at ``a ** min(k, n + 1 - k)``,
so that on a chain of layers every layer's weights move by ``a`` or ``1 / a`` (on the paper's CNN: conv1 and conv2
times a, fc1 and fc2 divided by a; the biases times a, a^2, a).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from landscape_core.common import check
from landscape_core.functional import Params

__all__ = [
    "INVARIANT_RATIO",
    "InvarianceAudit",
    "CombinedRescaling",
    "Rescaling",
    "audit",
    "ratio",
    "rescale_params",
    "rescaled",
    "rescalings",
]

#: A measure whose max / min over the rescalings stays at or below this counts as invariant. Exactly invariant
#: measures come out at 1 up to float32 rounding and the discrete choices it can flip (an ascent's sign step, a
#: bisection branch); 5% leaves room for that and is far below what a non-invariant measure shows (x1.5-x100).
INVARIANT_RATIO = 1.05
#: The largest relative change of the logits a rescaled copy may show and still count as the same function.
OUTPUT_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


@dataclass(frozen=True)
class Rescaling:
    """Multiply layer ``scaled``'s weight and bias by ``factor`` and layer ``divided``'s weight by 1 / ``factor``."""

    scaled: str
    divided: str
    factor: float

    @property
    def label(self) -> str:
        return f"{self.scaled}x{self.factor:g}/{self.divided}"

    @property
    def steps(self) -> tuple[Rescaling, ...]:
        return (self,)


@dataclass(frozen=True)
class CombinedRescaling:
    """Several pair rescalings applied in order: one function-preserving rescaling of the whole network."""

    steps: tuple[Rescaling, ...]
    factor: float

    @property
    def label(self) -> str:
        return f"all pairs x{self.factor:g}"


def rescalings(
    model: nn.Module, factors: Sequence[float], *, combined: bool = False
) -> list[Rescaling | CombinedRescaling]:
    """Every layer pair of ``model.rescaling_pairs()`` at every factor (> 0); with ``combined``, one rescaling per
    factor a that moves pair k of n at ``a ** min(k, n + 1 - k)`` (module docstring)."""
    check(bool(factors) and all(math.isfinite(a) and a > 0 for a in factors), "factors", "non-empty and > 0", factors)
    pairs = getattr(model, "rescaling_pairs", None)
    if pairs is None:
        raise TypeError(f"{type(model).__name__} declares no rescaling_pairs(); it cannot be audited")
    if not combined:
        return [Rescaling(first, second, float(a)) for first, second in pairs() for a in factors]
    n = len(pairs())
    return [
        CombinedRescaling(
            tuple(
                Rescaling(first, second, float(a) ** min(k, n + 1 - k)) for k, (first, second) in enumerate(pairs(), 1)
            ),
            float(a),
        )
        for a in factors
    ]


def rescale_params(params: Params, rescaling: Rescaling | CombinedRescaling) -> Params:
    """A new parameter dict (by name, ``param_dict`` style) with the rescaling applied; ``params`` is unchanged."""
    out = dict(params)
    for step in rescaling.steps:
        a = step.factor
        for name in (f"{step.scaled}.weight", f"{step.scaled}.bias", f"{step.divided}.weight"):
            if name not in params:
                raise KeyError(f"the rescaling {step.label} needs parameter {name!r}, which the model lacks")
        out[f"{step.scaled}.weight"] = out[f"{step.scaled}.weight"] * a
        out[f"{step.scaled}.bias"] = out[f"{step.scaled}.bias"] * a
        out[f"{step.divided}.weight"] = out[f"{step.divided}.weight"] / a
    return out


def rescaled(model: nn.Module, rescaling: Rescaling | CombinedRescaling) -> nn.Module:
    """A copy of ``model`` with the rescaling applied (same layout, dtype and device; ``model`` is unchanged)."""
    copy_ = copy.deepcopy(model)
    new = rescale_params({n: p.detach() for n, p in model.named_parameters()}, rescaling)
    with torch.no_grad():
        for name, p in copy_.named_parameters():
            p.copy_(new[name])
    return copy_


def ratio(values: Sequence[float]) -> float:
    """max / min of ``values``: 1 when all are equal (zeros included), inf when they differ and one is 0 or their
    signs differ, NaN when one is not finite. For negative values, the ratio of their magnitudes."""
    if not values or not all(math.isfinite(v) for v in values):
        return math.nan
    low, high = min(values), max(values)
    if low == high:
        return 1.0
    if low <= 0 <= high:
        return math.inf
    magnitudes = [abs(v) for v in values]
    return max(magnitudes) / min(magnitudes)


@dataclass(frozen=True)
class InvarianceAudit:
    """Measures of one minimum and of its rescaled copies.

    Attributes:
        rescalings: the labels of the copies (``conv1x10/conv2``), in order.
        values: per measure, its value on the original then on each copy, in order.
        output_change: per copy, the largest relative change of its logits from the original's (function check).
    """

    rescalings: tuple[str, ...]
    values: dict[str, tuple[float, ...]]
    output_change: tuple[float, ...]

    @property
    def ratios(self) -> dict[str, float]:
        """Per measure, max / min over the original and its copies (:func:`ratio`)."""
        return {key: ratio(list(v)) for key, v in self.values.items()}

    def invariant(self, key: str) -> bool:
        """True when the measure's ratio is at most ``INVARIANT_RATIO``."""
        return self.ratios[key] <= INVARIANT_RATIO

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InvarianceAudit:
        """The audit back from :meth:`to_dict`'s JSON (a null value reads as NaN)."""
        return cls(
            rescalings=tuple(data["rescalings"]),
            values={
                key: tuple(math.nan if v is None else float(v) for v in row["values"])
                for key, row in data["measures"].items()
            },
            output_change=tuple(float(c) for c in data["output_change"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the rescalings, per measure its values, ratio and whether it counts as invariant."""

        def safe(x: float) -> float | None:
            return x if math.isfinite(x) else None

        ratios = self.ratios
        return {
            "rescalings": list(self.rescalings),
            "invariant_ratio": INVARIANT_RATIO,
            "output_change": list(self.output_change),
            "measures": {
                key: {
                    "values": [safe(v) for v in values],
                    "ratio": safe(ratios[key]) if not math.isinf(ratios[key]) else "inf",
                    "invariant": bool(ratios[key] <= INVARIANT_RATIO),
                }
                for key, values in self.values.items()
            },
        }


@torch.no_grad()
def _output_change(model: nn.Module, other: nn.Module, inputs: Tensor) -> float:
    was = model.training, other.training
    model.eval(), other.eval()
    try:
        a, b = model(inputs), other(inputs)
    finally:
        model.train(was[0]), other.train(was[1])
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


def audit(
    model: nn.Module,
    measure: Callable[[nn.Module, Params | None], Mapping[str, float]],
    *,
    factors: Sequence[float] = (0.5, 2.0, 10.0),
    combined: bool = False,
    inputs: Tensor,
    init_params: Params | None = None,
    original: Mapping[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> InvarianceAudit:
    """Recompute ``measure`` on every function-preserving rescaling of ``model`` and collect the values.

    Args:
        model: the minimum (unchanged by this call).
        measure: ``measure(model, init_params) -> {key: value}``, e.g. ``landscape_core.measure.measure``'s scalars.
        factors: the rescaling factors, each applied to every layer pair (:func:`rescalings`).
        combined: one copy per factor that moves every pair at once (:func:`rescalings`), not one per pair.
        inputs: images on which each copy must compute the same logits as ``model``.
        init_params: the initial weights, rescaled with the model (for measures that read them), or None.
        original: the measures of ``model`` itself when already computed (saves one call).
        progress: called as ``progress(done, total)`` after each copy.

    Returns:
        The audit; measures missing from some call are dropped.

    Raises:
        ValueError: a copy does not compute the same function (a wrong ``rescaling_pairs()``).
    """
    plan = rescalings(model, factors, combined=combined)
    base = dict(original) if original is not None else dict(measure(model, init_params))
    runs: list[Mapping[str, float]] = [base]
    changes = []
    dtype = next(model.parameters()).dtype
    tolerance = OUTPUT_TOLERANCE.get(dtype, 1e-3)
    for done, r in enumerate(plan, start=1):
        copy_ = rescaled(model, r)
        change = _output_change(model, copy_, inputs)
        if not change <= tolerance:
            raise ValueError(
                f"the rescaling {r.label} changed the logits by {change:.2g} (relative) > {tolerance:g}: "
                f"{type(model).__name__}.rescaling_pairs() does not describe a function-preserving rescaling"
            )
        changes.append(change)
        init = rescale_params(init_params, r) if init_params is not None else None
        runs.append(dict(measure(copy_, init)))
        if progress is not None:
            progress(done, len(plan))
    common = [k for k in base if all(k in run for run in runs)]
    return InvarianceAudit(
        rescalings=tuple(r.label for r in plan),
        values={k: tuple(float(run[k]) for run in runs) for k in common},
        output_change=tuple(changes),
    )
