"""Tests of landscape_core.plots (geometry, training, correlation): axes, data drawn, PNG output, no pyplot state."""

from __future__ import annotations

import ast
import inspect
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy import stats

from landscape_core import keys
from landscape_core.config import HessianConfig, TrainConfig
from landscape_core.connectivity import InterpolationResult, barrier
from landscape_core.measure import LambdaMaxTracker, Measurements
from landscape_core.plots import correlation, geometry, training
from landscape_core.plots.correlation import (
    INVARIANCE_COLORS,
    ForestRow,
    correlation_heatmap,
    forest_plot,
    primary_scatter,
    rank_residuals,
    scatter_grid,
)
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
    tracker = LambdaMaxTracker(data, HessianConfig(track_subset=32, track_iter=3), threshold=config.stability_threshold)
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


def _png(fig: Figure) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def _forest_rows() -> list[ForestRow]:
    nan = math.nan
    return [
        ForestRow(
            "lam", "test loss", 0.40, 0.10, 0.60, True, True, disattenuated=0.50, reliability=0.64, significant=True
        ),
        ForestRow("trace", "test loss", -0.20, -0.50, 0.10, False, False, disattenuated=nan),
        ForestRow("norm", "test loss", nan, nan, nan, None, False),
        ForestRow("lam", "gap", 0.10, -0.20, 0.40, True, False, disattenuated=0.12, reliability=0.7),
        ForestRow("trace", "gap", 0.55, 0.30, 0.75, False, True, significant=True),
        ForestRow("norm", "gap", -0.05, -0.35, 0.25, None, False, disattenuated=-0.06, reliability=0.8),
    ]


def _rows_by_marker(ax, gid: str) -> dict[str, object]:
    """Label of the row each ``gid`` line sits on -> the line."""
    labels = {round(y): t.get_text() for y, t in zip(ax.get_yticks(), ax.get_yticklabels())}
    return {labels[round(line.get_ydata()[0])]: line for line in ax.lines if line.get_gid() == gid}


def test_forest_plot_draws_one_marker_per_finite_row_coloured_by_invariance() -> None:
    rows = _forest_rows()
    fig = forest_plot(rows)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["test loss", "gap"]  # one panel per target
    for ax in fig.axes:
        assert ax.get_xlim() == pytest.approx((-1.05, 1.05))
        assert any(line.get_xdata()[0] == 0 and line.get_xdata()[1] == 0 for line in ax.lines)  # the line at 0
    by_target = {t: [r for r in rows if r.target == t] for t in ("test loss", "gap")}
    for ax, group in zip(fig.axes, by_target.values()):
        markers = _rows_by_marker(ax, "rho")
        finite = [r for r in group if np.isfinite(r.rho)]
        assert len(markers) == len(finite)
        assert len([line for line in ax.lines if line.get_gid() == "ci"]) == len(finite)
        assert [t.get_text() for t in ax.get_yticklabels()] == [
            f"★ {r.measure}" if r.primary else r.measure for r in group
        ]
        for label, row in zip(ax.get_yticklabels(), group):
            assert (label.get_fontweight() == "bold") == row.primary
        for row in finite:
            line = markers[f"★ {row.measure}" if row.primary else row.measure]
            assert line.get_xdata()[0] == row.rho
            assert to_rgba(line.get_markeredgecolor()) == to_rgba(INVARIANCE_COLORS[row.invariant])
            face = INVARIANCE_COLORS[row.invariant] if row.significant else "white"
            assert to_rgba(line.get_markerfacecolor()) == to_rgba(face)
        for label, line in _rows_by_marker(ax, "ci").items():
            row = next(r for r in group if label.endswith(r.measure))
            assert list(line.get_xdata()) == [row.ci_low, row.ci_high]
            assert to_rgba(line.get_color()) == to_rgba(INVARIANCE_COLORS[row.invariant])
        hollow = _rows_by_marker(ax, "disattenuated")
        assert sorted(hollow) == sorted(
            f"★ {r.measure}" if r.primary else r.measure for r in finite if np.isfinite(r.disattenuated)
        )
        for label, line in hollow.items():
            row = next(r for r in group if label.endswith(r.measure))
            assert line.get_xdata()[0] == row.disattenuated
            assert line.get_markerfacecolor() == "none"
            assert to_rgba(line.get_markeredgecolor()) == to_rgba(INVARIANCE_COLORS[row.invariant])
        values = [t.get_text() for t in ax.texts]  # the value column, "+0.40 [+0.10, +0.60] ..." or "–"
        assert len(values) == len(group)
        assert all(v.startswith(_expected_value_prefix(r)) for v, r in zip(values, group))
    assert "–" in [t.get_text() for t in fig.axes[0].texts]  # the NaN row is listed
    assert len(set(INVARIANCE_COLORS.values())) == 3
    legend_labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"invariant", "not invariant", "not audited"} <= set(legend_labels)
    _png(fig)


def _expected_value_prefix(row: ForestRow) -> str:
    return "–" if not np.isfinite(row.rho) else f"{row.rho:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"


def test_forest_plot_height_grows_with_rows_and_rejects_empty() -> None:
    small = forest_plot(_forest_rows()[:3])
    large = forest_plot(_forest_rows())
    assert large.get_figheight() > small.get_figheight()
    with pytest.raises(ValueError, match="at least one row"):
        forest_plot([])
    with pytest.raises(ValueError, match="ci_low"):
        ForestRow("m", "t", 0.1, 0.5, 0.2, None, False)


def test_correlation_heatmap_cells_annotations_and_validation() -> None:
    measures, targets = ["a", "b", "c"], ["t", "u", "v", "w"]
    rho = np.array([[0.42, -0.1, np.nan, 0.9], [0.0, -0.75, 0.3, 0.05], [1.0, -1.0, 0.123, np.nan]])
    significant = np.zeros(rho.shape, dtype=bool)
    significant[0, 0] = significant[1, 1] = True
    primary = np.zeros(rho.shape, dtype=bool)
    primary[0, 0] = primary[2, 1] = True
    fig = correlation_heatmap(measures, targets, rho, significant, primary)
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the heatmap and its colorbar
    image = ax.images[0]
    data = image.get_array()
    assert np.array_equal(np.ma.getmaskarray(data), np.isnan(rho))
    assert np.array_equal(data.filled(np.nan), rho, equal_nan=True)
    assert image.get_clim() == (-1.0, 1.0)
    texts = [t.get_text() for t in ax.texts]
    assert texts == [
        "+0.42*",
        "-0.10",
        "–",
        "+0.90",
        "+0.00",
        "-0.75*",
        "+0.30",
        "+0.05",
        "+1.00",
        "-1.00",
        "+0.12",
        "–",
    ]
    weights = [t.get_fontweight() for t in ax.texts]
    assert [w == "bold" for w in weights] == list(significant.ravel())
    outlined = [p.get_xy() for p in ax.patches if isinstance(p, Rectangle) and p.get_gid() == "primary"]
    assert sorted(outlined) == [(-0.5, -0.5), (0.5, 1.5)]  # (column - 0.5, row - 0.5) of each primary cell
    assert [t.get_text() for t in ax.get_yticklabels()] == measures
    assert [t.get_text() for t in ax.get_xticklabels()] == targets
    _png(fig)
    no_primary = correlation_heatmap(measures, targets, rho, significant)
    assert not [p for p in no_primary.axes[0].patches if p.get_gid() == "primary"]
    with pytest.raises(ValueError, match=re.escape("Expected `rho` to have shape (3, 4), got (3, 3)")):
        correlation_heatmap(measures, targets, rho[:, :3], significant)
    with pytest.raises(ValueError, match=re.escape("Expected `primary` to have shape (3, 4), got (4, 3)")):
        correlation_heatmap(measures, targets, rho, significant, primary.T)


def _partial_spearman_by_formula(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    r = stats.spearmanr(np.column_stack([x, y, z])).statistic
    r_xy, r_xz, r_yz = r[0, 1], r[0, 2], r[1, 2]
    return float((r_xy - r_xz * r_yz) / np.sqrt((1 - r_xz**2) * (1 - r_yz**2)))


def test_rank_residuals_match_a_least_squares_fit_on_ranks() -> None:
    rng = np.random.default_rng(5)
    z = np.exp(rng.normal(size=30))
    x = np.round(z**2 + rng.normal(size=30), 1)  # ties: average ranks
    x[:4] = x[4]
    ranks_x, ranks_z = stats.rankdata(x), stats.rankdata(z)
    design = np.column_stack([np.ones(30), ranks_z])
    expected = ranks_x - design @ np.linalg.lstsq(design, ranks_x, rcond=None)[0]
    assert np.allclose(rank_residuals(x, z), expected, atol=1e-10)
    y = -z + rng.normal(size=30)
    partial = np.corrcoef(rank_residuals(x, z), rank_residuals(y, z))[0, 1]
    assert partial == pytest.approx(_partial_spearman_by_formula(x, y, z), abs=1e-12)
    with pytest.raises(ValueError, match="finite"):
        rank_residuals([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="length 3"):
        rank_residuals([1.0, 2.0, 3.0], [1.0, 2.0])


def test_primary_scatter_titles_the_partial_spearman_and_drops_non_finite_runs() -> None:
    rng = np.random.default_rng(11)
    n = 40
    z = np.exp(2.0 * rng.normal(size=n))  # skewed: residualizing on raw z instead of its ranks gives another number
    x = np.exp(0.8 * np.log(z) + rng.normal(size=n))  # positive, spanning decades: log x
    y = np.log(z) - 0.5 * np.log(x) + rng.normal(scale=0.5, size=n)
    x[2], y[5], z[8] = np.nan, np.inf, np.nan
    fig = primary_scatter(x, y, z, measure="lambda_max")
    left, right = fig.axes
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    assert keep.sum() == n - 3
    assert np.array_equal(left.collections[0].get_offsets(), np.column_stack([x[keep], y[keep]]))
    assert right.collections[0].get_offsets().shape == (n - 3, 2)
    assert left.get_xscale() == "log"
    assert left.get_xlabel() == "lambda_max" and left.get_ylabel() == "test loss"
    rho = stats.spearmanr(x[keep], y[keep]).statistic
    partial = _partial_spearman_by_formula(x[keep], y[keep], z[keep])
    assert abs(partial - rho) > 0.05  # the two titles tell the two views apart
    assert f"rho={rho:+.2f} (n={n - 3})" in left.get_title()
    match = re.search(r"partial Spearman rho=([+-]\d\.\d\d) given train loss \(n=(\d+)\)", right.get_title())
    assert match is not None, right.get_title()
    assert float(match.group(1)) == pytest.approx(partial, abs=0.005)
    assert int(match.group(2)) == n - 3
    offsets = right.collections[0].get_offsets()
    assert np.corrcoef(offsets[:, 0], offsets[:, 1])[0, 1] == pytest.approx(partial, abs=1e-12)
    _png(fig)
    linear = primary_scatter(np.linspace(1.0, 5.0, 10), np.arange(10.0), np.arange(10.0)[::-1], measure="m")
    assert linear.axes[0].get_xscale() == "linear"  # less than a decade
    with pytest.raises(ValueError, match="length 40"):
        primary_scatter(x, y[:-1], z, measure="m")
