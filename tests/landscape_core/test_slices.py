"""landscape_core.slices: 1D/2D slices and directional curvature, against closed forms on quadratics."""

from __future__ import annotations

import pytest
import torch

from landscape_core import hessian as hs
from landscape_core import slices as sl
from landscape_core.directions import eigen_direction, orthogonal_pair, random_filter_normalized
from landscape_core.functional import evaluate, flatten, param_dict
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
    c = sl.directional_curvature(quadratic.model, quadratic.data, v, eps=1e-3, loss_fn=quadratic.loss_fn)
    assert c == pytest.approx(float(unit @ quadratic.A @ unit), abs=1e-6)
    top = sl.directional_curvature(
        quadratic.model, quadratic.data, quadratic.eigenvectors[:, 0], eps=1e-2, loss_fn=quadratic.loss_fn
    )
    assert top == pytest.approx(19.13, abs=1e-7)
    neg = sl.directional_curvature(
        quadratic.model, quadratic.data, quadratic.eigenvectors[:, -1], eps=1e-2, loss_fn=quadratic.loss_fn
    )
    assert neg == pytest.approx(-8.6, abs=1e-7)


def test_directional_curvature_matches_hvp_on_tiny_cnn(tiny_model, tiny_data):
    data = _subset(tiny_data, 64)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(2570, generator=g, dtype=torch.float64)
    v = v / v.norm()
    vHv = float(v @ hs.hvp(tiny_model, data, v))
    c = sl.directional_curvature(tiny_model, data, v, eps=1e-4)
    assert c == pytest.approx(vHv, rel=1e-4)
    # Along the top eigenvector, the curvature is the top eigenvalue.
    top = hs.top_eigenvalues(hs.HessianOperator(tiny_model, data), k=1, tol=1e-6)
    c_top = sl.directional_curvature(tiny_model, data, eigen_direction(top.eigenvectors[0], tiny_model), eps=1e-4)
    assert c_top == pytest.approx(float(top.eigenvalues[0]), rel=1e-4)


def test_slices_evaluate_in_eval_mode():
    q = make_quadratic(NEAR_DEGENERATE, train_sensitive=True)  # its loss triples in train mode
    x0, u = q.x(), q.eigenvectors[:, 0]
    one = sl.slice_1d(q.model, q.data, u, [0.0, 1.0], loss_fn=q.loss_fn)
    assert one.loss.tolist() == pytest.approx([q.loss(x0), q.loss(x0 + u)], abs=1e-10)
    two = sl.slice_2d(q.model, q.data, u, u, [0.0], [0.0], loss_fn=q.loss_fn)
    assert two.loss[0, 0].item() == pytest.approx(q.loss(x0), abs=1e-10)
    assert sl.directional_curvature(q.model, q.data, u, eps=1e-2, loss_fn=q.loss_fn) == pytest.approx(19.13, abs=1e-7)
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
    with pytest.raises(ValueError, match="Expected `eps` > 0"):
        sl.directional_curvature(tiny_model, data, d, eps=0.0)
    with pytest.raises(ValueError, match="non-zero direction"):
        sl.directional_curvature(tiny_model, data, torch.zeros(2570, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"Expected a flat direction of shape \[2570\]"):
        sl.slice_1d(tiny_model, data, torch.zeros(3), [0.0])
