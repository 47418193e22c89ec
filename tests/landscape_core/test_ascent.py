"""Tests of landscape_core.ascent (APGD over an L2 ball or an L-infinity box) against closed forms, hand-computed
iterates and the seeded-generator rule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from landscape_core import ascent, rng
from tests.landscape_core.conftest import rule_draws

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


class _Recorder:
    """An objective ``f(u)`` given by ``value(u)`` and ``grad(u)`` that records every point it is evaluated at."""

    def __init__(self, value, grad) -> None:
        self.value, self.grad = value, grad
        self.seen: list[Tensor] = []

    def __call__(self, u: Tensor) -> tuple[float, Tensor]:
        self.seen.append(u.clone())
        return float(self.value(u)), self.grad(u)


def _linear(g: Tensor, b: float = 0.7) -> _Recorder:
    return _Recorder(lambda u: g @ u + b, lambda u: g.clone())


def _project_l2(v: Tensor, radius: float) -> Tensor:
    length = float(torch.linalg.vector_norm(v))
    return v * (radius / length) if length > radius else v


def _rule_start(norm: str, radius: float, gen: torch.Generator, size: int, dtype: torch.dtype = F64) -> Tensor:
    """The random start of the seeded rule, drawn by hand from ``gen`` (a ``rule_draws`` generator)."""
    if norm == "linf":
        return radius * (2 * torch.rand(size, generator=gen, dtype=F64).to(dtype) - 1)
    z = torch.randn(size, generator=gen, dtype=F64).to(dtype)
    length = radius * float(torch.rand((), generator=gen, dtype=F64)) ** (1 / size)
    return z * (length / torch.linalg.vector_norm(z))


def test_checkpoints_follow_croce_and_hein() -> None:
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99; w_j = ceil(p_j N), kept inside 1 .. N - 1.
    assert ascent.checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert ascent.checkpoints(20) == (5, 9, 12, 14, 16, 18, 19)
    assert ascent.checkpoints(10) == (3, 5, 6, 7, 8, 9)
    assert ascent.checkpoints(5) == (2, 3, 4)
    assert ascent.checkpoints(1) == ()


@pytest.mark.parametrize(("norm", "dual"), [("l2", 2), ("linf", 1)])
def test_linear_objective_is_solved_exactly_at_the_first_order_point(norm, dual) -> None:
    # max_{||u||_p <= r} g . u + b = r ||g||_q + b (q the dual norm), at u = r g / ||g||_2 or r sign(g).
    g = torch.tensor([0.5, -2.0, 0.0, 1.5, -0.25, 3.0], dtype=F64)
    radius = 0.3
    f = _linear(g)
    found = ascent.maximize(f, g, radius=radius, norm=norm, steps=4, restarts=3, seed=0)
    assert found.base == pytest.approx(0.7, abs=1e-15)
    assert found.value == pytest.approx(0.7 + radius * float(torch.linalg.vector_norm(g, ord=dual)), rel=1e-14)
    expected_u = radius * g / torch.linalg.vector_norm(g) if norm == "l2" else radius * g.sign()
    torch.testing.assert_close(found.u, expected_u, rtol=1e-14, atol=1e-16)
    assert torch.equal(f.seen[0], torch.zeros(6, dtype=F64))  # run 0 starts at u = 0 ...
    torch.testing.assert_close(f.seen[1], expected_u, rtol=1e-14, atol=1e-16)  # ... and steps to the first-order point
    # Then the search stops (issue 24): the rise to the first-order point is the linear prediction, and the run
    # ended there (on the box at its fixed point, a vertex, after 2 evaluations; in the ball, where the fixed point is
    # exact only up to rounding, after two checkpoints without gain). The rest of the budget is left unspent.
    assert found.n_evals == len(f.seen) == (2 if norm == "linf" else 4)
    assert found.runs == 1 and found.n_evals + found.saved == 12


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_an_objective_that_is_not_linear_on_the_set_keeps_its_whole_budget(norm) -> None:
    # f = g . u + 0.5 c ||u||^2, c chosen so that the rise to the first-order point is 5 % above the linear one: the
    # first-order point may still be the best point found, but the restarts run (the counterpart of the test above).
    g = torch.tensor([0.5, -2.0, 0.0, 1.5, -0.25, 3.0], dtype=F64)
    radius = 0.3
    first = radius * g / torch.linalg.vector_norm(g) if norm == "l2" else radius * g.sign()
    c = 0.05 * 2 * float(g @ first) / float(first @ first)
    f = _Recorder(lambda u: g @ u + 0.5 * c * u.square().sum(), lambda u: g + c * u)
    found = ascent.maximize(f, g, radius=radius, norm=norm, steps=4, restarts=3, seed=0)
    assert found.saved == 0 and found.n_evals == len(f.seen) == 12 and found.runs >= 3


def test_iterates_follow_apgd_with_momentum_and_seeded_starts() -> None:
    # g . u with no gradient at u = 0: run 0 has no first-order point and jumps to the first rule draw s; then
    # z = P(s + 2r g^) and x2 = P(s + 0.75 (z - s) + 0.25 (s - 0)), the momentum step from x_prev = 0.
    g = torch.tensor([1.0, -2.0, 0.5, 0.25, 3.0], dtype=F64)
    radius, seed = 0.5, 11
    f = _Recorder(lambda u: g @ u, lambda u: g if bool(u.any()) else torch.zeros_like(g))
    ascent.maximize(f, g, radius=radius, norm="l2", steps=5, restarts=2, seed=seed)
    g_hat = g / float(torch.linalg.vector_norm(g))
    s = _rule_start("l2", radius, rule_draws(seed), 5)
    z = _project_l2(s + 2 * radius * g_hat, radius)
    x2 = _project_l2(s + 0.75 * (z - s) + 0.25 * s, radius)
    assert torch.equal(f.seen[0], torch.zeros(5, dtype=F64)) and torch.equal(f.seen[1], s)
    torch.testing.assert_close(f.seen[2], x2, rtol=1e-14, atol=1e-16)
    assert float(torch.linalg.vector_norm(x2)) <= radius * (1 + 1e-15)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_gradient_random_starts_and_recycled_runs_follow_the_seeded_rule(norm, dtype) -> None:
    # f = 0: run 0 evaluates u = 0, has no first-order point and jumps to the first draw s1. s1 does not improve on
    # u = 0, so the checkpoint at k = 1 (checkpoints(3) = (1, 2)) halves the step and resets to u = 0, now a fixed
    # point: run 0 stops. Every later run sits at its start, a fixed point: it stops after one evaluation and leaves
    # the rest of the budget (3 * 2 = 6) to the next draw.
    size, radius, seed = 20, 0.4, 9
    f = _Recorder(lambda u: torch.zeros(()), torch.zeros_like)
    like = torch.zeros(size, dtype=dtype)
    found = ascent.maximize(f, like, radius=radius, norm=norm, steps=3, restarts=2, seed=seed)
    gen = rule_draws(seed)
    starts = [_rule_start(norm, radius, gen, size, dtype) for _ in range(5)]
    expected = [torch.zeros(size, dtype=dtype), *starts]
    assert len(f.seen) == found.n_evals == 6
    for seen, want in zip(f.seen, expected, strict=True):
        assert seen.dtype == dtype and torch.equal(seen, want)
    assert found.runs == 5 and found.value == found.base == 0.0 and torch.equal(found.u, torch.zeros_like(like))
    assert torch.equal(ascent.random_start(like, radius=radius, norm=norm, generator=rng.generator(seed)), starts[0])


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_step_halving_converges_to_an_interior_maximum(norm) -> None:
    # f = -||u - a||^2 with a inside the set: a fixed step of 2r would jump around a forever; the checkpoints halve it.
    a = torch.tensor([0.3, -0.2, 0.1, 0.0, 0.25], dtype=F64)
    f = _Recorder(lambda u: -(u - a).square().sum(), lambda u: -2 * (u - a))
    short = ascent.maximize(f, a, radius=1.0, norm=norm, steps=5, restarts=1, seed=0)
    found = ascent.maximize(f, a, radius=1.0, norm=norm, steps=20, restarts=1, seed=0)
    assert short.value < -0.05
    assert -1e-3 < found.value <= 0 and found.runs == 1
    assert float((found.u - a).abs().max()) < 0.03


def test_the_unperturbed_point_is_a_candidate_and_nan_never_wins() -> None:
    a = torch.ones(4, dtype=F64)
    peak = _Recorder(lambda u: -(u.square().sum()), lambda u: -2 * u)  # maximum at u = 0
    found = ascent.maximize(peak, a, radius=0.5, norm="linf", steps=3, restarts=2, seed=1)
    assert found.value == found.base == 0.0 and torch.equal(found.u, torch.zeros(4, dtype=F64))
    nan = _Recorder(lambda u: torch.tensor(math.nan) if bool(u.any()) else torch.tensor(1.0), lambda u: torch.ones(4))
    found = ascent.maximize(nan, a, radius=0.5, norm="l2", steps=3, restarts=2, seed=1)
    assert found.value == found.base == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "l3"}, "norm"),
        ({"norm": "L2"}, "norm"),
        ({"steps": 0}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"radius": 0.0}, "radius"),
        ({"radius": math.nan}, "radius"),
        ({"radius": math.inf}, "radius"),
    ],
)
def test_bad_arguments_raise(kwargs, message) -> None:
    f = _linear(torch.ones(3, dtype=F64))
    args = {"radius": 0.1, "norm": "l2", "steps": 2, "restarts": 1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=f"`{message}`"):
        ascent.maximize(f, torch.ones(3, dtype=F64), **args)
    assert not f.seen
    with pytest.raises(ValueError, match="`norm` in \\('l2', 'linf'\\), got 'l3'"):
        ascent.random_start(torch.ones(3), radius=0.1, norm="l3", generator=rng.generator(0))
