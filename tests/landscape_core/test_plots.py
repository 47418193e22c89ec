"""Tests of landscape_core.plots (geometry, training, correlation): axes, data drawn, PNG output, no pyplot state."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from scipy import stats

from landscape_core import keys
from landscape_core.config import HessianConfig, TrainConfig
from landscape_core.connectivity import InterpolationResult, barrier
from landscape_core.measure import LambdaMaxTracker, Measurements
from landscape_core.plots import correlation, geometry, training
from landscape_core.plots.correlation import scatter_grid
from landscape_core.plots.geometry import (
    barrier_matrix_plot,
    eigenvalue_plot,
    geometry_figures,
    interpolation_plot,
    noise_plot,
    slice_1d_plot,
    slice_2d_plot,
)
from landscape_core.plots.training import training_curves
from landscape_core.sharpness import NoiseResult
from landscape_core.splits import TrialData
from landscape_core.train import EpochMetrics, train


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
            extra={keys.LAMBDA_MAX_EPOCH: 10.0 + e, keys.EOS_THRESHOLD: 380.0} if extra else {},
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


def test_the_edge_of_stability_panel_is_drawn_from_what_the_tracker_writes(fashion) -> None:
    """The real chain: LambdaMaxTracker -> train -> training_curves, with no key typed by the test."""
    config = TrainConfig(epochs=2, batch_size=64, train_size=256, test_size=128, device="cpu")
    data = TrialData.build(fashion, config)
    tracker = LambdaMaxTracker(
        data, HessianConfig(track_subset=32, track_iter=3), lr=config.lr, momentum=config.momentum
    )
    history = train(config, data, on_epoch=tracker).history
    fig = training_curves(history)
    assert len(fig.axes) == 3 and fig.axes[2].get_title() == "Edge of stability"
    lam = [h.extra[keys.LAMBDA_MAX_EPOCH] for h in history]
    np.testing.assert_allclose(fig.axes[2].lines[0].get_ydata(), lam)
    np.testing.assert_allclose(fig.axes[2].lines[1].get_ydata(), [(2 + 2 * 0.9) / 0.01] * 2)


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


def _measured_arrays(aligned: bool = True) -> dict:
    """``Measurements.arrays`` as ``landscape_core.measure.measure`` lays them out, with distinct known values."""
    alphas_1d = np.linspace(-1.0, 1.0, 7)
    alphas_2d, betas_2d = np.linspace(-1.0, 1.0, 5), np.linspace(-1.0, 1.0, 4)
    grid = np.linspace(0.0, 14.0, 30)
    path_alphas = np.linspace(0.0, 1.0, 6)
    bump = np.sin(np.pi * path_alphas)
    paths = {}
    for i, name in enumerate(["train", "test", "train_aligned", "test_aligned"] if aligned else ["train", "test"]):
        path = InterpolationResult(path_alphas, 0.3 + 0.1 * i + bump / (1 + i), 0.95 - 0.5 * bump / (1 + i))
        paths[name] = {**path.to_dict(), **barrier(path).to_dict()}
    draws = np.array([[0.30, 0.32], [0.35, 0.37], [0.90, 1.10], [5.0, 5.4]])
    accs = np.array([[0.90, 0.91], [0.88, 0.90], [0.70, 0.72], [0.40, 0.38]])
    noise = NoiseResult(
        sigmas=(0.01, 0.02, 0.05, 0.1),
        base_loss=0.29,
        base_acc=0.91,
        losses=tuple(map(tuple, draws)),
        accs=tuple(map(tuple, accs)),
        loss_mean=tuple(draws.mean(1)),
        loss_std=tuple(draws.std(1, ddof=1)),
        loss_stderr=tuple(draws.std(1, ddof=1) / np.sqrt(2)),
        acc_mean=tuple(accs.mean(1)),
        acc_std=tuple(accs.std(1, ddof=1)),
        acc_stderr=tuple(accs.std(1, ddof=1) / np.sqrt(2)),
    )
    return {
        "eigenvalues": {"eigenvalues": [13.0, 3.0, 7.5], "residuals": [1e-6] * 3, "converged": True, "n_hvp": 40},
        "trace": {"estimate": 30.0, "stderr": 1.0, "samples": [29.0, 31.0]},
        "density": {"grid": grid.tolist(), "density": (np.exp(-((grid - 7.0) ** 2)) + 1e-3).tolist()},
        "sharpness": {"eps": {"value": 0.1}, "adaptive": {"value": 0.2}},
        "curvature": {"random": [1.0, 2.0]},
        "noise": noise.to_dict(),
        "slice_1d": {
            "random": {"alphas": alphas_1d.tolist(), "loss": (1 + alphas_1d**2).tolist(), "accuracy": [0.9] * 7},
            "top_eigenvector": {
                "alphas": alphas_1d.tolist(),
                "loss": (1 + 3 * alphas_1d**2).tolist(),
                "accuracy": (0.9 - 0.3 * alphas_1d**2).tolist(),
            },
        },
        "slice_2d": {
            "alphas": alphas_2d.tolist(),
            "betas": betas_2d.tolist(),
            "loss": (1 + alphas_2d[:, None] ** 2 + 2 * betas_2d[None, :] ** 2).tolist(),
            "accuracy": np.full((5, 4), 0.9).tolist(),
        },
        "interpolation": paths,
    }


def test_geometry_figures_draw_every_measured_array(tmp_path) -> None:
    measurements = Measurements(scalars={"hessian/lambda_max": 13.0}, arrays=_measured_arrays())
    arrays = measurements.arrays
    figures = geometry_figures(arrays)
    assert list(figures) == ["eigenvalues", "slice_1d", "slice_2d", "interpolation", "weight_noise"]
    assert all(isinstance(fig, Figure) for fig in figures.values())

    eig_ax, density_ax = figures["eigenvalues"].axes
    np.testing.assert_allclose(eig_ax.containers[0].markerline.get_ydata(), [13.0, 7.5, 3.0])  # largest first
    np.testing.assert_allclose(density_ax.lines[0].get_xdata(), arrays["density"]["grid"])
    np.testing.assert_allclose(density_ax.lines[0].get_ydata(), arrays["density"]["density"])

    loss_ax, acc_ax = figures["slice_1d"].axes
    curves = arrays["slice_1d"]
    assert [line.get_label() for line in loss_ax.lines[:2]] == list(curves)
    for line, acc_line, curve in zip(loss_ax.lines, acc_ax.lines, curves.values(), strict=False):
        np.testing.assert_allclose(line.get_xdata(), curve["alphas"])
        np.testing.assert_allclose(line.get_ydata(), curve["loss"])
        np.testing.assert_allclose(acc_line.get_ydata(), 100 * np.asarray(curve["accuracy"]))

    map_ax, _colorbar = figures["slice_2d"].axes
    plane = arrays["slice_2d"]
    mesh = map_ax.collections[0].get_array()
    np.testing.assert_allclose(np.asarray(mesh).reshape(4, 5), np.asarray(plane["loss"]).T)

    path_loss_ax, path_err_ax = figures["interpolation"].axes
    paths = arrays["interpolation"]
    assert len(path_loss_ax.lines) == len(path_err_ax.lines) == 4
    for line, err_line, path in zip(path_loss_ax.lines, path_err_ax.lines, paths.values(), strict=True):
        assert len(line.get_xdata()) == len(path["alphas"])
        np.testing.assert_allclose(line.get_ydata(), path["loss"])
        np.testing.assert_allclose(err_line.get_ydata(), 100 * np.asarray(path["error"]))

    noise_loss_ax, noise_acc_ax = figures["weight_noise"].axes
    noise = arrays["noise"]
    np.testing.assert_allclose(noise_loss_ax.containers[0].lines[0].get_xdata(), noise["sigmas"])
    np.testing.assert_allclose(noise_loss_ax.containers[0].lines[0].get_ydata(), noise["loss_mean"])
    np.testing.assert_allclose(noise_acc_ax.containers[0].lines[0].get_ydata(), 100 * np.asarray(noise["acc_mean"]))
    for ax, stderr in ((noise_loss_ax, noise["loss_stderr"]), (noise_acc_ax, 100 * np.asarray(noise["acc_stderr"]))):
        (bars,) = ax.containers[0].lines[2]  # the vertical error bars: mean -+ stderr
        np.testing.assert_allclose([seg[1, 1] - seg[0, 1] for seg in bars.get_segments()], 2 * np.asarray(stderr))
    for name, fig in figures.items():
        _save(fig, tmp_path / f"{name}.png")


def test_geometry_figures_only_for_what_was_measured() -> None:
    arrays = _measured_arrays(aligned=False)
    assert geometry_figures({}) == {}
    assert geometry_figures({k: arrays[k] for k in ("trace", "sharpness", "curvature", "density")}) == {}
    only = geometry_figures({k: arrays[k] for k in ("eigenvalues", "interpolation")})
    assert list(only) == ["eigenvalues", "interpolation"]
    assert len(only["eigenvalues"].axes) == 1  # no density measured
    assert [len(ax.lines) for ax in only["interpolation"].axes] == [2, 2]  # not aligned: raw train and test only


def test_scatter_grid_panels() -> None:
    rng = np.random.default_rng(1234)
    z = rng.normal(size=25)
    x = z + rng.normal(size=25)
    y = 0.4 * x + rng.normal(size=25) + 0.3 * z
    x[3] = np.nan
    lr = np.geomspace(1e-3, 1e-1, 25)
    lr[7] = np.nan
    fig = scatter_grid({"a": x, "b": z}, {"t": y, "u": x + z, "v": y - z}, color_by=lr)
    assert isinstance(fig, Figure)
    scatter_axes = [ax for ax in fig.axes if any(isinstance(c, PathCollection) for c in ax.collections)]
    assert len(scatter_axes) == 6
    assert len(fig.axes) == 12  # one colorbar per panel
    first = scatter_axes[0]
    assert first.collections[0].get_offsets().shape[0] == 23  # the runs with NaN x or NaN colour are skipped
    keep = np.isfinite(x) & np.isfinite(lr)
    rho = stats.spearmanr(x[keep], y[keep]).statistic
    assert f"rho={rho:+.2f}" in first.get_title()
    assert first.get_xlabel() == "a" and first.get_ylabel() == "t"
    plain = scatter_grid({"a": x}, {"t": y})
    assert len(plain.axes) == 1


def test_plot_modules_do_not_use_pyplot() -> None:
    for module in (geometry, training, correlation):
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
