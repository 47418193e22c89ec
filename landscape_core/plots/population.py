"""The seed paper's six figures over a population of trials: each curve as the mean over trials with a 95% band,
where the paper drew two seeds. Pure functions from arrays to bare ``matplotlib.figure.Figure`` objects.

A band is the t-interval of the mean over trials at each point, ``mean +- t(0.975, n - 1) sd / sqrt(n)``
(``mean_band``); with one trial there is no band. Curves of different trials must share their x values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

__all__ = [
    "PAPER_LAMBDA_MAX",
    "PAPER_NOISE",
    "curves_figure",
    "interpolation_figure",
    "lambda_max_figure",
    "mean_band",
    "noise_figure",
    "slice_1d_figure",
    "slice_2d_figure",
]

#: The paper's lambda_max of its models A (seed 1) and B (seed 2).
PAPER_LAMBDA_MAX = {"A": 13.0, "B": 15.6}
#: The paper's weight-noise point: at sigma 0.10, test loss ~5.2 and test accuracy ~0.39.
PAPER_NOISE = {"sigma": 0.10, "loss": 5.2, "acc": 0.39}


def mean_band(curves: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over trials and the ``level`` t-interval of that mean, point by point.

    Args:
        curves: ``[trials, points]`` values (NaN where a trial lacks a point: it is left out of that point).

    Returns:
        ``(mean, low, high)``, each ``[points]``; ``low == high == mean`` where fewer than two trials have a value.
    """
    x = np.atleast_2d(np.asarray(curves, dtype=float))
    n = np.sum(np.isfinite(x), axis=0)
    mean = np.nanmean(x, axis=0) if x.size else np.zeros(x.shape[1])
    sd = np.nanstd(x, axis=0, ddof=1) if x.shape[0] > 1 else np.zeros(x.shape[1])
    t = np.where(n > 1, stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)), 0.0)
    half = np.where(n > 1, t * np.nan_to_num(sd) / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, mean - half, mean + half


def _band(ax: Any, x: Any, curves: Any, label: str, style: str = "-") -> None:
    mean, low, high = mean_band(curves)
    (line,) = ax.plot(x, mean, style, label=f"{label} (mean)")
    ax.fill_between(x, low, high, alpha=0.25, color=line.get_color(), label=f"{label} 95% band")


def _title_n(title: str, n: int) -> str:
    return f"{title} (n = {n})"


def curves_figure(epochs: Sequence[int], curves: Mapping[str, Any]) -> Figure:
    """Figure 1: training curves. ``curves`` maps ``train_loss``, ``test_loss``, ``train_acc``, ``test_acc`` to
    ``[trials, epochs]`` arrays; loss and accuracy panels, each train and test with their bands."""
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    n = len(np.atleast_2d(curves["train_loss"]))
    for split, style in (("train", "o-"), ("test", "s--")):
        _band(loss_ax, epochs, curves[f"{split}_loss"], split, style)
        _band(acc_ax, epochs, 100 * np.asarray(curves[f"{split}_acc"], dtype=float), split, style)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title=_title_n("Loss", n))
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title=_title_n("Accuracy", n))
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def lambda_max_figure(values: Sequence[float], labels: Sequence[str] | None = None) -> Figure:
    """Figure 2: lambda_max of every trial (a strip beside a violin), with the paper's two models marked."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    fig = Figure(figsize=(5.0, 3.8), layout="constrained")
    ax = fig.subplots()
    if v.size >= 2:
        ax.violinplot([v], positions=[0], showmeans=True, widths=0.7)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, v.size)  # fixed: the figure is the same every time
    ax.scatter(jitter, v, s=18, color="black", zorder=3, label="trials")
    for name, value in PAPER_LAMBDA_MAX.items():
        ax.axhline(
            value, ls=":", color="tab:red" if name == "A" else "tab:purple", label=f"paper, model {name}: {value:g}"
        )
    ax.set(
        xticks=[],
        ylabel=r"$\lambda_{max}$ of the Hessian",
        title=_title_n(r"$\lambda_{max}$ across the population", v.size),
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return fig


def slice_1d_figure(alphas: Sequence[float], losses: Mapping[str, Any]) -> Figure:
    """Figure 3: the 1D loss slice, per direction kind (``random``, ``top_eigenvector``): ``[trials, points]``."""
    fig = Figure(figsize=(5.2, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, curves in losses.items():
        _band(ax, alphas, curves, name.replace("_", " "))
    n = len(np.atleast_2d(next(iter(losses.values())))) if losses else 0
    ax.set(xlabel=r"$\alpha$ along a filter-normalized direction", ylabel="train loss", title=_title_n("1D slice", n))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def slice_2d_figure(alphas: Sequence[float], betas: Sequence[float], median: Any, spread: Any, label: str) -> Figure:
    """Figure 4: the 2D slice of the median trial (``label``), beside the across-trial standard deviation of the
    loss at each grid point (``spread``), both ``[betas, alphas]``."""
    fig = Figure(figsize=(9.4, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    a, b = np.meshgrid(np.asarray(alphas, dtype=float), np.asarray(betas, dtype=float))
    for ax, values, title, cmap in (
        (left, median, f"2D slice of the median trial ({label})", "viridis"),
        (right, spread, "across-trial std of the loss", "magma"),
    ):
        z = np.log10(np.maximum(np.asarray(values, dtype=float), 1e-12)) if ax is left else np.asarray(values)
        mesh = ax.contourf(a, b, z, levels=20, cmap=cmap)
        fig.colorbar(mesh, ax=ax, label="log10 loss" if ax is left else "std of loss")
        ax.plot([0], [0], "w*", markersize=10)
        ax.set(xlabel=r"$\alpha$", ylabel=r"$\beta$", title=title)
    return fig


def interpolation_figure(alphas: Sequence[float], paths: Mapping[str, Any]) -> Figure:
    """Figure 5: test loss along the linear path to the reference minimum, raw and after weight matching:
    ``paths`` maps ``raw`` / ``aligned`` to ``[trials, points]``."""
    fig = Figure(figsize=(5.2, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, style in (("raw", "o-"), ("aligned", "s--")):
        if name in paths:
            _band(ax, alphas, paths[name], "after weight matching" if name == "aligned" else "raw", style)
    n = len(np.atleast_2d(paths["raw"])) if "raw" in paths else 0
    ax.set(xlabel=r"$\alpha$ (0: reference minimum, 1: trial)", ylabel="test loss", title=_title_n("Linear path", n))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def noise_figure(sigmas: Sequence[float], loss: Any, acc: Any) -> Figure:
    """Figure 6: test loss and accuracy under weight noise, ``[trials, sigmas]`` each, with the paper's sigma 0.1
    point marked."""
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    _band(loss_ax, sigmas, loss, "test loss", "o-")
    _band(acc_ax, sigmas, acc, "test accuracy", "o-")
    paper = PAPER_NOISE
    loss_ax.plot([paper["sigma"]], [paper["loss"]], "r*", markersize=11, label=f"paper: {paper['loss']:g}")
    acc_ax.plot([paper["sigma"]], [paper["acc"]], "r*", markersize=11, label=f"paper: {paper['acc']:g}")
    n = len(np.atleast_2d(loss))
    loss_ax.set(xlabel=r"noise $\sigma$", ylabel="test loss", title=_title_n("Weight noise: loss", n))
    acc_ax.set(xlabel=r"noise $\sigma$", ylabel="test accuracy", title=_title_n("Weight noise: accuracy", n))
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig
