"""Scatter grid of measures against generalization targets, one panel per pair.

Uses only the object-oriented matplotlib API (``matplotlib.figure.Figure``), never pyplot, so it is safe with the
Agg backend, in threads and in workers without a display.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from scipy import stats

__all__ = ["scatter_grid"]


def _as_1d(name: str, values: ArrayLike, n: int | None) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"Expected `{name}` to be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"Expected `{name}` to have length {n}, got {arr.shape[0]}")
    return arr


def scatter_grid(
    measures: Mapping[str, ArrayLike],
    targets: Mapping[str, ArrayLike],
    color_by: ArrayLike | None = None,
    color_label: str = "lr",
    log_color: bool = True,
) -> Figure:
    """Grid of scatter plots: rows are measures, columns are targets.

    Each panel plots one measure (x) against one target (y), coloured by ``color_by`` (e.g. the learning rate of
    each run) with its own colorbar, and is titled with the Spearman rho of the plotted points. Runs with a NaN or
    infinite x, y or colour value are skipped in that panel. All panels share one colour normalization; it is
    logarithmic when ``log_color`` is set and every finite colour value is positive, linear otherwise.

    Args:
        measures: Name -> shape (n,) measure values.
        targets: Name -> shape (n,) target values.
        color_by: Optional shape (n,) values to colour the points by.
        color_label: Colorbar label.
        log_color: Use a logarithmic colour scale (right for learning rates).

    Returns:
        The figure, with ``len(measures) * len(targets)`` scatter axes (plus one colorbar axis per panel when
        ``color_by`` is given).

    Raises:
        ValueError: On empty inputs or mismatched lengths.
    """
    if not measures or not targets:
        raise ValueError(f"Expected at least one measure and one target, got {len(measures)} and {len(targets)}")
    m_arr = {name: _as_1d(f"measures[{name!r}]", v, None) for name, v in measures.items()}
    n = next(iter(m_arr.values())).shape[0]
    m_arr = {name: _as_1d(f"measures[{name!r}]", v, n) for name, v in m_arr.items()}
    t_arr = {name: _as_1d(f"targets[{name!r}]", v, n) for name, v in targets.items()}
    color = None if color_by is None else _as_1d("color_by", color_by, n)

    norm: Normalize | None = None
    if color is not None:
        finite = color[np.isfinite(color)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            if log_color and lo > 0:
                norm = LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10.0)
            else:
                norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)

    n_rows, n_cols = len(m_arr), len(t_arr)
    fig = Figure(figsize=(3.6 * n_cols, 3.0 * n_rows), layout="constrained")
    axs = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, (m_name, x) in enumerate(m_arr.items()):
        for j, (t_name, y) in enumerate(t_arr.items()):
            ax = axs[i, j]
            keep = np.isfinite(x) & np.isfinite(y)
            if color is not None:
                keep &= np.isfinite(color)
            xs, ys = x[keep], y[keep]
            if color is None:
                ax.scatter(xs, ys, s=14)
            else:
                sc = ax.scatter(xs, ys, c=color[keep], cmap="viridis", norm=norm, s=14)
                fig.colorbar(sc, ax=ax, label=color_label)
            rho = _spearman(xs, ys)
            ax.set_title(
                f"Spearman rho={rho:+.2f} (n={xs.size})" if np.isfinite(rho) else f"rho=n/a (n={xs.size})", fontsize=9
            )
            ax.set_xlabel(m_name)
            ax.set_ylabel(t_name)
    return fig


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)
