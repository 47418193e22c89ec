"""Tests of landscape_core.curves (Bezier curves between minima, their barriers and their plane) and of
landscape_core.plots.curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from landscape_core import rng
from landscape_core.connectivity import barrier, interpolate
from landscape_core.curves import (
    bezier_params,
    curve_path,
    plane_grid,
    plane_loss,
    plane_through,
    train_bend,
)
from landscape_core.functional import Params, evaluate, param_dict
from landscape_core.plots.curves import barrier_population_figure, curve_plane_figure, three_paths_figure
from tests.landscape_core.conftest import ModelSnapshot, make_tiny_data, make_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is fastest

TS = torch.linspace(0, 1, 21, dtype=torch.float64)


def _clone(params: Params) -> Params:
    return {k: v.clone() for k, v in params.items()}


def _assert_close(a: Params, b: Params, **tol: float) -> None:
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol)


# ---------------------------------------------------------------------------------------------- the ring problem


class Ring(nn.Module):
    """Two parameters ``w``; per-example loss ``(|w|^2 - 1)^2 + c_i w_1`` with ``c_i = inputs[i, 0]``, returned as
    the "logits" ``[N, 1]``. The ``c_i`` are ``+-s`` in equal numbers, so the mean over all examples is
    ``(|w|^2 - 1)^2``: minima on the unit circle, and the line from ``(1, 0)`` to ``(-1, 0)`` crosses the origin at
    loss 1 (a barrier of exactly 1). A mini-batch's gradient is noisy along ``w_1``: it pushes a bend off the line,
    where the mean loss has a saddle (the mean gradient along ``w_1`` is 0 on the whole line)."""

    def __init__(self, w: tuple[float, float] = (1.0, 0.0)) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, inputs: Tensor) -> Tensor:
        return ((self.w @ self.w - 1.0) ** 2 + inputs[:, 0] * self.w[1])[:, None]


def mean_value(logits: Tensor, targets: Tensor) -> Tensor:
    return logits[:, 0].mean()


def ring_data(n: int = 64, scale: float = 0.5) -> tuple[Tensor, Tensor]:
    c = scale * torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(n // 2)
    return c[:, None], torch.zeros(n, dtype=torch.long)


RING_A = {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}
RING_B = {"w": torch.tensor([-1.0, 0.0], dtype=torch.float64)}


def _train_ring(seed: int = 0, epochs: int = 40) -> Params:
    return train_bend(
        Ring(),
        RING_A,
        RING_B,
        ring_data(),
        epochs=epochs,
        batch_size=8,
        lr=0.05,
        generator=rng.generator(seed),
        loss_fn=mean_value,
    )


# ---------------------------------------------------------------------------------------------- Bezier curve


def test_bezier_params_is_the_quadratic_bezier_with_exact_endpoints() -> None:
    g = torch.Generator().manual_seed(0)
    start, bend, end = ({"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)} for _ in range(3))
    assert all(torch.equal(bezier_params(0.0, start, bend, end)[k], start[k]) for k in start)
    assert all(torch.equal(bezier_params(1.0, start, bend, end)[k], end[k]) for k in start)
    _assert_close(
        bezier_params(0.5, start, bend, end), {k: 0.25 * start[k] + 0.5 * bend[k] + 0.25 * end[k] for k in start}
    )
    t = 0.3
    _assert_close(
        bezier_params(t, start, bend, end),
        {k: 0.49 * start[k] + 0.42 * bend[k] + 0.09 * end[k] for k in start},
    )
    with pytest.raises(ValueError, match="bend"):
        bezier_params(0.5, start, {"a": bend["a"]}, end)


def test_training_leaves_endpoints_and_model_untouched_and_the_curve_ends_at_their_losses() -> None:
    model = make_tiny_model(0)
    data = make_tiny_data(64)
    start, end = param_dict(model), param_dict(make_tiny_model(1))
    start_before, end_before, snapshot = _clone(start), _clone(end), ModelSnapshot.of(model)
    bend = train_bend(model, start, end, data, epochs=1, batch_size=16, lr=0.05, generator=rng.generator(0))
    for before, after in ((start_before, start), (end_before, end)):
        assert all(torch.equal(before[k], after[k]) for k in before)
    snapshot.assert_unchanged(model)  # weights, train flags, no gradient left on its parameters
    midpoint = {k: 0.5 * (start[k] + end[k]) for k in start}
    assert any(not torch.allclose(bend[k], midpoint[k]) for k in bend), "the bend did not move"
    assert all(not v.requires_grad for v in bend.values())

    path = curve_path(model, start, bend, end, data, [0.0, 0.5, 1.0])
    assert path.alphas == (0.0, 0.5, 1.0)
    assert (path.loss[0], path.accuracy[0]) == evaluate(model, data, params=start)
    assert (path.loss[-1], path.accuracy[-1]) == evaluate(model, data, params=end)


def test_train_bend_is_seeded_and_validates() -> None:
    assert torch.equal(_train_ring(3, epochs=2)["w"], _train_ring(3, epochs=2)["w"])
    assert not torch.equal(_train_ring(3, epochs=2)["w"], _train_ring(4, epochs=2)["w"])
    kwargs = dict(epochs=1, batch_size=8, lr=0.1, generator=rng.generator(0), loss_fn=mean_value)
    with pytest.raises(ValueError, match="`epochs` >= 1"):
        train_bend(Ring(), RING_A, RING_B, ring_data(), **{**kwargs, "epochs": 0})
    with pytest.raises(ValueError, match="momentum"):
        train_bend(Ring(), RING_A, RING_B, ring_data(), **kwargs, momentum=1.0)
    with pytest.raises(ValueError, match="end"):
        train_bend(Ring(), RING_A, {"v": RING_B["w"]}, ring_data(), **kwargs)
    with pytest.raises(ValueError, match="shape"):
        train_bend(Ring(), RING_A, {"w": torch.zeros(3, dtype=torch.float64)}, ring_data(), **kwargs)


# ---------------------------------------------------------------------------------------------- barriers


def test_on_a_convex_valley_the_trained_curve_has_no_barrier() -> None:
    """Least squares with rank-2 inputs in 3 dimensions: the minima form the line ``w_min + s d``, ``d = (1, 1, -1)``
    (the third input is the sum of the first two). Between two of them, the trained curve stays in the valley."""
    g = torch.Generator().manual_seed(0)
    x12 = torch.randn(96, 2, generator=g, dtype=torch.float64)
    inputs = torch.cat([x12, x12.sum(1, keepdim=True)], dim=1)
    w_star = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    targets = inputs @ w_star + 0.1 * torch.randn(96, generator=g, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    d = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)

    def mse(logits: Tensor, y: Tensor) -> Tensor:
        return ((logits[:, 0] - y) ** 2).mean()

    # the least-squares minimum in the valley, then two distinct minima along it
    w_min = torch.linalg.lstsq(inputs, targets[:, None]).solution[:, 0]
    start, end = {"weight": (w_min + 2 * d)[None]}, {"weight": (w_min - 3 * d)[None]}
    bend = train_bend(
        model, start, end, (inputs, targets), epochs=10, batch_size=16, lr=0.05, generator=rng.generator(1), loss_fn=mse
    )
    result = barrier(curve_path(model, start, bend, end, (inputs, targets), TS, loss_fn=mse))
    assert abs(result.loss_barrier) < 1e-3
    minimum = evaluate(model, (inputs, targets), params=start, loss_fn=mse)[0]
    assert result.peak_loss < minimum + 1e-3


def test_on_the_ring_the_trained_curve_goes_round_the_barrier_of_the_line() -> None:
    data = ring_data()
    line = barrier(interpolate(Ring((1.0, 0.0)), Ring((-1.0, 0.0)), data, TS, loss_fn=mean_value))
    assert line.loss_barrier == pytest.approx(1.0, abs=1e-12)
    bend = _train_ring()
    curve = barrier(curve_path(Ring(), RING_A, bend, RING_B, data, TS, loss_fn=mean_value))
    assert curve.loss_barrier < 0.2 < line.loss_barrier
    assert abs(float(bend["w"][1])) > 0.5  # the bend left the line, to one side or the other


# ---------------------------------------------------------------------------------------------- the plane


def test_the_plane_reproduces_its_three_points_and_the_curve() -> None:
    g = torch.Generator().manual_seed(2)
    start, bend, end = (
        {
            "a": torch.randn(3, 4, generator=g, dtype=torch.float64),
            "b": torch.randn(5, generator=g, dtype=torch.float64),
        }
        for _ in range(3)
    )
    plane = plane_through(start, bend, end)
    assert plane.u @ plane.u == pytest.approx(1.0) and plane.v @ plane.v == pytest.approx(1.0)
    assert abs(float(plane.u @ plane.v)) < 1e-12
    assert plane.coordinates(start) == pytest.approx((0.0, 0.0), abs=1e-12)
    distance = float(torch.cat([(end[k] - start[k]).reshape(-1) for k in start]).norm())
    assert plane.coordinates(end) == pytest.approx((distance, 0.0), abs=1e-12)
    assert plane.coordinates(bend) == pytest.approx(plane.bend_xy) and plane.bend_xy[1] > 0
    for point in (start, bend, end):
        _assert_close(plane.params_at(*plane.coordinates(point)), point)
    for t, (x, y) in zip([0.2, 0.7], plane.curve_xy([0.2, 0.7]).tolist()):
        _assert_close(plane.params_at(x, y), bezier_params(t, start, bend, end))
    with pytest.raises(ValueError, match="off the line"):
        plane_through(start, {k: 0.5 * (start[k] + end[k]) for k in start}, end)


def test_plane_loss_is_the_loss_at_each_grid_point_rows_along_y() -> None:
    """On the ring with the bend at (0, 2): origin (1, 0), u = (-1, 0), v = (0, 1), so ``(x, y)`` is the point
    ``w = (1 - x, y)`` of mean loss ``((1 - x)^2 + y^2 - 1)^2``."""
    plane = plane_through(RING_A, {"w": torch.tensor([0.0, 2.0], dtype=torch.float64)}, RING_B)
    assert plane.bend_xy == pytest.approx((1.0, 2.0)) and plane.end_xy == pytest.approx((2.0, 0.0))
    xs, ys = [0.0, 0.5, 1.5], [-0.5, 1.0]
    loss, acc = plane_loss(Ring(), plane, ring_data(), xs, ys, loss_fn=mean_value)
    assert loss.shape == acc.shape == (2, 3)
    expected = torch.tensor([[((1 - x) ** 2 + y**2 - 1) ** 2 for x in xs] for y in ys], dtype=torch.float64)
    torch.testing.assert_close(loss, expected)
    grid_x, grid_y = plane_grid(plane, 5, margin=0.25)
    assert grid_x[0] == pytest.approx(-0.5) and grid_x[-1] == pytest.approx(2.5)
    assert grid_y[0] == pytest.approx(-0.5) and grid_y[-1] == pytest.approx(2.5) and grid_y.numel() == 5


# ---------------------------------------------------------------------------------------------- plots


def test_the_figures_draw_small_inputs() -> None:
    ts = np.linspace(0, 1, 5)
    single = three_paths_figure(ts, {"linear": 1 - (2 * ts - 1) ** 2, "Bezier curve": 0.1 * ts})
    per_split = three_paths_figure(
        ts,
        {
            "train": {"linear": np.ones((3, 5)), "linear, weight-matched": 0.5 * ts, "Bezier curve": 0.1 * ts},
            "test": {"linear": np.ones(5), "linear, weight-matched": 0.6 * ts, "Bezier curve": 0.2 * ts},
        },
    )
    plane = plane_through(RING_A, {"w": torch.tensor([0.0, 2.0], dtype=torch.float64)}, RING_B)
    xs, ys = plane_grid(plane, 4)
    loss = torch.rand(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    surface = curve_plane_figure(xs, ys, loss, plane.curve_xy(ts), plane.points_xy)
    population = barrier_population_figure({"linear": [1.0, 1.2, 0.9], "Bezier curve": np.array([0.05, 0.1, 0.02])})
    for fig, panels in ((single, 1), (per_split, 2), (surface, 2), (population, 1)):
        assert isinstance(fig, Figure) and len(fig.axes) == panels
        assert fig.axes[0].get_title() and fig.axes[0].get_xlabel() and fig.axes[0].get_legend() is not None
    assert [ax.get_title() for ax in per_split.axes] == ["train", "test"]
    with pytest.raises(ValueError, match="shape"):
        curve_plane_figure(xs, ys, loss[:, :3], plane.curve_xy(ts), plane.points_xy)
