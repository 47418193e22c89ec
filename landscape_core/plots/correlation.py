"""Figures of the correlation section: scatter grid, forest plot, heatmap and the primary hypothesis' scatter.

``scatter_grid`` plots every measure against every target; ``forest_plot`` shows each rank correlation with its
confidence interval, coloured by the measure's audited rescaling invariance; ``correlation_heatmap`` is the compact
measure x target matrix; ``primary_scatter`` shows one pre-declared hypothesis raw and given the covariate (the
rank-residual view whose Pearson correlation is the partial Spearman rho).

Uses only the object-oriented matplotlib API (``matplotlib.figure.Figure``), never pyplot, so it is safe with the
Agg backend, in threads and in workers without a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "INVARIANCE_COLORS",
    "ForestRow",
    "correlation_heatmap",
    "forest_plot",
    "primary_scatter",
    "rank_residuals",
    "scatter_grid",
]

#: Colour of a forest-plot row by the audited rescaling invariance of its measure (``None``: not audited).
INVARIANCE_COLORS: dict[bool | None, str] = {True: "#1a9850", False: "#d73027", None: "#7f7f7f"}
_INVARIANCE_LABELS: dict[bool | None, str] = {True: "invariant", False: "not invariant", None: "not audited"}


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


@dataclass(frozen=True)
class ForestRow:
    """One (measure, target) rank correlation of the forest plot.

    Attributes:
        measure: Measure name (the row label).
        target: Target name (the panel).
        rho: Spearman rho; NaN when it could not be computed (the row is listed with "–", no marker).
        ci_low: Lower end of its confidence interval (NaN: no interval drawn).
        ci_high: Upper end of its confidence interval.
        invariant: Audited rescaling-invariant (``True``), not invariant (``False``), not audited (``None``).
        primary: A pre-declared primary hypothesis (label marked "★ measure", in bold).
        disattenuated: ``rho / sqrt(reliability)``, drawn as a hollow diamond when finite (clipped to [-1, 1]).
        reliability: Test-retest reliability of the measure (shown in the value column when finite).
        significant: Significant after the report's correction (filled marker; hollow otherwise).
    """

    measure: str
    target: str
    rho: float
    ci_low: float
    ci_high: float
    invariant: bool | None
    primary: bool
    disattenuated: float = math.nan
    reliability: float = math.nan
    significant: bool = False

    def __post_init__(self) -> None:
        if self.invariant not in (True, False, None):
            raise ValueError(f"Expected `invariant` to be True, False or None, got {self.invariant!r}")
        if np.isfinite(self.rho) and abs(self.rho) > 1.0 + 1e-9:
            raise ValueError(f"Expected `rho` in [-1, 1] or NaN, got {self.rho}")
        if np.isfinite(self.ci_low) and np.isfinite(self.ci_high) and self.ci_low > self.ci_high:
            raise ValueError(f"Expected `ci_low` <= `ci_high`, got {self.ci_low} > {self.ci_high}")


def _fmt_rho(value: float) -> str:
    return f"{value:+.2f}" if np.isfinite(value) else "–"


def _row_label(row: ForestRow) -> str:
    return f"★ {row.measure}" if row.primary else row.measure


def _value_text(row: ForestRow) -> str:
    if not np.isfinite(row.rho):
        return "–"
    text = _fmt_rho(row.rho)
    if np.isfinite(row.ci_low) and np.isfinite(row.ci_high):
        text += f" [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"
    if np.isfinite(row.disattenuated):
        text += f"  ◇{row.disattenuated:+.2f}"
    if np.isfinite(row.reliability):
        text += f" (r={row.reliability:.2f})"
    return text


def forest_plot(
    rows: Sequence[ForestRow], *, title: str = "Spearman rho with confidence interval, by target"
) -> Figure:
    """Forest plot of rank correlations: one line per row, one panel per target, a shared x axis from -1 to 1.

    Panels are stacked in the order in which targets first appear, rows top to bottom in the given order. Each row
    with a finite rho draws its confidence interval (a horizontal line) and a circle at rho, in the colour of
    ``INVARIANCE_COLORS[row.invariant]``; the circle is filled when the row is significant and white otherwise.
    A finite disattenuated rho adds a hollow diamond of the same colour. Primary rows are labelled "★ measure" in
    bold. A column of values ("+0.42 [+0.10, +0.66]", "–" for a NaN rho) sits right of each panel. The height
    grows with the number of rows, so ~26 measures x 4 targets stay readable.

    Artists carry a ``gid`` so they can be found again: ``"rho"`` (one marker per finite row), ``"ci"`` (one
    interval per finite row with a finite interval) and ``"disattenuated"``.

    Args:
        rows: The rows to draw.
        title: Figure title.

    Returns:
        The figure, with one axis per target.

    Raises:
        ValueError: ``rows`` is empty.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("Expected at least one row, got none")
    by_target: dict[str, list[ForestRow]] = {}
    for row in rows:
        by_target.setdefault(row.target, []).append(row)
    counts = [len(group) for group in by_target.values()]

    height = 1.1 + 0.5 * len(counts) + 0.21 * sum(counts)
    fig = Figure(figsize=(8.0, height), layout="constrained")
    axs = fig.subplots(len(counts), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": counts})[:, 0]
    for ax, (target, group) in zip(axs, by_target.items()):
        ax.axvline(0.0, color="k", lw=0.8, zorder=1)
        for i, row in enumerate(group):
            color = INVARIANCE_COLORS[row.invariant]
            ax.text(1.02, i, _value_text(row), transform=ax.get_yaxis_transform(), ha="left", va="center", fontsize=7)
            if not np.isfinite(row.rho):
                continue
            if np.isfinite(row.ci_low) and np.isfinite(row.ci_high):
                ax.plot([row.ci_low, row.ci_high], [i, i], color=color, lw=1.4, solid_capstyle="butt", gid="ci")
            ax.plot(
                [row.rho],
                [i],
                ls="none",
                marker="o",
                ms=5.5,
                color=color,
                mfc=color if row.significant else "white",
                mec=color,
                zorder=3,
                gid="rho",
            )
            if np.isfinite(row.disattenuated):
                ax.plot(
                    [float(np.clip(row.disattenuated, -1.0, 1.0))],
                    [i],
                    ls="none",
                    marker="D",
                    ms=4.5,
                    mfc="none",
                    mec=color,
                    mew=1.1,
                    zorder=3,
                    gid="disattenuated",
                )
        ax.set_yticks(range(len(group)), [_row_label(row) for row in group], fontsize=8)
        for label, row in zip(ax.get_yticklabels(), group):
            if row.primary:
                label.set_fontweight("bold")
        ax.set_ylim(len(group) - 0.5, -0.5)
        ax.set_xlim(-1.05, 1.05)  # room for markers at +-1
        ax.set_xticks(np.linspace(-1.0, 1.0, 5))
        ax.set_xticks(np.linspace(-0.75, 0.75, 4), minor=True)
        ax.grid(axis="x", which="both", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
        ax.set_title(target, fontsize=10, loc="left")
    axs[-1].set_xlabel("Spearman rho")

    handles = [
        Line2D([], [], ls="-", marker="o", color=c, label=_INVARIANCE_LABELS[k]) for k, c in INVARIANCE_COLORS.items()
    ]
    handles += [
        Line2D([], [], ls="none", marker="o", color="k", label="significant"),
        Line2D([], [], ls="none", marker="o", color="k", mfc="white", label="not significant"),
        Line2D([], [], ls="none", marker="D", mfc="none", mec="k", label="disattenuated (÷√reliability)"),
        Line2D([], [], ls="none", label="★ primary hypothesis"),
    ]
    # The title is the legend's title: a suptitle and an "outside" legend overlap under the constrained layout.
    fig.legend(
        handles=handles, loc="outside upper center", ncols=4, fontsize=8, frameon=False, title=title, title_fontsize=11
    )
    return fig


def _matrix(name: str, values: ArrayLike, shape: tuple[int, int], dtype: type) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.shape != shape:
        raise ValueError(f"Expected `{name}` to have shape {shape}, got {arr.shape}")
    return arr


def correlation_heatmap(
    measures: Sequence[str],
    targets: Sequence[str],
    rho: ArrayLike,
    significant: ArrayLike,
    primary: ArrayLike | None = None,
    *,
    title: str = "Spearman rho (bold*: significant, outlined: primary)",
) -> Figure:
    """Measure x target heatmap of rank correlations on a fixed diverging scale from -1 to 1.

    Each cell is annotated with its rho ("+0.42", "–" for NaN, drawn grey); significant cells read "+0.42*" in
    bold; primary cells are outlined in black (``Rectangle`` patches with ``gid="primary"``).

    Args:
        measures: Row labels, shape (m,).
        targets: Column labels, shape (t,).
        rho: Shape (m, t) correlations (NaN allowed).
        significant: Shape (m, t) booleans.
        primary: Optional shape (m, t) booleans, the pre-declared primary hypotheses.
        title: Axis title.

    Returns:
        The figure: the heatmap axis and its colorbar.

    Raises:
        ValueError: On empty labels or a shape that does not match ``(len(measures), len(targets))``.
    """
    measures, targets = list(measures), list(targets)
    if not measures or not targets:
        raise ValueError(f"Expected at least one measure and one target, got {len(measures)} and {len(targets)}")
    shape = (len(measures), len(targets))
    r = _matrix("rho", rho, shape, float)
    sig = _matrix("significant", significant, shape, bool)
    prim = np.zeros(shape, dtype=bool) if primary is None else _matrix("primary", primary, shape, bool)

    label_width = 0.065 * max(len(m) for m in measures)
    fig = Figure(figsize=(2.2 + label_width + 1.0 * len(targets), 1.6 + 0.3 * len(measures)), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.88")
    image = ax.imshow(np.ma.masked_invalid(r), cmap=cmap, vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest")
    for i in range(shape[0]):
        for j in range(shape[1]):
            value = r[i, j]
            finite = bool(np.isfinite(value))
            bold = finite and bool(sig[i, j])
            ax.text(
                j,
                i,
                _fmt_rho(value) + ("*" if bold else ""),
                ha="center",
                va="center",
                fontsize=8,
                fontweight="bold" if bold else "normal",
                color="white" if finite and abs(value) > 0.6 else ("0.4" if not finite else "black"),
            )
            if prim[i, j]:
                ax.add_patch(
                    Rectangle(
                        (j - 0.5, i - 0.5),
                        1.0,
                        1.0,
                        fill=False,
                        edgecolor="black",
                        lw=2.2,
                        clip_on=False,
                        gid="primary",
                    )
                )
    ax.set_xticks(range(shape[1]), targets, rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(shape[0]), measures, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="Spearman rho", shrink=min(1.0, 8.0 / max(shape[0], 1) + 0.3))
    return fig


def rank_residuals(values: ArrayLike, covariate: ArrayLike) -> np.ndarray:
    """Residuals of the ranks of ``values`` after a least-squares line (with intercept) on the ranks of ``covariate``.

    The Pearson correlation of ``rank_residuals(x, z)`` and ``rank_residuals(y, z)`` is the partial Spearman rho of
    x and y given z. Ties get average ranks.

    Args:
        values: Shape (n,) finite values.
        covariate: Shape (n,) finite covariate values.

    Returns:
        Shape (n,) residuals (they sum to zero and are orthogonal to the covariate's ranks).

    Raises:
        ValueError: On arrays that are not 1-D, of different lengths, empty or not finite.
    """
    v = _as_1d("values", values, None)
    c = _as_1d("covariate", covariate, v.shape[0])
    if v.size == 0:
        raise ValueError("Expected at least one value, got none")
    if not (np.isfinite(v).all() and np.isfinite(c).all()):
        raise ValueError("Expected finite `values` and `covariate` (drop the non-finite runs first)")
    rank_v = stats.rankdata(v)
    design = np.column_stack([np.ones_like(rank_v), stats.rankdata(c)])
    coef = np.linalg.lstsq(design, rank_v, rcond=None)[0]
    return rank_v - design @ coef


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    # Residuals of ranks 1..n are O(n); a spread this small is a constant up to rounding.
    if a.size < 3 or np.ptp(a) <= 1e-9 * a.size or np.ptp(b) <= 1e-9 * b.size:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def primary_scatter(
    x: ArrayLike,
    y: ArrayLike,
    covariate: ArrayLike,
    *,
    measure: str,
    target: str = "test loss",
    covariate_name: str = "train loss",
) -> Figure:
    """A primary hypothesis, raw and given the covariate: two scatter panels.

    Left: the measure (x) against the target (y), log x when every x is positive and they span more than a decade,
    titled with the Spearman rho. Right: ``rank_residuals(y, covariate)`` against ``rank_residuals(x, covariate)``,
    titled with their Pearson correlation, which is the partial Spearman rho given the covariate. Runs with a
    non-finite x, y or covariate are left out of both panels.

    Args:
        x: Shape (n,) measure values.
        y: Shape (n,) target values.
        covariate: Shape (n,) covariate values (e.g. the final train loss).
        measure: Measure name (x label).
        target: Target name (y label).
        covariate_name: Covariate name (right panel's title).

    Returns:
        The figure, with two axes.

    Raises:
        ValueError: On empty inputs, arrays that are not 1-D or of different lengths.
    """
    xs = _as_1d("x", x, None)
    if xs.size == 0:
        raise ValueError("Expected at least one run, got none")
    ys = _as_1d("y", y, xs.size)
    zs = _as_1d("covariate", covariate, xs.size)
    keep = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(zs)
    xs, ys, zs = xs[keep], ys[keep], zs[keep]
    n = int(xs.size)

    fig = Figure(figsize=(9.5, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.scatter(xs, ys, s=16, color="#2c7fb8")
    if n and xs.min() > 0 and xs.max() > 10.0 * xs.min():
        left.set_xscale("log")
    rho = _spearman(xs, ys)
    left.set_title(f"Spearman rho={_fmt_rho(rho) if np.isfinite(rho) else 'n/a'} (n={n})", fontsize=10)
    left.set_xlabel(measure)
    left.set_ylabel(target)

    if n:
        rx, ry = rank_residuals(xs, zs), rank_residuals(ys, zs)
    else:
        rx = ry = np.empty(0)
    partial = _pearson(rx, ry) if n >= 4 else float("nan")
    right.axhline(0.0, color="0.8", lw=0.8)
    right.axvline(0.0, color="0.8", lw=0.8)
    right.scatter(rx, ry, s=16, color="#2c7fb8")
    shown = _fmt_rho(partial) if np.isfinite(partial) else "n/a"
    right.set_title(f"partial Spearman rho={shown} given {covariate_name} (n={n})", fontsize=10)
    right.set_xlabel(f"rank residual of {measure}")
    right.set_ylabel(f"rank residual of {target}")
    fig.suptitle(f"{measure} vs {target}", fontsize=11)
    return fig
