"""landscape_core.slices: 1D/2D slices and directional curvature, against closed forms on quadratics."""

from __future__ import annotations

import copy

import pytest
import torch

from landscape_core import hessian as hs
from landscape_core import slices as sl
from landscape_core.directions import eigen_direction, orthogonal_pair, random_direction, random_filter_normalized
from landscape_core.functional import evaluate, flatten, param_dict
from landscape_core.models import build_model
from tests.landscape_core.conftest import NEAR_DEGENERATE, ModelSnapshot, make_quadratic

pytestmark = pytest.mark.usefixtures("one_thread")


def _subset(data, n):
    return data[0][:n], data[1][:n]


def test_slice_1d_at_zero_is_the_loss_at_theta(tiny_model, tiny_data):
    data = _subset(tiny_data, 64)
    d = random_filter_normalized(tiny_model, seed=0)
    result = sl.slice_1d(tiny_model, data, d, [-0.5, 0.0, 0.5], chunk_size=20)
    loss, acc = evaluate(tiny_model, data)
    assert result.loss[1].item() == pytest.approx(loss, abs=1e-12)
    assert result.accuracy[1].item() == pytest.approx(acc, abs=1e-12)
    assert result.alphas.tolist() == [-0.5, 0.0, 0.5]
    assert result.loss.shape == result.accuracy.shape == (3,)
    assert result.loss[0] != result.loss[1]  # the direction moves the loss
    # At alpha, the loss is that of the shifted parameters.
    shifted = {k: v + 0.5 * d[k] for k, v in param_dict(tiny_model).items()}
    assert result.loss[2].item() == pytest.approx(evaluate(tiny_model, data, params=shifted)[0], abs=1e-12)


def test_slice_2d_grid_and_origin(tiny_model, tiny_data):
    data = _subset(tiny_data, 64)
    d1, d2 = orthogonal_pair(tiny_model, seed=1)
    calls = []
    result = sl.slice_2d(
        tiny_model, data, d1, flatten(d2), [-1.0, 0.0, 1.0], [0.0, 0.5], progress=lambda i, n: calls.append((i, n))
    )
    assert result.loss.shape == result.accuracy.shape == (3, 2)
    assert result.loss[1, 0].item() == pytest.approx(evaluate(tiny_model, data)[0], abs=1e-12)
    assert calls == [(i, 6) for i in range(1, 7)]
    # The beta = 0 column is the 1D slice along d1; the alpha = 0 row the 1D slice along d2.
    row = sl.slice_1d(tiny_model, data, d1, [-1.0, 0.0, 1.0])
    torch.testing.assert_close(result.loss[:, 0], row.loss, atol=1e-12, rtol=0)
    col = sl.slice_1d(tiny_model, data, d2, [0.0, 0.5])
    torch.testing.assert_close(result.loss[1], col.loss, atol=1e-12, rtol=0)
    assert len(set(result.loss.flatten().tolist())) == 6  # six distinct points, six distinct losses


def test_slice_of_quadratic_along_unit_eigenvector_is_exact_parabola(quadratic):
    x0 = quadratic.x()
    u, lam = quadratic.eigenvectors[:, 1], float(quadratic.eigenvalues[1])  # 18.37
    alphas = torch.linspace(-2, 2, 9, dtype=torch.float64)
    result = sl.slice_1d(quadratic.model, quadratic.data, u, alphas, chunk_size=7, loss_fn=quadratic.loss_fn)
    slope = float((quadratic.A @ x0 + quadratic.b) @ u)
    expected = quadratic.loss(x0) + slope * alphas + 0.5 * lam * alphas**2
    torch.testing.assert_close(result.loss, expected, atol=1e-10, rtol=0)
    # As a parameter dict, through eigen_direction: the same numbers.
    as_dict = eigen_direction(u, quadratic.model)
    again = sl.slice_1d(quadratic.model, quadratic.data, as_dict, alphas, chunk_size=7, loss_fn=quadratic.loss_fn)
    torch.testing.assert_close(again.loss, result.loss, atol=1e-12, rtol=0)


def test_directional_curvature_of_quadratic_is_vAv(quadratic):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(quadratic.size, generator=g, dtype=torch.float64) * 7.0  # not unit: normalized inside
    unit = v / v.norm()
    c = sl.directional_curvature(quadratic.model, quadratic.data, v, loss_fn=quadratic.loss_fn)
    assert c == pytest.approx(float(unit @ quadratic.A @ unit), abs=1e-10)
    top = sl.directional_curvature(
        quadratic.model, quadratic.data, quadratic.eigenvectors[:, 0], loss_fn=quadratic.loss_fn
    )
    assert top == pytest.approx(19.13, abs=1e-10)
    neg = sl.directional_curvature(
        quadratic.model, quadratic.data, quadratic.eigenvectors[:, -1], loss_fn=quadratic.loss_fn
    )
    assert neg == pytest.approx(-8.6, abs=1e-10)
    # The finite-difference check is exact on a quadratic too (up to float64 cancellation).
    fd = sl.finite_difference_curvature(quadratic.model, quadratic.data, v, step=1e-2, loss_fn=quadratic.loss_fn)
    assert fd == pytest.approx(c, abs=1e-6)


def test_directional_curvature_matches_the_dense_hessian_of_a_tiny_cnn(tiny_model, tiny_data, tiny_dense):
    """Exact v^T H v against the independently assembled dense Hessian (conftest.dense_hessian_tiny), to 1e-6."""
    g = torch.Generator().manual_seed(1)
    for v in (torch.randn(2570, generator=g, dtype=torch.float64), torch.linalg.eigh(tiny_dense.hessian)[1][:, -1]):
        unit = v / v.norm()
        want = float(unit @ tiny_dense.hessian @ unit)
        got = sl.directional_curvature(tiny_model, tiny_data, v * 3.0)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert float(unit @ tiny_dense.hessian @ unit) == pytest.approx(float(tiny_dense.eigenvalues[-1]), rel=1e-9)


def test_richardson_finite_difference_agrees_where_the_naive_step_does_not(tiny_model, tiny_data):
    """The float64 Richardson ladder agrees with the exact value; one central difference at a large step does not
    (it crosses ReLU kinks: the defect the exact HVP replaced)."""
    data = _subset(tiny_data, 64)
    v = torch.randn(2570, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = sl.directional_curvature(tiny_model, data, v)
    fd = sl.finite_difference_curvature(tiny_model, data, v, step=1e-4, levels=2)
    assert fd == pytest.approx(exact, rel=1e-3)
    coarse = sl.finite_difference_curvature(tiny_model, data, v, step=1e-2, levels=1)
    assert abs(coarse - exact) > 1e-2 * abs(exact)  # the test could tell a bad step from a good one


def test_directional_curvature_of_seed_cnn_in_float32_matches_float64_to_one_percent():
    """SeedCNN (809,034 parameters) in float32, along a random unit direction and the top eigenvector: the exact
    v^T H v agrees with the same product computed on a float64 copy to 1%. (The float32 central difference at
    eps = 1e-2 it replaced returned 0 or one rounding quantum along a random direction; on this random-image batch
    even a float64 central difference is off by 100x, since the steps cross ReLU kinks.)"""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("seed_cnn", "cpu")
        x = torch.rand(32, 1, 28, 28)
    data = (x, torch.arange(32) % 10)
    model64, data64 = copy.deepcopy(model).double(), (x.double(), data[1])
    top = hs.top_eigenvalues(hs.HessianOperator(model, data), k=1, max_iter=20, tol=1e-3, seed=0)
    for direction in (random_direction(model, seed=3), top.eigenvectors[0]):
        exact = sl.directional_curvature(model, data, direction)
        reference = sl.directional_curvature(
            model64,
            data64,
            direction.double() if torch.is_tensor(direction) else {k: v.double() for k, v in direction.items()},
        )
        assert exact == pytest.approx(reference, rel=1e-2)
        assert exact != 0.0


def test_slices_evaluate_in_eval_mode():
    q = make_quadratic(NEAR_DEGENERATE, train_sensitive=True)  # its loss triples in train mode
    x0, u = q.x(), q.eigenvectors[:, 0]
    one = sl.slice_1d(q.model, q.data, u, [0.0, 1.0], loss_fn=q.loss_fn)
    assert one.loss.tolist() == pytest.approx([q.loss(x0), q.loss(x0 + u)], abs=1e-10)
    two = sl.slice_2d(q.model, q.data, u, u, [0.0], [0.0], loss_fn=q.loss_fn)
    assert two.loss[0, 0].item() == pytest.approx(q.loss(x0), abs=1e-10)
    assert sl.directional_curvature(q.model, q.data, u, loss_fn=q.loss_fn) == pytest.approx(19.13, abs=1e-7)
    assert q.model.training


def test_slices_leave_the_model_unchanged(tiny_model, tiny_data):
    model = tiny_model.train()
    model.fc1.weight.requires_grad_(False)
    snapshot = ModelSnapshot.of(model)
    data = _subset(tiny_data, 16)
    d1, d2 = orthogonal_pair(model, seed=0)
    sl.slice_1d(model, data, d1, [0.0, 1.0])
    sl.slice_2d(model, data, d1, d2, [0.0, 1.0], [0.0, 1.0])
    sl.directional_curvature(model, data, d1)
    snapshot.assert_unchanged(model)


def test_slice_bad_arguments(tiny_model, tiny_data):
    data = _subset(tiny_data, 8)
    d = random_filter_normalized(tiny_model, seed=0)
    with pytest.raises(ValueError, match="Expected non-empty `alphas`"):
        sl.slice_1d(tiny_model, data, d, [])
    with pytest.raises(ValueError, match="Expected finite `betas`"):
        sl.slice_2d(tiny_model, data, d, d, [0.0], [float("nan")])
    with pytest.raises(ValueError, match="Expected `step` > 0"):
        sl.finite_difference_curvature(tiny_model, data, d, step=0.0)
    with pytest.raises(ValueError, match="non-zero direction"):
        sl.directional_curvature(tiny_model, data, torch.zeros(2570, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"Expected a flat direction of shape \[2570\]"):
        sl.slice_1d(tiny_model, data, torch.zeros(3), [0.0])
