"""Tests of landscape_core.plots.geometry and .training: axes, data drawn, PNG output, no pyplot state."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from landscape_core.plots import geometry, training
from landscape_core.plots.geometry import (
    barrier_matrix_plot,
    eigenvalue_plot,
    interpolation_plot,
    noise_plot,
    slice_1d_plot,
    slice_2d_plot,
)
from landscape_core.plots.training import training_curves
from landscape_core.train import EpochMetrics


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=40)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _history(extra: bool) -> list[EpochMetrics]:
    return [
        EpochMetrics(
            epoch=e,
            train_loss=1.0 / e,
            train_acc=0.5 + 0.05 * e,
            test_loss=1.2 / e,
            test_acc=0.45 + 0.05 * e,
            seconds=1.0,
            extra={"lambda_max": 10.0 + e, "eos_threshold": 380.0} if extra else {},
        )
        for e in range(1, 5)
    ]


@pytest.mark.parametrize(("extra", "panels"), [(False, 2), (True, 3)])
def test_training_curves(tmp_path, extra, panels) -> None:
    history = _history(extra)
    fig = training_curves(history)
    assert isinstance(fig, Figure) and len(fig.axes) == panels
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [h.train_loss for h in history])
    np.testing.assert_allclose(fig.axes[1].lines[1].get_ydata(), [100 * h.test_acc for h in history])
    if extra:
        np.testing.assert_allclose(fig.axes[2].lines[0].get_ydata(), [11.0, 12.0, 13.0, 14.0])
        np.testing.assert_allclose(fig.axes[2].lines[1].get_ydata(), [380.0] * 4)
    _save(fig, tmp_path / "training.png")
    with pytest.raises(ValueError, match="history"):
        training_curves([])


def test_eigenvalue_plot(tmp_path) -> None:
    fig = eigenvalue_plot(torch.tensor([3.0, 13.0, 7.5]))
    assert len(fig.axes) == 1
    _save(fig, tmp_path / "eig.png")
    grid = np.linspace(-1, 14, 50)
    density = np.exp(-((grid - 1) ** 2))
    density[:5] = 0.0  # not drawable on a log axis; must not break the figure
    fig = eigenvalue_plot([13.0, 7.5, 3.0], density_grid=grid, density=density)
    assert len(fig.axes) == 2
    assert fig.axes[1].get_yscale() == "log"
    _save(fig, tmp_path / "eig_density.png")


def test_slice_1d_plot(tmp_path) -> None:
    alphas = np.linspace(-1, 1, 11)
    fig = slice_1d_plot(
        {
            "random": (alphas, alphas**2, 1 - alphas**2 / 2),
            "top eigenvector": (list(alphas), list(3 * alphas**2), None),
        }
    )
    assert len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 2 + 1  # two curves and the alpha = 0 marker line
    assert len(fig.axes[1].lines) == 1 + 1
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), 3 * alphas**2)
    _save(fig, tmp_path / "slice1d.png")
    with pytest.raises(ValueError, match="equal lengths"):
        slice_1d_plot({"bad": (alphas, alphas[:-1], None)})


@pytest.mark.parametrize("offset", [0.1, -1.0])
def test_slice_2d_plot(tmp_path, offset) -> None:
    alphas, betas = np.linspace(-1, 1, 9), np.linspace(-1, 1, 7)
    loss = offset + alphas[:, None] ** 2 + 2 * betas[None, :] ** 2  # positive (log levels) or not (linear)
    fig = slice_2d_plot(alphas, betas, loss)
    assert len(fig.axes) == 2  # map and colorbar
    _save(fig, tmp_path / "slice2d.png")
    with pytest.raises(ValueError, match="shape"):
        slice_2d_plot(alphas, betas, loss.T)


def test_interpolation_plot(tmp_path) -> None:
    alphas = np.linspace(0, 1, 6)
    bump = np.sin(np.pi * alphas)
    fig = interpolation_plot(alphas, 0.3 + bump, 0.4 + bump)
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2
    _save(fig, tmp_path / "path_raw.png")
    fig = interpolation_plot(
        alphas,
        0.3 + bump,
        0.4 + bump,
        aligned_train=0.3 + 0.1 * bump,
        aligned_test=0.4 + 0.1 * bump,
        train_err=0.1 + 0.5 * bump,
        test_err=0.12 + 0.5 * bump,
        aligned_train_err=0.1 + 0.05 * bump,
        aligned_test_err=0.12 + 0.05 * bump,
    )
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4 and len(fig.axes[1].lines) == 4
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), 100 * (0.1 + 0.5 * bump))
    _save(fig, tmp_path / "path_aligned.png")


def test_noise_plot(tmp_path) -> None:
    sigmas = [0.01, 0.02, 0.05, 0.1]
    fig = noise_plot(sigmas, [0.3, 0.35, 0.9, 5.2], [0.01, 0.01, 0.1, 0.8], [0.9, 0.89, 0.7, 0.39], [0, 0, 0.02, 0.05])
    assert len(fig.axes) == 2
    assert fig.axes[0].get_xscale() == "log"
    _save(fig, tmp_path / "noise.png")
    with pytest.raises(ValueError, match="equal lengths"):
        noise_plot(sigmas, [0.3], [0.01], [0.9], [0.0])


def test_barrier_matrix_plot(tmp_path) -> None:
    matrix = np.array([[0.0, 1.6, 1.2], [1.6, 0.0, np.nan], [1.2, 0.9, 0.0]])
    fig = barrier_matrix_plot(matrix, ["A", "B", "C"], "Test loss barrier")
    assert len(fig.axes) == 2
    assert len(fig.axes[0].texts) == 8  # one per finite cell
    assert fig.axes[0].get_title() == "Test loss barrier"
    _save(fig, tmp_path / "barriers.png")
    with pytest.raises(ValueError, match="square"):
        barrier_matrix_plot(matrix, ["A", "B"], "t")


def test_plot_modules_do_not_use_pyplot() -> None:
    for module in (geometry, training):
        tree = ast.parse(inspect.getsource(module))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {
            f"{node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        assert not any("pyplot" in name for name in imported), imported
        assert "matplotlib.figure.Figure" in imported
