"""APGD: maximize a differentiable objective over an L2 ball or an L-infinity box, for worst-case sharpness.

Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Algorithm 1), as Andriushchenko et al. 2023 ("A modern look at the relationship between
sharpness and generalization") use it to compute sharpness. :func:`maximize` works on any objective ``f(u)`` given as
``value_and_grad(u) -> (f(u), grad f(u))`` over ``{u : ||u||_p <= radius}``, ``p`` in {2, inf}; the sharpness
measures pass ``u -> L(w + c * u)`` and its gradient ``c * grad L`` (the chain rule of the scaled perturbation).

One APGD run of ``length`` evaluations ``x_0, ..., x_{length-1}``, with step size ``eta_0 = 2 radius``, momentum
``alpha = 0.75`` and projection ``P`` onto the ball or box:

- ``x_1 = P(x_0 + eta s(g_0))``;
- ``z = P(x_k + eta s(g_k))``, ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha) (x_k - x_{k-1}))``, where the
  step direction ``s(g)`` is ``sign(g)`` for L-infinity (a step of ``eta`` on every coordinate) and ``g / ||g||_2``
  for L2;
- at the checkpoints ``w_j = ceil(p_j length)``, ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} -
  0.03, 0.06)``, the step size is halved and the iterate reset to the run's best point (with its gradient; the
  momentum restarts from there) when fewer than ``0.75 (w_j - w_{j-1})`` of the steps since the last checkpoint
  increased ``f`` (condition 1), or when the step size was not halved at the last checkpoint and the run's best value
  has not improved since (condition 2).

Runs: the budget is ``steps * restarts`` evaluations. Run 0 starts at ``x_0 = 0`` (the unperturbed point, so
``f(0)`` is a candidate and the result is never below it), and its first step is, after projection, the first-order
point ``radius g_0 / ||g_0||_2`` (L2) or ``radius sign(g_0)`` (L-infinity): the exact maximizer for a linear
objective. Every later run starts from a random point drawn from ``rng.generator(seed)`` by landscape_core's seeded
rule (float64 on the CPU, then cast and moved), as does run 0's first step when ``g_0 = 0``: uniform in the box,
``radius (2 U - 1)``, or uniform in the ball, ``radius V^(1/P) z / ||z||`` with ``z ~ N(0, I_P)`` and ``V ~ U(0, 1)``.
A run has ``steps`` evaluations, unless it reaches a fixed point of the iteration, its best point, where the
projected step no longer moves for any step size (on the box: a vertex with the gradient pointing outwards, the
usual end of an L-infinity run on a convex loss after 2-4 evaluations). APGD would then evaluate that point again
until the end of the run; instead the run stops, and its remaining evaluations go to further random runs (the last
one shortened to fit the budget). So there are at least ``restarts`` runs, and exactly ``restarts`` when no run
stops early (the usual case in L2). Every evaluated point is a candidate.

A linear objective ends the search (issue 24). When run 0's best point is still its first-order point, the
objective rose to it as its linear prediction says (``|f(x_1) - f(0) - g_0 . x_1| <= LINEAR_TOL g_0 . x_1``), and
the run either reached a fixed point there or went two checkpoints without any gain (its step size halved twice around
that point), the first-order point is the maximum of the linear objective and the ascent found nothing better around
it: the search stops, leaving the rest of its budget unspent (``Ascent.saved``). This is the adaptive L2 search on a
trained network, whose ball is so small that the loss is linear on it. It never fires at a minimum (no first-order
point) nor where the first-order point is beaten, so the quadratics' standard below holds.

This budget recycling is the main departure from Croce & Hein's APGD with restarts (the other, minor one: after a
reset to the best point the momentum term starts from zero, where Algorithm 1 keeps the last step). It matters for
L-infinity on a (locally) convex loss, whose many local maxima sit at vertices, where sign steps stop after a few
evaluations: on 60 random 10-dimensional quadratics at a minimum (the construction of
tests/landscape_core/test_sharpness.py), with ``restarts = 2``, plain APGD reached >= 95 % of the exact maximum over
the box on 62-67 % of them (as little as 40 %), with recycling on 95 % at ``steps = 10`` and 98 % at ``steps = 20``
(at worst 85 % and 94 %). In L2 nothing changes.

Cost: ``steps * restarts`` calls of ``value_and_grad``, and O(P) memory for a handful of vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from landscape_core import rng
from landscape_core.common import check, check_count, check_positive

__all__ = ["MOMENTUM", "NORMS", "STEP_FRACTION", "Ascent", "checkpoints", "maximize", "random_start"]

NORMS = ("l2", "linf")
MOMENTUM = 0.75  # alpha: weight of the gradient step against the previous step
STEP_FRACTION = 0.75  # rho: fewer improving steps than this fraction of a checkpoint interval halves the step size
LINEAR_TOL = 0.01  # run 0's rise to its first-order point within 1 % of the linear prediction: a linear objective

ValueAndGrad = Callable[[Tensor], tuple[float, Tensor]]


@dataclass(frozen=True)
class Ascent:
    """The result of :func:`maximize`.

    Attributes:
        value: the largest objective value seen, ``>= base``.
        u: the point where it was seen (``[P]``, inside the ball or box; zeros if no point beat ``u = 0``).
        base: ``f(0)``.
        n_evals: calls of ``value_and_grad``: ``steps * restarts`` less ``saved``.
        run_values: the best value seen by each APGD run, in order (run 0's includes ``f(0)``); at least
            ``restarts`` runs, more when runs end early at a fixed point, fewer when the objective is linear.
        saved: evaluations of the budget left unspent because the objective was linear (module docstring).
    """

    value: float
    u: Tensor
    base: float
    n_evals: int
    run_values: tuple[float, ...]
    saved: int = 0

    @property
    def runs(self) -> int:
        """APGD runs made (>= ``restarts``)."""
        return len(self.run_values)


def check_norm(norm: str) -> None:
    """``norm`` is ``"l2"`` or ``"linf"``."""
    check(norm in NORMS, "norm", f"in {NORMS}", norm)


def checkpoints(steps: int) -> tuple[int, ...]:
    """APGD's checkpoints ``w_j = ceil(p_j steps)`` for ``j >= 1`` inside ``1 .. steps - 1``, ascending, distinct.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (Croce & Hein 2020), computed
    in exact hundredths: 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99. E.g. ``steps = 20``: 5, 9, 12, 14, 16, 18, 19.
    """
    check_count("steps", steps)
    p_prev, p, out = 0, 22, []
    while p < 100:
        w = -(-p * steps // 100)  # ceil(p steps / 100), exactly
        if 1 <= w < steps and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 3, 6)
    return tuple(out)


def _project(u: Tensor, radius: float, norm: str) -> Tensor:
    if norm == "linf":
        return u.clamp(-radius, radius)
    length = float(torch.linalg.vector_norm(u))
    return u * (radius / length) if length > radius else u


def _direction(g: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return g.sign()
    length = float(torch.linalg.vector_norm(g))
    return g / length if length > 0 else torch.zeros_like(g)


def random_start(like: Tensor, *, radius: float, norm: str, generator: torch.Generator) -> Tensor:
    """A random point of the ball or box, shaped, typed and placed like ``like``, drawn from ``generator`` by the
    seeded rule: ``radius (2 U - 1)``, ``U ~ U(0, 1)^P``, for ``"linf"`` (uniform in the box); ``radius V^(1/P) z /
    ||z||``, ``z ~ N(0, I_P)`` then ``V ~ U(0, 1)`` (a float64 scalar), for ``"l2"`` (uniform in the ball)."""
    check_norm(norm)
    if norm == "linf":
        return radius * (2 * rng.rand(like.shape, generator, dtype=like.dtype, device=like.device) - 1)
    z = rng.randn(like.shape, generator, dtype=like.dtype, device=like.device)
    length = radius * float(rng.rand((), generator)) ** (1 / z.numel())
    return z * (length / torch.linalg.vector_norm(z))


@dataclass(frozen=True)
class _Run:
    best: float
    best_x: Tensor
    evals: int
    f_start: float
    linear: bool  # a first-order run that ended at its first-order point, reached as a linear objective rises


def _run(
    value_and_grad: ValueAndGrad,
    x: Tensor,
    *,
    radius: float,
    norm: str,
    length: int,
    first_order: bool,
    generator: torch.Generator,
) -> _Run:
    """One APGD run of at most ``length`` evaluations from ``x``.

    ``first_order``: the run starts at ``u = 0`` and its first step goes to the first-order point (or, if the
    gradient there is zero, to a random point from ``generator``). The run ends early, before ``length``
    evaluations, at a fixed point: the next iterate equals the current one, which is the run's best point, and the
    projected gradient step does not move it (on the box: every coordinate on the boundary with the gradient pointing
    outwards, or a zero gradient; in the ball: on the sphere with the gradient along the radius, or a zero gradient).
    That holds for every step size, so APGD would evaluate this point again until the end of the run. A first-order
    run also ends when its objective is linear (module docstring).
    """
    f, g = value_and_grad(x)
    evals, f_start = 1, f
    best, best_x, best_g = f, x, g
    eta = 2.0 * radius
    x_prev = x
    marks = set(checkpoints(length))
    improved, last_mark, reduced_last, best_at_mark = 0, 0, False, f
    linear_gain, first_point, stalled = math.nan, None, 0

    def linear() -> bool:
        rise = best - f_start
        return best_x is first_point and linear_gain > 0 and abs(rise - linear_gain) <= LINEAR_TOL * linear_gain

    for k in range(1, length):
        if k == 1:
            step = _direction(g, norm)
            if first_order and not bool(step.any()):  # no first-order point: go to a random point
                z = random_start(x, radius=radius, norm=norm, generator=generator)
            else:
                z = _project(x + eta * step, radius, norm)
                if first_order:
                    linear_gain, first_point = float(torch.dot(g.reshape(-1).to(z.dtype), (z - x).reshape(-1))), z
            x_new = z
        else:
            z = _project(x + eta * _direction(g, norm), radius, norm)
            x_new = _project(x + MOMENTUM * (z - x) + (1 - MOMENTUM) * (x - x_prev), radius, norm)
        if torch.equal(x_new, x) and torch.equal(z, x) and torch.equal(x, best_x):
            return _Run(best, best_x, evals, f_start, linear())
        x_prev, x = x, x_new
        f_new, g = value_and_grad(x)
        evals += 1
        improved += f_new > f
        f = f_new
        if f > best:
            best, best_x, best_g = f, x, g
        if k in marks:
            no_progress = best <= best_at_mark
            stalled = stalled + 1 if no_progress else 0
            if stalled >= 2 and linear():
                return _Run(best, best_x, evals, f_start, True)
            reduce = improved < STEP_FRACTION * (k - last_mark) or (not reduced_last and no_progress)
            if reduce:
                eta /= 2
                x, x_prev, f, g = best_x, best_x, best, best_g
            improved, last_mark, reduced_last, best_at_mark = 0, k, reduce, best
    return _Run(best, best_x, evals, f_start, False)


def maximize(
    value_and_grad: ValueAndGrad,
    like: Tensor,
    *,
    radius: float,
    norm: str,
    steps: int,
    restarts: int,
    seed: int,
) -> Ascent:
    """Maximize ``f(u)`` over ``||u||_p <= radius`` by APGD with restarts (see the module docstring).

    Args:
        value_and_grad: ``u -> (f(u), grad f(u))``, a Python float and a tensor shaped like ``u``; deterministic.
        like: a tensor ``[P]`` giving the shape, dtype and device of ``u``.
        radius: the ball's radius or the box's half-width (> 0).
        norm: ``"l2"`` or ``"linf"``.
        steps: evaluations per run (>= 1); run 0 spends its first on ``u = 0``.
        restarts: planned APGD runs (>= 1): run 0 from ``u = 0`` through the first-order point, the others from
            random points. Runs that end early at a fixed point leave their evaluations to further random runs.
        seed: seeds the random starts.

    Returns:
        :class:`Ascent` with the best value and point, ``f(0)`` and the ``steps * restarts`` evaluations' count.
    """
    check_norm(norm)
    check_positive("radius", radius)
    check(math.isfinite(radius), "radius", "finite", radius)
    check_count("steps", steps)
    check_count("restarts", restarts)
    generator = rng.generator(seed)
    zero = torch.zeros(like.shape, dtype=like.dtype, device=like.device)
    budget = steps * restarts
    best_value, best_u, base = -math.inf, zero, math.nan
    run_values: list[float] = []
    n_evals = saved = 0
    while n_evals + saved < budget:
        first = not run_values
        start = zero if first else random_start(like, radius=radius, norm=norm, generator=generator)
        length = min(steps, budget - n_evals - saved)
        run = _run(
            value_and_grad, start, radius=radius, norm=norm, length=length, first_order=first, generator=generator
        )
        if first:
            base = run.f_start
        n_evals += run.evals
        run_values.append(run.best)
        if run.best > best_value:
            best_value, best_u = run.best, run.best_x
        if run.linear:
            saved = budget - n_evals  # a linear objective: the first-order point is its maximum
    if not best_value >= base:  # NaN objective values never win; u = 0 is always a candidate
        best_value, best_u = base, zero
    return Ascent(value=best_value, u=best_u, base=base, n_evals=n_evals, run_values=tuple(run_values), saved=saved)
