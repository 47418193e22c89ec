"""landscape_core.trajectory: checkpoints along training, their PCA (against numpy's SVD and known planes), the loss
on the principal plane (against direct evaluations), and its figure."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from landscape_core.functional import evaluate, flatten, param_dict, unflatten
from landscape_core.plots.trajectory import trajectory_figure
from landscape_core.trajectory import Checkpoints, pca_trajectory, plane_grid, trajectory_plane_loss
from tests.landscape_core.conftest import make_tiny_data, make_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _walk(k: int = 12, p: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random walk ``[k, p]`` (anisotropic steps, a drift) whose last row is the final weights ``[p]``."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -2, p, dtype=torch.float64)
    steps = torch.randn(k, p, generator=g, dtype=torch.float64) * scales + 0.3 * scales
    walk = torch.randn(p, generator=g, dtype=torch.float64) + steps.cumsum(0)
    return walk, walk[-1].clone()


def _orthonormal(p: int, n: int, seed: int) -> torch.Tensor:
    """``n`` random orthonormal vectors in R^p, as the rows of ``[n, p]`` float64."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(p, n, generator=g, dtype=torch.float64))[0].T.contiguous()


def _in_plane(basis: torch.Tensor, final: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``k`` points ``final + a_i e1 + b_i e2`` with random ``(a_i, b_i)`` and ``basis = [e1; e2]``."""
    g = torch.Generator().manual_seed(seed)
    ab = torch.randn(k, 2, generator=g, dtype=torch.float64)
    return final + ab.to(basis.dtype) @ basis


def test_coords_are_the_projections_of_the_uncentered_differences():
    checkpoints, final = _walk()
    pca = pca_trajectory(checkpoints, final)
    assert pca.components.shape == (2, 300) and pca.coords.shape == (12, 2) and pca.explained.shape == (2,)
    torch.testing.assert_close(pca.coords, (checkpoints - final) @ pca.components.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert pca.coords[-1].tolist() == [0.0, 0.0]  # the final weights at the origin
    for seed in range(6):  # the sign convention: the start at coordinates >= 0 (eigh's signs are arbitrary)
        assert bool((pca_trajectory(*_walk(seed=seed)).coords[0] >= 0).all())


def test_the_fit_is_numpy_svd_of_the_centered_differences_without_the_final_row():
    checkpoints, final = _walk(seed=1)
    pca = pca_trajectory(checkpoints, final)
    m = (checkpoints - final).numpy()[:-1]  # Li et al.'s M: theta_0 - theta_n, ..., theta_{n-1} - theta_n
    _, s, vt = np.linalg.svd(m - m.mean(axis=0), full_matrices=False)  # sklearn's PCA: centered
    np.testing.assert_allclose(pca.explained.numpy(), s[:2] ** 2 / np.sum(s**2), rtol=1e-10)
    overlap = np.sum(pca.components.numpy() * vt[:2], axis=1)
    np.testing.assert_allclose(np.abs(overlap), [1.0, 1.0], atol=1e-10)  # the same directions, up to sign
    # The uncentered fit is measurably different on this drifting walk: the reference above would catch it.
    _, s_raw, _ = np.linalg.svd(m, full_matrices=False)
    assert abs(s_raw[0] ** 2 / np.sum(s_raw**2) - s[0] ** 2 / np.sum(s**2)) > 1e-2
    # Whether the stack includes the final weights or not, M is the same, so is the fit.
    without = pca_trajectory(checkpoints[:-1], final)
    torch.testing.assert_close(without.components, pca.components, atol=1e-12, rtol=0)
    torch.testing.assert_close(without.explained, pca.explained, atol=1e-12, rtol=0)
    torch.testing.assert_close(without.coords, pca.coords[:-1], atol=1e-12, rtol=0)


def test_a_trajectory_in_a_known_plane_is_recovered():
    basis = _orthonormal(500, 2, seed=2)
    final = torch.randn(500, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    checkpoints = _in_plane(basis, final, k=9, seed=4)
    pca = pca_trajectory(checkpoints, final)
    assert float(pca.explained.sum()) == pytest.approx(1.0, abs=1e-12)
    residual = pca.components - (pca.components @ basis.T) @ basis  # what lies outside span(e1, e2)
    assert float(torch.linalg.matrix_norm(residual)) < 1e-10
    # The plane holds the trajectory, so the coordinates rebuild every checkpoint.
    torch.testing.assert_close(final + pca.coords @ pca.components, checkpoints, atol=1e-12, rtol=0)


def test_one_dominant_direction_explains_almost_everything():
    basis = _orthonormal(400, 3, seed=5)
    g = torch.Generator().manual_seed(6)
    amounts = torch.randn(20, 3, generator=g, dtype=torch.float64) * torch.tensor([10.0, 0.1, 0.05])
    final = torch.randn(400, generator=g, dtype=torch.float64)
    pca = pca_trajectory(final + amounts @ basis, final)
    assert float(pca.explained[0]) > 0.999
    assert float(pca.explained[1]) < 1e-3
    assert abs(float(pca.components[0] @ basis[0])) == pytest.approx(1.0, abs=1e-4)


def test_degenerate_trajectories_are_refused():
    checkpoints, final = _walk(k=5, p=50)
    with pytest.raises(ValueError, match="K >= 3"):
        pca_trajectory(checkpoints[:2], final)
    with pytest.raises(ValueError, match="shape"):
        pca_trajectory(checkpoints, final[:-1])
    line = final + torch.linspace(-1, 1, 6, dtype=torch.float64)[:, None] * checkpoints[0]
    with pytest.raises(ValueError, match="rank 1"):
        pca_trajectory(line, final)
    with pytest.raises(ValueError, match="rank 0"):
        pca_trajectory(final.expand(4, -1), final)


def test_plane_grid_covers_the_trajectory_and_the_origin_with_a_margin():
    basis = _orthonormal(60, 2, seed=7)
    final = torch.zeros(60, dtype=torch.float64)
    pca = pca_trajectory(_in_plane(basis, final, k=6, seed=8) + 3.0 * basis[0], final)  # the origin off the path
    xs, ys = plane_grid(pca, points=7, margin=0.25)
    assert xs.shape == ys.shape == (7,) and xs.dtype == torch.float64
    for axis, values in enumerate((xs, ys)):
        low = min(float(pca.coords[:, axis].min()), 0.0)
        high = max(float(pca.coords[:, axis].max()), 0.0)
        pad = 0.25 * (high - low)
        assert float(values[0]) == pytest.approx(low - pad) and float(values[-1]) == pytest.approx(high + pad)
        assert bool((values.diff() > 0).all()) and float(values[0]) < 0.0 < float(values[-1])


class _Flat(nn.Module):
    """Two parameters whose flat form is ``[w (2x2), b (2)]``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, 2))
        self.b = nn.Parameter(torch.zeros(2))


def test_checkpoints_keep_the_steps_divisible_by_every_and_copies():
    model, kept = _Flat().double(), Checkpoints(every=3)
    kept.add(0, model)
    for step in range(1, 11):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(step)
        kept(step, model)
    kept.add(10, model)
    assert kept.steps == [0, 3, 6, 9, 10] and len(kept) == 5
    stack = kept.stack()
    assert stack.shape == (5, 6) and stack.dtype == torch.float32 and stack.device.type == "cpu"
    assert stack[:, 0].tolist() == [0.0, 3.0, 6.0, 9.0, 10.0]
    with torch.no_grad():
        model.w.add_(100.0)  # a stored copy does not follow the model
    assert kept.stack()[-1].tolist() == [10.0] * 6
    # A step stored twice is kept once, with the later copy.
    kept.add(10, model)
    assert kept.steps == [0, 3, 6, 9, 10] and kept.stack()[-1].tolist() == [110.0] * 4 + [10.0] * 2
    with pytest.raises(ValueError, match="every"):
        Checkpoints(every=0)
    with pytest.raises(ValueError, match="none"):
        Checkpoints(every=1).stack()


def test_the_plane_loss_at_the_origin_and_at_a_checkpoint_in_the_plane():
    final_model, other = make_tiny_model(), make_tiny_model(seed=5)
    data = make_tiny_data(32)
    like = param_dict(final_model)
    final = flatten(like)
    basis = 0.5 * _orthonormal(final.numel(), 2, seed=9)  # steps of ~0.5: the loss moves
    checkpoints = _in_plane(basis, final, k=5, seed=10)
    pca = pca_trajectory(checkpoints, final)
    x, y = pca.coords[2].tolist()
    other_before = flatten(param_dict(other))
    calls = []
    # Evaluated through another model's copy: the final weights come from `like`, never from `other`.
    loss = trajectory_plane_loss(
        other, like, pca, data, [0.0, x], [0.0, y, 0.3], chunk_size=16, progress=lambda i, n: calls.append(i)
    )
    assert loss.shape == (3, 2) and loss.dtype == torch.float64 and calls == list(range(1, 7))
    assert float(loss[0, 0]) == pytest.approx(evaluate(final_model, data)[0], abs=1e-12)
    at_checkpoint = evaluate(final_model, data, params=unflatten(checkpoints[2], like))[0]
    assert float(loss[1, 1]) == pytest.approx(at_checkpoint, abs=1e-10)
    # Rows run along y, columns along x.
    up = evaluate(final_model, data, params=unflatten(final + 0.3 * pca.components[1], like))[0]
    right = evaluate(final_model, data, params=unflatten(final + x * pca.components[0], like))[0]
    assert float(loss[2, 0]) == pytest.approx(up, abs=1e-10)
    assert float(loss[0, 1]) == pytest.approx(right, abs=1e-10)
    assert torch.equal(flatten(param_dict(other)), other_before)  # the caller's model is untouched


def test_trajectory_figure():
    xs, ys = np.linspace(-1, 2, 9), np.linspace(-0.5, 1, 7)
    loss = 0.1 + xs[None, :] ** 2 + 3 * ys[:, None] ** 2  # [len(ys), len(xs)]
    coords = np.array([[1.8, 0.9], [1.0, 0.2], [0.4, -0.3], [0.0, 0.0]])
    fig = trajectory_figure(xs, ys, loss, coords, [0.812, 0.143], steps=[0, 10, 20, 30])
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the plane and the colorbar
    assert ax.get_xlabel() == "PC1 (81.2% of variance)" and ax.get_ylabel() == "PC2 (14.3% of variance)"
    np.testing.assert_array_equal(ax.lines[0].get_xydata(), coords)
    texts = [t.get_text() for t in ax.texts]
    assert "start (step 0)" in texts and "final (step 30)" in texts and "PC1 + PC2: 95.5% of the variance" in texts
    fig.savefig(io.BytesIO(), format="png", dpi=30)
    with pytest.raises(ValueError, match="shape"):
        trajectory_figure(xs, ys, loss.T, coords, [0.8, 0.1])


def test_a_limit_keeps_between_half_of_it_and_it_evenly_spaced_however_long_training_runs() -> None:
    model = nn.Linear(3, 2)
    for steps in (5, 37, 200):
        kept = Checkpoints(1, limit=8)
        for step in range(steps + 1):  # step 0 (initialization) and after each step, as train calls it
            with torch.no_grad():
                model.weight.fill_(float(step))
            kept(step, model)
        assert kept.steps[0] == 0 and len(set(np.diff(kept.steps))) == 1, kept.steps  # evenly spaced from 0
        assert min(steps + 1, 4) <= len(kept) <= 8, (steps, kept.steps)
        assert kept.stack()[:, 0].tolist() == [float(s) for s in kept.steps]  # each copy is its step's weights
