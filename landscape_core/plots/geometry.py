"""Figures of the landscape's geometry (the paper's Figures 2-6), each a bare ``Figure`` (no pyplot state).

Every function accepts lists, numpy arrays or CPU tensors, and returns a ``matplotlib.figure.Figure`` that the caller
saves or logs; ``geometry_figures`` makes every figure that a trial's ``Measurements.arrays`` support.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from landscape_core.plots.curves import curve_plane_figure, three_paths_figure
from landscape_core.plots.trajectory import trajectory_figure

__all__ = [
    "barrier_matrix_plot",
    "eigenvalue_plot",
    "geometry_figures",
    "interpolation_plot",
    "noise_plot",
    "slice_1d_plot",
    "slice_2d_plot",
]


def _array(values: Any, name: str, ndim: int = 1) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    out = np.asarray(values, dtype=np.float64)
    if out.ndim != ndim:
        raise ValueError(f"Expected `{name}` with {ndim} dimension(s), got shape {out.shape}")
    return out


def _same_length(names: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        shown = ", ".join(f"{n}={len(a)}" for n, a in zip(names, arrays, strict=True))
        raise ValueError(f"Expected equal lengths, got {shown}")


def eigenvalue_plot(eigenvalues: Any, density_grid: Any = None, density: Any = None) -> Figure:
    """Top-k Hessian eigenvalues as a stem plot, and the SLQ spectral density on a log y-axis when given.

    Args:
        eigenvalues: the top-k eigenvalues ``[k]`` (any order; shown largest first).
        density_grid: eigenvalue grid ``[G]`` of the density (with ``density``).
        density: spectral density on ``density_grid`` ``[G]``; non-positive values are not drawn (log axis).

    Returns:
        A Figure with 1 axis, or 2 with the density.
    """
    eig = np.sort(_array(eigenvalues, "eigenvalues"))[::-1]
    with_density = density_grid is not None and density is not None
    fig = Figure(figsize=(9.5 if with_density else 4.8, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if with_density else 1, squeeze=False)[0]
    ax = axes[0]
    ranks = np.arange(1, eig.size + 1)
    ax.stem(ranks, eig, basefmt="k-")
    ax.set(xlabel="rank", ylabel="eigenvalue", title=f"Top-{eig.size} Hessian eigenvalues")
    ax.set_xticks(ranks)
    ax.grid(alpha=0.3)
    if with_density:
        grid, dens = _array(density_grid, "density_grid"), _array(density, "density")
        _same_length(("density_grid", "density"), (grid, dens))
        ax = axes[1]
        ax.plot(grid, np.where(dens > 0, dens, np.nan), "-")
        if np.any(dens > 0):
            ax.set_yscale("log")
        ax.set(xlabel="eigenvalue", ylabel="density", title="Spectral density (SLQ)")
        ax.grid(alpha=0.3)
    return fig


def slice_1d_plot(curves: Mapping[str, tuple[Any, Any, Any]]) -> Figure:
    """Several 1D loss slices overlaid (e.g. a random filter-normalized direction and the top eigenvector).

    Args:
        curves: ``{label: (alphas [K], loss [K], accuracy [K] or None)}``; accuracy in [0, 1].

    Returns:
        A Figure with 2 axes: loss and accuracy against alpha.
    """
    if not curves:
        raise ValueError("Expected at least one curve, got none")
    fig = Figure(figsize=(9.5, 3.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for label, (alphas, loss, acc) in curves.items():
        x, y = _array(alphas, "alphas"), _array(loss, "loss")
        _same_length(("alphas", "loss"), (x, y))
        (line,) = ax_loss.plot(x, y, "-", label=label)
        if acc is not None:
            a = _array(acc, "accuracy")
            _same_length(("alphas", "accuracy"), (x, a))
            ax_acc.plot(x, 100 * a, "-", color=line.get_color(), label=label)
    ax_loss.set(xlabel=r"$\alpha$", ylabel="loss", title="1D slices: loss")
    ax_acc.set(xlabel=r"$\alpha$", ylabel="accuracy (%)", title="1D slices: accuracy")
    for ax in (ax_loss, ax_acc):
        ax.axvline(0.0, color="k", lw=0.6, alpha=0.5)
        ax.grid(alpha=0.3)
    ax_loss.legend()
    return fig


def slice_2d_plot(alphas: Any, betas: Any, loss: Any) -> Figure:
    """A 2D loss slice as a heatmap with contours.

    Contour levels are log-spaced between the smallest positive and the largest loss when the loss is positive
    everywhere (a minimum's basin is then visible), linear otherwise; the color scale follows the same rule.

    Args:
        alphas: first-direction coordinates ``[A]`` (x axis).
        betas: second-direction coordinates ``[B]`` (y axis).
        loss: ``[A, B]``, ``loss[i, j]`` at ``(alphas[i], betas[j])``.

    Returns:
        A Figure with 2 axes: the map and its colorbar.
    """
    x, y, z = _array(alphas, "alphas"), _array(betas, "betas"), _array(loss, "loss", ndim=2)
    if z.shape != (x.size, y.size):
        raise ValueError(f"Expected `loss` of shape {(x.size, y.size)}, got {z.shape}")
    fig = Figure(figsize=(5.4, 4.4), layout="constrained")
    ax = fig.subplots()
    finite = z[np.isfinite(z)]
    positive = finite.size > 0 and finite.min() > 0
    if positive and finite.max() > finite.min():
        norm = LogNorm(vmin=finite.min(), vmax=finite.max())
        levels = np.geomspace(finite.min(), finite.max(), 12)
    else:
        norm = None
        levels = 12
    mesh = ax.pcolormesh(x, y, z.T, shading="auto", cmap="viridis", norm=norm)
    if x.size > 1 and y.size > 1 and finite.size > 0 and finite.max() > finite.min():
        ax.contour(x, y, z.T, levels=levels, colors="white", linewidths=0.7, norm=norm)
    ax.plot([0.0], [0.0], "r*", markersize=10)
    ax.set(xlabel=r"$\alpha$", ylabel=r"$\beta$", title="2D loss slice")
    fig.colorbar(mesh, ax=ax, label="loss")
    return fig


def interpolation_plot(
    alphas: Any,
    train_loss: Any,
    test_loss: Any,
    aligned_train: Any = None,
    aligned_test: Any = None,
    train_err: Any = None,
    test_err: Any = None,
    aligned_train_err: Any = None,
    aligned_test_err: Any = None,
) -> Figure:
    """The linear path between two minima: raw and (optionally) after permutation alignment, train and test.

    Args:
        alphas: path coordinates ``[K]`` (0 = model A, 1 = model B).
        train_loss, test_loss: raw path losses ``[K]``.
        aligned_train, aligned_test: losses ``[K]`` along the path to the aligned B, or None.
        train_err, test_err, aligned_train_err, aligned_test_err: errors ``[K]`` in [0, 1], or None.

    Returns:
        A Figure with 1 axis (loss), or 2 when any error curve is given (loss, error).
    """
    x = _array(alphas, "alphas")
    losses = {"train": train_loss, "test": test_loss, "train, aligned": aligned_train, "test, aligned": aligned_test}
    errors = {
        "train": train_err,
        "test": test_err,
        "train, aligned": aligned_train_err,
        "test, aligned": aligned_test_err,
    }
    with_errors = any(v is not None for v in errors.values())
    fig = Figure(figsize=(9.5 if with_errors else 4.8, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if with_errors else 1, squeeze=False)[0]
    styles = {"train": "C0-", "test": "C1-", "train, aligned": "C0--", "test, aligned": "C1--"}
    panels = [(axes[0], losses, "loss", 1.0)]
    if with_errors:
        panels.append((axes[1], errors, "error (%)", 100.0))
    for ax, series, ylabel, scale in panels:
        for label, values in series.items():
            if values is None:
                continue
            y = _array(values, label)
            _same_length(("alphas", label), (x, y))
            ax.plot(x, scale * y, styles[label], marker="o", markersize=3, label=label)
        ax.set(xlabel=r"$\alpha$ (A $\to$ B)", ylabel=ylabel, title=f"Linear path: {ylabel.split()[0]}")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def noise_plot(sigmas: Any, loss_mean: Any, loss_stderr: Any, acc_mean: Any, acc_stderr: Any) -> Figure:
    """Loss and accuracy under Gaussian weight noise against sigma, with standard-error bars.

    Args:
        sigmas: noise scales ``[S]`` (> 0; shown on a log x-axis).
        loss_mean, loss_stderr: mean loss and its standard error ``[S]``.
        acc_mean, acc_stderr: mean accuracy and its standard error ``[S]``, in [0, 1].

    Returns:
        A Figure with 2 axes: loss and accuracy.
    """
    s = _array(sigmas, "sigmas")
    lm, ls = _array(loss_mean, "loss_mean"), _array(loss_stderr, "loss_stderr")
    am, ast = _array(acc_mean, "acc_mean"), _array(acc_stderr, "acc_stderr")
    _same_length(("sigmas", "loss_mean", "loss_stderr", "acc_mean", "acc_stderr"), (s, lm, ls, am, ast))
    fig = Figure(figsize=(9.5, 3.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.errorbar(s, lm, yerr=ls, fmt="o-", capsize=3)
    ax_loss.set(xlabel=r"$\sigma$", ylabel="loss", title="Loss under weight noise")
    ax_acc.errorbar(s, 100 * am, yerr=100 * ast, fmt="o-", capsize=3, color="C1")
    ax_acc.set(xlabel=r"$\sigma$", ylabel="accuracy (%)", title="Accuracy under weight noise")
    for ax in (ax_loss, ax_acc):
        if np.all(s > 0):
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    return fig


def barrier_matrix_plot(matrix: Any, labels: Sequence[str], title: str = "Loss barrier") -> Figure:
    """Pairwise barriers between minima as an annotated heatmap.

    Args:
        matrix: ``[M, M]`` barrier heights (NaN cells are left blank).
        labels: the ``M`` models' names.
        title: the axis title.

    Returns:
        A Figure with 2 axes: the heatmap and its colorbar.
    """
    m = _array(matrix, "matrix", ndim=2)
    if m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
        raise ValueError(f"Expected a square `matrix` of size {len(labels)} (one row per label), got {m.shape}")
    size = max(4.0, 0.6 * len(labels) + 2.5)
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(m, cmap="magma")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(labels))
    finite = m[np.isfinite(m)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                color = "black" if m[i, j] > middle else "white"
                ax.text(j, i, f"{m[i, j]:.3g}", ha="center", va="center", color=color, fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    return fig


def geometry_figures(arrays: Mapping[str, Any]) -> dict[str, Figure]:
    """The figures that the measured arrays support, by artifact name.

    Args:
        arrays: ``landscape_core.measure.Measurements.arrays``: ``"eigenvalues"`` (with ``"density"`` when measured),
            ``"slice_1d"``, ``"slice_2d"``, ``"interpolation"`` and ``"noise"`` each give a figure when present;
            other entries (trace, sharpness, flatness, curvature) have none.

    Returns:
        ``{"eigenvalues", "slice_1d", "slice_2d", "interpolation", "weight_noise", "paths", "curve_plane",
        "trajectory"}`` (those supported) -> Figure.
    """
    figures = {}
    if "eigenvalues" in arrays:
        smooth = arrays.get("density", {})
        figures["eigenvalues"] = eigenvalue_plot(
            arrays["eigenvalues"]["eigenvalues"], smooth.get("grid"), smooth.get("density")
        )
    if "slice_1d" in arrays:
        curves = {name: (c["alphas"], c["loss"], c["accuracy"]) for name, c in arrays["slice_1d"].items()}
        figures["slice_1d"] = slice_1d_plot(curves)
    if "slice_2d" in arrays:
        plane = arrays["slice_2d"]
        figures["slice_2d"] = slice_2d_plot(plane["alphas"], plane["betas"], plane["loss"])
    if "interpolation" in arrays:
        paths = arrays["interpolation"]
        aligned = "train_aligned" in paths
        figures["interpolation"] = interpolation_plot(
            paths["train"]["alphas"],
            paths["train"]["loss"],
            paths["test"]["loss"],
            aligned_train=paths["train_aligned"]["loss"] if aligned else None,
            aligned_test=paths["test_aligned"]["loss"] if aligned else None,
            train_err=paths["train"]["error"],
            test_err=paths["test"]["error"],
            aligned_train_err=paths["train_aligned"]["error"] if aligned else None,
            aligned_test_err=paths["test_aligned"]["error"] if aligned else None,
        )
    if "noise" in arrays:
        n = arrays["noise"]
        figures["weight_noise"] = noise_plot(
            n["sigmas"], n["loss_mean"], n["loss_stderr"], n["acc_mean"], n["acc_stderr"]
        )
    if "curve" in arrays and "interpolation" in arrays:
        figures.update(_curve_figures(arrays["interpolation"], arrays["curve"]))
    if "trajectory" in arrays:
        t = arrays["trajectory"]
        figures["trajectory"] = trajectory_figure(t["xs"], t["ys"], t["loss"], t["coords"], t["explained"], t["steps"])
    return figures


def _curve_figures(lines: Mapping[str, Any], curve: Mapping[str, Any]) -> dict[str, Figure]:
    """The three paths to the reference minimum (line, weight-matched line, trained curve; raw and weight-matched)
    per split, and the plane through the reference, the raw curve's bend and this minimum."""
    names = {"": "line", "_aligned": "line, weight-matched"}
    panels = {}
    for split in ("train", "test"):
        panel = {label: lines[split + suffix]["loss"] for suffix, label in names.items() if split + suffix in lines}
        for suffix, label in (("", "curve"), ("_aligned", "curve, weight-matched")):
            if split + suffix in curve:
                panel[label] = curve[split + suffix]["loss"]
        panels[f"{split} loss"] = panel
    title = "Loss along the paths from the reference minimum (t = 0) to this one (t = 1)"
    out = {"paths": three_paths_figure(lines["train"]["alphas"], panels, title=title)}
    if "plane" in curve:
        p = curve["plane"]
        out["curve_plane"] = curve_plane_figure(
            p["xs"], p["ys"], p["loss"], p["curve_xy"], p["points_xy"], title="Train loss over the plane of the curve"
        )
    return out
