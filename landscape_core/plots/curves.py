"""Figures of mode connectivity along curves (Garipov et al. 2018), each a bare ``Figure`` (no pyplot state).

``three_paths_figure``: the loss along the linear path, the linear path after weight matching and the trained Bezier
curve; ``curve_plane_figure``: the loss over the plane through both minima and the bend, with the curve drawn on it;
``barrier_population_figure``: the barriers of every trial per kind of path, with the mean and its 95% t-interval.
Every function accepts lists, numpy arrays or CPU tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from landscape_core.plots.population import mean_band

__all__ = ["barrier_population_figure", "curve_plane_figure", "three_paths_figure"]


def _numpy(values: Any) -> np.ndarray:
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)


def _array(values: Any, name: str, ndim: int = 1) -> np.ndarray:
    out = _numpy(values)
    if out.ndim != ndim:
        raise ValueError(f"Expected `{name}` with {ndim} dimension(s), got shape {out.shape}")
    return out


def _rows(values: Any, name: str, points: int) -> np.ndarray:
    """``values`` ``[points]`` or ``[trials, points]`` as ``[trials, points]`` float64."""
    out = _numpy(values)
    out = out[None] if out.ndim == 1 else out
    if out.ndim != 2 or out.shape[1] != points:
        raise ValueError(f"Expected `{name}` of shape [{points}] or [trials, {points}], got {out.shape}")
    return out


def three_paths_figure(
    ts: Any, paths: Mapping[str, Any], *, ylabel: str = "loss", title: str = "Loss along the paths"
) -> Figure:
    """The loss along several paths between the same two minima, on a common ``t`` in [0, 1].

    ``paths`` is either one panel, ``{path: values}`` (e.g. ``{"linear": ..., "linear, weight-matched": ...,
    "Bezier curve": ...}``), or one panel per split, ``{split: {path: values}}`` (e.g. ``{"train": {...}, "test":
    {...}}``). ``values`` is one path ``[K]``, drawn as a line, or a population of them ``[trials, K]``, drawn as
    the mean over trials with its 95% t-band (``population.mean_band``). A path keeps its color in every panel.

    Args:
        ts: the path coordinate ``[K]``: ``alpha`` of a linear path, ``t`` of the curve.
        paths: as above; a panel's title is its split's name.
        ylabel: the y axis's label (e.g. ``"error"`` for error paths).
        title: the title of a single panel (a panel per split is titled by its split).

    Returns:
        A Figure with one axis per panel.
    """
    x = _array(ts, "ts")
    if not paths:
        raise ValueError("Expected at least one path, got none")
    nested = all(isinstance(v, Mapping) for v in paths.values())
    panels = dict(paths) if nested else {title: paths}
    fig = Figure(figsize=(0.4 + 4.6 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors: dict[str, str] = {}
    for ax, (panel, series) in zip(axes, panels.items()):
        if not series:
            raise ValueError(f"Expected at least one path in panel {panel!r}, got none")
        for label, values in series.items():
            y = _rows(values, label, x.size)
            color = colors.setdefault(label, f"C{len(colors)}")
            mean, low, high = mean_band(y)
            name = label if y.shape[0] == 1 else f"{label} (mean of {y.shape[0]}, 95% band)"
            ax.plot(x, mean, "-", marker="o", markersize=3, color=color, label=name)
            if y.shape[0] > 1:
                ax.fill_between(x, low, high, alpha=0.25, color=color)
        ax.set(xlabel=r"$t$ (0: minimum A, 1: minimum B)", ylabel=ylabel, title=panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def curve_plane_figure(
    xs: Any,
    ys: Any,
    loss: Any,
    curve_xy: Any,
    points_xy: Mapping[str, Sequence[float]],
    *,
    title: str = "Loss over the plane of the curve",
) -> Figure:
    """The loss over the plane through two minima and the bend, with the curve and the straight line drawn on it.

    Filled contours of ``log10`` of the loss (floored at 1e-12), the curve as a solid red line, the straight segment
    between its two ends (the linear path) dashed, and each point marked and labelled on the map. The axes are not to
    scale (a bend a few units off a line tens long would be a strip).

    Args:
        xs: ``[X]`` coordinates along the plane's first axis (``Plane.u``).
        ys: ``[Y]`` coordinates along its second axis (``Plane.v``).
        loss: ``[Y, X]``, row ``i`` at ``ys[i]`` (as ``curves.plane_loss`` returns it).
        curve_xy: the curve's coordinates ``[K, 2]`` (``Plane.curve_xy``), from the start to the end.
        points_xy: ``{label: (x, y)}``, e.g. ``Plane.points_xy`` (start, bend, end).
        title: the axis title.

    Returns:
        A Figure with 2 axes: the map and its colorbar.
    """
    x, y, z = _array(xs, "xs"), _array(ys, "ys"), _array(loss, "loss", ndim=2)
    if z.shape != (y.size, x.size):
        raise ValueError(f"Expected `loss` of shape {(y.size, x.size)} ([len(ys), len(xs)]), got {z.shape}")
    curve = _array(curve_xy, "curve_xy", ndim=2)
    if curve.shape[1] != 2 or curve.shape[0] < 2:
        raise ValueError(f"Expected `curve_xy` of shape [K >= 2, 2], got {curve.shape}")
    fig = Figure(figsize=(6.0, 4.6), layout="constrained")
    ax = fig.subplots()
    log_loss = np.log10(np.maximum(z, 1e-12))
    mesh = ax.contourf(x, y, log_loss, levels=20, cmap="viridis")
    ax.contour(x, y, log_loss, levels=mesh.levels, colors="white", linewidths=0.4, alpha=0.5)
    fig.colorbar(mesh, ax=ax, label=r"$\log_{10}$ loss")
    ax.plot(curve[[0, -1], 0], curve[[0, -1], 1], "--", color="black", lw=1.5, label="linear path")
    ax.plot(curve[:, 0], curve[:, 1], "-", color="tab:red", lw=2.0, label="Bezier curve")
    for label, (px, py) in points_xy.items():  # labelled on the map, not in the legend
        ax.plot([px], [py], "o", color="white", markeredgecolor="black", markersize=8)
        right = px > (x[0] + x[-1]) / 2  # labels of points on the right half grow leftwards, inside the map
        ax.annotate(
            label,
            (px, py),
            xytext=(-6 if right else 6, 6),
            textcoords="offset points",
            ha="right" if right else "left",
            color="white",
            fontweight="bold",
        )
    # the bend lies a few units off a line that is tens long: equal axes would flatten the map to a strip
    ax.set(xlabel=r"$x$ (along end $-$ start)", ylabel=r"$y$ (towards the bend; axes not to scale)", title=title)
    ax.legend(fontsize=7, loc="lower center", framealpha=0.8)
    return fig


def barrier_population_figure(
    barriers: Mapping[str, Any],
    *,
    ylabel: str = "loss barrier",
    xlabel: str = "path",
    title: str = "Barriers across the population",
) -> Figure:
    """The barrier of every trial per kind of path, each trial a dot, with the mean and its 95% t-interval.

    Args:
        barriers: ``{path kind: [trials]}``, e.g. ``{"linear": ..., "linear, weight-matched": ..., "Bezier curve":
            ...}``; non-finite values are left out.
        ylabel: the y axis's label.
        title: the axis title (``n`` per kind is in the tick labels).

    Returns:
        A Figure with 1 axis.
    """
    if not barriers:
        raise ValueError("Expected at least one kind of path, got none")
    fig = Figure(figsize=(1.6 + 1.5 * len(barriers), 3.8), layout="constrained")
    ax = fig.subplots()
    jitter = np.random.default_rng(0)  # fixed: the figure is the same every time
    ticks = []
    for i, (kind, values) in enumerate(barriers.items()):
        v = _array(values, kind)
        v = v[np.isfinite(v)]
        ticks.append(f"{kind}\n(n = {v.size})")
        ax.scatter(
            i + jitter.uniform(-0.15, 0.15, v.size),
            v,
            s=14,
            color=f"C{i}",
            alpha=0.6,
            label="trials" if i == 0 else None,
        )
        if v.size:
            mean, low, high = (float(a[0]) for a in mean_band(v[:, None]))
            ax.errorbar(
                [i + 0.3],
                [mean],
                yerr=[[mean - low], [high - mean]],
                fmt="D",
                color="black",
                capsize=4,
                label="mean, 95% CI" if i == 0 else None,
            )
    ax.axhline(0.0, color="k", lw=0.6, alpha=0.5)
    ax.set_xticks(range(len(ticks)), labels=ticks)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(-0.6, len(ticks) - 0.3))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return fig


def instability_figure(
    spawn_epochs: Sequence[int],
    barriers: Sequence[Any],
    independent: Any,
    *,
    threshold: float,
    ylabel: str = "test error barrier",
) -> Figure:
    """Frankle et al. 2020's instability plot: the barrier between two branches against the epoch they were spawned
    at, each pair a dot, the mean with its 95% t-band, the independent pair's barrier (no shared epoch, two
    initializations) as a grey band, and the stability threshold dashed.

    Args:
        spawn_epochs: the spawn epochs ``[E]`` (>= 0).
        barriers: per spawn epoch, the pairs' barriers (``[E]`` lists).
        independent: the independent pairs' barriers.
        threshold: below it a pair counts as in one basin (Frankle et al.: 2% test error).
        ylabel: the y axis's label.
    """
    if len(spawn_epochs) != len(barriers) or not len(spawn_epochs):
        raise ValueError(f"Expected one list of barriers per spawn epoch, got {len(barriers)} for {len(spawn_epochs)}")
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    xs = np.asarray(spawn_epochs, dtype=float)
    bands = []
    for x, values in zip(xs, barriers):
        v = np.asarray(values, dtype=float).reshape(-1)
        ax.plot(np.full(v.size, x), v, "o", color="tab:blue", alpha=0.45, markersize=5)
        bands.append([float(b[0]) for b in mean_band(v[:, None])] if v.size else [np.nan] * 3)
    means, lows, highs = np.array(bands).T
    ax.plot(xs, means, "-", color="tab:blue", lw=2, label="branches of one trunk (mean, 95% band)")
    ax.fill_between(xs, lows, highs, color="tab:blue", alpha=0.2)
    ind = np.asarray(independent, dtype=float)
    ind = ind[np.isfinite(ind)]
    if ind.size:
        ax.axhspan(ind.min(), ind.max(), color="grey", alpha=0.2)
        ax.axhline(ind.mean(), color="grey", lw=1.5, label=f"independent runs (mean of {ind.size}, range shaded)")
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"stability threshold {threshold:g}")
    ax.set(xlabel="spawn epoch k (epochs shared before the branches part)", ylabel=ylabel)
    ax.set_title("Instability: does SGD noise after epoch k change the basin?")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
