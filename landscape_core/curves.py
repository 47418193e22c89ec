"""Mode connectivity along a curve: a quadratic Bezier curve between two minima, with one trained bend.

Garipov et al. 2018 ("Loss surfaces, mode connectivity, and fast ensembling of DNNs"; the dnn-mode-connectivity
repository): two minima ``theta_A`` (``start``) and ``theta_B`` (``end``) are joined by

    ``theta(t) = (1 - t)^2 theta_A + 2 t (1 - t) theta_bend + t^2 theta_B``,  ``t`` in [0, 1],

and only the bend is trained, by SGD on ``E_{t ~ U(0, 1)} L(theta(t))`` (:func:`train_bend`). The loss along the
trained curve (:func:`curve_path`) is an :class:`~landscape_core.connectivity.InterpolationResult` with
``alphas = ts``, so :func:`connectivity.barrier` gives the curve's loss and error barriers with the very definitions
of the linear path's. :class:`Plane` is the plane through the three points, on which the whole curve lies: the loss
over it (:func:`plane_loss`) is the paper's figure of a curved valley between two minima.

Every evaluation goes through :mod:`landscape_core.functional` (``functional_call`` at parameter dicts, eval mode);
the model is never modified, and neither are the endpoints. Randomness (the mini-batch order and each mini-batch's
``t``) comes from a CPU ``torch.Generator`` passed in (``rng.generator(seed)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from landscape_core import rng
from landscape_core.common import check, check_count, check_positive
from landscape_core.connectivity import InterpolationResult
from landscape_core.functional import (
    DEFAULT_CHUNK,
    Data,
    LossFn,
    Params,
    eval_mode,
    evaluate,
    flatten,
    loss_at,
    unflatten,
)
from landscape_core.train import DivergenceError

__all__ = [
    "COLLINEAR_RTOL",
    "Plane",
    "bezier_params",
    "curve_path",
    "plane_grid",
    "plane_loss",
    "plane_through",
    "train_bend",
]

#: :func:`plane_through` refuses a bend whose distance from the line through the endpoints is at most this fraction
#: of its distance from the start: the plane is then not defined (an untrained bend, at the midpoint, is on the line).
COLLINEAR_RTOL = 1e-6

Values = Sequence[float] | Tensor | np.ndarray


def _check_like(params: Params, like: Params, name: str) -> None:
    """Raise ``ValueError`` unless ``params`` has exactly the names of ``like``, each of the same shape."""
    if set(params) != set(like):
        raise ValueError(f"Expected `{name}` with the parameter names {sorted(like)}, got {sorted(params)}")
    for key, ref in like.items():
        if params[key].shape != ref.shape:
            raise ValueError(f"Expected `{name}[{key!r}]` of shape {tuple(ref.shape)}, got {tuple(params[key].shape)}")


def _aligned(params: Params, like: Params, name: str) -> Params:
    """``params`` checked against ``like`` (:func:`_check_like`), detached, in ``like``'s order and on each entry's
    dtype and device."""
    _check_like(params, like, name)
    return {key: params[key].detach().to(ref) for key, ref in like.items()}


def _points(model: nn.Module, start: Params, *others: tuple[Params, str]) -> list[Params]:
    """``start`` checked against ``model``'s parameter names and shapes and detached (in the model's order, with its
    own dtypes and device), then each of ``others`` (``(params, name)``) checked against it and cast to it."""
    own = dict(model.named_parameters())
    if not own:
        raise ValueError("Expected a model with parameters, got none")
    _check_like(start, own, "start")
    start = {key: start[key].detach() for key in own}
    return [start, *(_aligned(params, start, name) for params, name in others)]


def _check_data(data: Data) -> int:
    inputs, targets = data
    n = inputs.shape[0]
    check(n >= 1, "data", "with at least one example", n)
    check(targets.shape[0] == n, "targets", f"of length {n} (one per input)", tuple(targets.shape))
    return n


def _ts(values: Values, name: str) -> list[float]:
    out = [float(t) for t in (values.tolist() if hasattr(values, "tolist") else values)]
    if not out:
        raise ValueError(f"Expected at least one value in `{name}`, got none")
    if not all(math.isfinite(t) for t in out):
        raise ValueError(f"Expected finite `{name}`, got {out}")
    return out


def bezier_params(t: float, start: Params, bend: Params, end: Params) -> Params:
    """The quadratic Bezier curve at ``t``: ``(1 - t)^2 start + 2 t (1 - t) bend + t^2 end``, per parameter.

    The three weights are Python floats, so ``t = 0`` gives ``1 * start + 0 * bend + 0 * end``, which is ``start``
    bit for bit (and ``t = 1`` gives ``end``); at ``t = 1/2`` the point is ``start / 4 + bend / 2 + end / 4``. The
    result is differentiable in the three dicts (:func:`train_bend` trains ``bend`` through it).

    Args:
        t: the curve's parameter; ``[0, 1]`` traces the curve from ``start`` to ``end``.
        start: the parameters at ``t = 0``, by name.
        bend: the control point (same names and shapes); the curve passes through ``(start + 2 bend + end) / 4``.
        end: the parameters at ``t = 1`` (same names and shapes).

    Returns:
        A new parameter dict in the order of ``start``.

    Raises:
        ValueError: a non-finite ``t``, or dicts with other names or shapes.
    """
    check(math.isfinite(t), "t", "finite", t)
    _check_like(bend, start, "bend")
    _check_like(end, start, "end")
    a, b, c = (1.0 - t) ** 2, 2.0 * t * (1.0 - t), t * t
    return {k: a * start[k] + b * bend[k] + c * end[k] for k in start}


def train_bend(
    model: nn.Module,
    start: Params,
    end: Params,
    data: Data,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    generator: torch.Generator,
    loss_fn: LossFn | None = None,
) -> Params:
    """Train the bend of the Bezier curve from ``start`` to ``end`` (Garipov et al. 2018), endpoints fixed.

    The bend starts at the midpoint ``(start + end) / 2``, where the curve is the straight line, and takes SGD steps
    with heavy-ball momentum on ``L(theta(t))`` for one mini-batch at a fresh ``t ~ U(0, 1)``: an unbiased estimate of
    ``E_t L(theta(t))``, the loss averaged along the curve. Each epoch visits ``data`` once in a random order, in
    mini-batches of ``batch_size`` (the last one smaller). Both the order (``torch.randperm``) and every ``t``
    (``rng.rand``) are drawn from ``generator``, in that sequence: the same generator state gives the same bend.

    The loss is ``model``'s, through ``functional_call`` at ``theta(t)`` with the model's buffers and in eval mode,
    as :func:`connectivity.interpolate` evaluates the linear path (the registered models have no batch norm, so eval
    mode changes nothing they compute).

    Args:
        model: gives the architecture and buffers; not modified.
        start: the minimum at ``t = 0``, with ``model``'s parameter names and shapes; not modified.
        end: the minimum at ``t = 1`` (same names and shapes); not modified.
        data: the training set ``(inputs [N, ...], targets [N])``, on the parameters' device.
        epochs: passes over ``data`` (>= 1).
        batch_size: examples per step (>= 1).
        lr: the SGD step size (> 0).
        momentum: heavy-ball momentum in [0, 1).
        generator: a CPU ``torch.Generator`` (``rng.generator(seed)``); advanced by the draws.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; mean cross-entropy by default.

    Returns:
        The trained bend: detached tensors in the order, dtypes and device of ``start``.

    Raises:
        ValueError: bad arguments, or endpoints whose names or shapes are not the model's.
        DivergenceError: an epoch's loss is not finite.
    """
    check_count("epochs", epochs)
    check_count("batch_size", batch_size)
    check_positive("lr", lr)
    check(0.0 <= momentum < 1.0, "momentum", "in [0, 1)", momentum)
    check(
        isinstance(generator, torch.Generator) and generator.device.type == "cpu",
        "generator",
        "a CPU torch.Generator",
        generator,
    )
    start, end = _points(model, start, (end, "end"))
    n = _check_data(data)
    inputs, targets = data
    bend = {k: (0.5 * (start[k] + end[k])).requires_grad_(True) for k in start}
    optimizer = torch.optim.SGD(list(bend.values()), lr=lr, momentum=momentum)
    steps = math.ceil(n / batch_size)
    with eval_mode(model):
        for epoch in range(1, epochs + 1):
            order = torch.randperm(n, generator=generator).to(inputs.device)
            total = torch.zeros((), dtype=torch.float64, device=inputs.device)
            for step in range(steps):
                index = order[step * batch_size : (step + 1) * batch_size]
                t = float(rng.rand(1, generator))
                loss = loss_at(model, bezier_params(t, start, bend, end), (inputs[index], targets[index]), loss_fn)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total = total + loss.detach()
            if not bool(torch.isfinite(total)):  # one check (and one device sync) per epoch
                raise DivergenceError(epoch, steps, float(total))
    return {k: v.detach() for k, v in bend.items()}


def curve_path(
    model: nn.Module,
    start: Params,
    bend: Params,
    end: Params,
    data: Data,
    ts: Values,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | None = None,
) -> InterpolationResult:
    """Loss and accuracy along the Bezier curve, at ``theta(t)`` for each ``t`` (:func:`bezier_params`).

    ``connectivity.barrier(curve_path(...))`` is the curve's loss barrier ``max_t [L(t) - ((1 - t) L_A + t L_B)]``
    and error barrier ``max_t E(t) - (E_A + E_B) / 2``: the linear path's definitions, with ``t`` for ``alpha``
    (include 0 and 1 in ``ts``). Evaluated by ``functional.evaluate`` with ``model``'s architecture and buffers, in
    eval mode.

    Args:
        model: gives the architecture and buffers; not modified.
        start, bend, end: the curve's three points, with ``model``'s parameter names and shapes.
        data: ``(inputs [N, ...], targets [N])``.
        ts: the ``K`` values of ``t``.
        chunk_size: examples per forward chunk.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; mean cross-entropy by default.
        dtype: the forward passes' arithmetic (``functional.evaluate``); None: the parameters' own.

    Returns:
        ``InterpolationResult`` with ``alphas = ts`` and ``[K]`` losses and accuracies.
    """
    start, bend, end = _points(model, start, (bend, "bend"), (end, "end"))
    _check_data(data)
    values = _ts(ts, "ts")
    losses, accs = [], []
    for t in values:
        params = bezier_params(t, start, bend, end)
        loss, acc = evaluate(model, data, params=params, chunk_size=chunk_size, loss_fn=loss_fn, dtype=dtype)
        losses.append(loss)
        accs.append(acc)
    return InterpolationResult(alphas=tuple(values), loss=tuple(losses), accuracy=tuple(accs))


# ------------------------------------------------------------------------------------------------ the curve's plane


@dataclass(frozen=True)
class Plane:
    """The plane through the start, the bend and the end: ``origin + x u + y v``, which holds the whole curve.

    ``u`` is the unit vector from the start to the end and ``v`` the unit vector along the bend's offset from that
    line (Gram-Schmidt, in float64), so the start is at ``(0, 0)``, the end at ``(|end - start|, 0)`` and the bend at
    ``(x_b, y_b)`` with ``y_b > 0``. The curve's point at ``t`` is at ``(1 - t)^2 p_start + 2 t (1 - t) p_bend +
    t^2 p_end`` (:meth:`curve_xy`): the Bezier weights sum to 1.

    Attributes:
        origin: the start, flat ``[P]`` float64 (order of the start's names), on the start's device.
        u: unit ``[P]`` float64, along ``end - start``.
        v: unit ``[P]`` float64, orthogonal to ``u``, in the plane of the bend.
        like: the start as a parameter dict: the names, shapes, dtypes, layouts and device of :meth:`params_at`.
        start_xy: ``(0.0, 0.0)``.
        bend_xy: the bend's coordinates ``(x_b, y_b)``, ``y_b > 0``.
        end_xy: ``(|end - start|, 0.0)``.
    """

    origin: Tensor
    u: Tensor
    v: Tensor
    like: Params
    start_xy: tuple[float, float]
    bend_xy: tuple[float, float]
    end_xy: tuple[float, float]

    @property
    def points_xy(self) -> dict[str, tuple[float, float]]:
        """``{"start": ..., "bend": ..., "end": ...}``: the three points' coordinates."""
        return {"start": self.start_xy, "bend": self.bend_xy, "end": self.end_xy}

    def coordinates(self, params: Params) -> tuple[float, float]:
        """``(x, y)``: the orthogonal projection of ``params`` (the start's names and shapes) onto the plane,
        ``x = <theta - origin, u>`` and ``y = <theta - origin, v>``, in float64."""
        _check_like(params, self.like, "params")
        offset = flatten({k: params[k].detach().to(self.origin) for k in self.like}) - self.origin
        return float(offset @ self.u), float(offset @ self.v)

    def params_at(self, x: float, y: float) -> Params:
        """The parameters at ``origin + x u + y v``, formed in float64 and cast to the start's dtypes and layouts."""
        check(math.isfinite(x) and math.isfinite(y), "(x, y)", "finite", (x, y))
        flat = self.origin + x * self.u + y * self.v
        return {k: p.to(self.like[k].dtype) for k, p in unflatten(flat, self.like).items()}

    def curve_xy(self, ts: Values) -> Tensor:
        """The curve's coordinates at each ``t``: ``[K, 2]`` float64 (``(x, y)`` per row), exact in the plane."""
        t = torch.tensor(_ts(ts, "ts"), dtype=torch.float64)[:, None]
        start, bend, end = (torch.tensor(p, dtype=torch.float64) for p in (self.start_xy, self.bend_xy, self.end_xy))
        return (1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t**2 * end


def plane_through(start: Params, bend: Params, end: Params) -> Plane:
    """The :class:`Plane` through the curve's three points.

    ``u = (end - start) / |end - start|``; ``v`` is ``bend - start`` minus its projections on ``u`` (applied twice,
    classical Gram-Schmidt with reorthogonalization), normalized. All in float64, on the start's device.

    Args:
        start, bend, end: parameter dicts with the same names and shapes (the others are cast to the start's dtypes).

    Raises:
        ValueError: mismatched dicts, ``end == start``, or a bend on the line through them (within
            :data:`COLLINEAR_RTOL`): no plane.
    """
    start = {k: p.detach() for k, p in start.items()}
    bend, end = _aligned(bend, start, "bend"), _aligned(end, start, "end")
    origin = flatten(start).to(torch.float64)
    along = flatten(end).to(torch.float64) - origin
    offset = flatten(bend).to(torch.float64) - origin
    length = float(torch.linalg.vector_norm(along))
    if not length > 0:
        raise ValueError("Expected distinct `start` and `end`, got the same parameters")
    u = along / length
    residual = offset
    for _ in range(2):
        residual = residual - (residual @ u) * u
    height = float(torch.linalg.vector_norm(residual))
    if not height > COLLINEAR_RTOL * float(torch.linalg.vector_norm(offset)):
        raise ValueError(
            "Expected a bend off the line through `start` and `end`, got one on it (distance "
            f"{height:.3g}): an untrained bend is the midpoint; train it first"
        )
    v = residual / height
    return Plane(
        origin=origin,
        u=u,
        v=v,
        like=start,
        start_xy=(0.0, 0.0),
        bend_xy=(float(offset @ u), float(offset @ v)),
        end_xy=(length, 0.0),
    )


def plane_grid(plane: Plane, points: int, margin: float = 0.2) -> tuple[Tensor, Tensor]:
    """A grid over the plane that covers its three points with a margin on every side.

    Each axis spans the points' range (``x`` over the three ``x``s, ``y`` from 0 to the bend's ``y``), widened by
    ``margin`` times that range at both ends.

    Args:
        plane: the plane.
        points: grid points per axis (>= 2).
        margin: the widening, a fraction of each axis's range (>= 0).

    Returns:
        ``(xs [points], ys [points])``, float64, increasing.
    """
    check_count("points", points, 2)
    check(margin >= 0, "margin", ">= 0", margin)
    coords = torch.tensor([plane.start_xy, plane.bend_xy, plane.end_xy], dtype=torch.float64)
    axes = []
    for column in coords.T:
        low, high = float(column.min()), float(column.max())
        pad = margin * (high - low)
        axes.append(torch.linspace(low - pad, high + pad, points, dtype=torch.float64))
    return axes[0], axes[1]


def plane_loss(
    model: nn.Module,
    plane: Plane,
    data: Data,
    xs: Values,
    ys: Values,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Loss and accuracy over a grid of the plane, at ``plane.params_at(x, y)``.

    Args:
        model: gives the architecture and buffers (its parameter names and shapes are the plane's); not modified.
        plane: the plane (:func:`plane_through`).
        data: ``(inputs [N, ...], targets [N])``.
        xs: ``[X]`` coordinates along ``u``.
        ys: ``[Y]`` coordinates along ``v``.
        chunk_size: examples per forward chunk.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; mean cross-entropy by default.
        dtype: the forward passes' arithmetic (``functional.evaluate``); None: the parameters' own.

    Returns:
        ``(loss [Y, X], accuracy [Y, X])``, float64 on the CPU: row ``i`` at ``ys[i]``, column ``j`` at ``xs[j]``
        (the layout of ``contour(xs, ys, loss)``).
    """
    _points(model, plane.like)
    _check_data(data)
    x_grid, y_grid = _ts(xs, "xs"), _ts(ys, "ys")
    loss = torch.empty(len(y_grid), len(x_grid), dtype=torch.float64)
    acc = torch.empty_like(loss)
    for i, y in enumerate(y_grid):
        for j, x in enumerate(x_grid):
            loss[i, j], acc[i, j] = evaluate(
                model, data, params=plane.params_at(x, y), chunk_size=chunk_size, loss_fn=loss_fn, dtype=dtype
            )
    return loss, acc
