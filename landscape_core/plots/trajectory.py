"""The optimizer's trajectory on its principal plane over the loss contours of that plane (Li et al. 2018, Figure 9),
a bare ``Figure`` (no pyplot state).

The arrays come from :mod:`landscape_core.trajectory`: the grid (``plane_grid``), the loss on it
(``trajectory_plane_loss``) and the checkpoints' coordinates and explained variance (``pca_trajectory``). Lists,
numpy arrays or CPU tensors are accepted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

__all__ = ["trajectory_figure"]

LEVELS = 15


def _array(values: Any, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """``values`` as float64 numpy of ``shape`` (None: any length on that axis)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    out = np.asarray(values, dtype=np.float64)
    if out.ndim != len(shape) or any(want is not None and got != want for got, want in zip(out.shape, shape)):
        shown = tuple("n" if want is None else want for want in shape)
        raise ValueError(f"Expected `{name}` of shape {shown}, got {out.shape}")
    return out


def trajectory_figure(xs: Any, ys: Any, loss: Any, coords: Any, explained: Any, steps: Any = None) -> Figure:
    """The trajectory's checkpoints as a path over the loss contours of its principal plane.

    Contour levels are log-spaced between the smallest and the largest loss when the loss is positive everywhere
    (the basin around the final weights stays visible), linear otherwise. The final weights are the origin.

    Args:
        xs: ``[n]`` coordinates along the first component (x axis).
        ys: ``[m]`` coordinates along the second component (y axis).
        loss: ``[m, n]``, ``loss[j, i]`` at ``(xs[i], ys[j])``.
        coords: ``[K, 2]`` the checkpoints' coordinates, in training order.
        explained: ``[2]`` each component's fraction of the variance, in [0, 1].
        steps: ``[K]`` the checkpoints' optimizer steps, or None; the start is labelled with ``steps[0]``, the
            final weights with ``steps[-1]`` when the last checkpoint is at the origin.

    Returns:
        A Figure with 2 axes, the plane and its contours' colorbar (1 axis when the loss is constant: no contours).
    """
    x, y = _array(xs, "xs", (None,)), _array(ys, "ys", (None,))
    z = _array(loss, "loss", (y.size, x.size))
    path = _array(coords, "coords", (None, 2))
    ratio = _array(explained, "explained", (2,))
    if steps is not None and len(steps) != len(path):
        raise ValueError(f"Expected `steps` of length {len(path)} (one per checkpoint), got {len(steps)}")
    fig = Figure(figsize=(5.6, 4.6), layout="constrained")
    ax = fig.subplots()
    finite = z[np.isfinite(z)]
    if x.size > 1 and y.size > 1 and finite.size > 0 and finite.max() > finite.min():
        low, high = finite.min(), finite.max()
        if low > 0:
            norm, levels = LogNorm(vmin=low, vmax=high), np.geomspace(low, high, LEVELS)
        else:
            norm, levels = None, np.linspace(low, high, LEVELS)
        contours = ax.contour(x, y, z, levels=levels, norm=norm, cmap="viridis", linewidths=0.8)
        ax.clabel(contours, levels[::2], fontsize=6, fmt="%.3g")
        fig.colorbar(contours, ax=ax, label="loss", ticks=levels[::2], format="%.3g")
    ax.plot(path[:, 0], path[:, 1], "-o", color="C3", markersize=3, linewidth=1.0)
    start = "start" if steps is None else f"start (step {int(steps[0])})"
    at_final = steps is not None and np.allclose(path[-1], 0.0)
    final = f"final (step {int(steps[-1])})" if at_final else "final"
    ax.plot(path[0, 0], path[0, 1], "s", color="C3", markersize=7)
    ax.annotate(start, path[0], textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.plot([0.0], [0.0], "k*", markersize=11)
    ax.annotate(final, (0.0, 0.0), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set(
        xlabel=f"PC1 ({100 * ratio[0]:.1f}% of variance)",
        ylabel=f"PC2 ({100 * ratio[1]:.1f}% of variance)",
        title="Optimizer trajectory on its principal plane",
    )
    ax.text(
        0.02,
        0.02,
        f"PC1 + PC2: {100 * ratio.sum():.1f}% of the variance",
        transform=ax.transAxes,
        fontsize=8,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
    )
    return fig
