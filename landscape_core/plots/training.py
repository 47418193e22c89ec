"""Training curves (the paper's Figure 1), built on a bare ``matplotlib.figure.Figure`` (no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from landscape_core.keys import EOS_THRESHOLD, LAMBDA_MAX_EPOCH

__all__ = ["edge_of_stability_figure", "training_curves"]


def _extra(entry: Any, key: str) -> float:
    value = (getattr(entry, "extra", None) or {}).get(key)
    return math.nan if value is None else float(value)


def training_curves(history: Sequence[Any]) -> Figure:
    """Loss and accuracy per epoch, train and test; plus lambda_max against the edge of stability when tracked.

    Args:
        history: per-epoch entries with attributes ``epoch``, ``train_loss``, ``train_acc``, ``test_loss``,
            ``test_acc`` (``landscape_core.train.EpochMetrics``). When any entry's ``extra`` dict holds both
            ``keys.LAMBDA_MAX_EPOCH`` and ``keys.EOS_THRESHOLD`` (``(2 + 2 beta) / lr``), as ``LambdaMaxTracker``
            writes them, a third panel shows lambda_max per epoch against that threshold; epochs without them are
            gaps.

    Returns:
        A Figure with 2 axes (loss, accuracy) or 3 (plus lambda_max).

    Raises:
        ValueError: ``history`` is empty.
    """
    if len(history) == 0:
        raise ValueError("Expected a non-empty `history`, got none")
    epochs = [int(h.epoch) for h in history]
    tracked = any(
        LAMBDA_MAX_EPOCH in (getattr(h, "extra", None) or {}) and EOS_THRESHOLD in (getattr(h, "extra", None) or {})
        for h in history
    )
    panels = 3 if tracked else 2
    fig = Figure(figsize=(4.2 * panels, 3.4), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]

    ax = axes[0]
    ax.plot(epochs, [h.train_loss for h in history], "o-", label="train")
    ax.plot(epochs, [h.test_loss for h in history], "s--", label="test")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax.legend()

    ax = axes[1]
    ax.plot(epochs, [100 * h.train_acc for h in history], "o-", label="train")
    ax.plot(epochs, [100 * h.test_acc for h in history], "s--", label="test")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax.legend()

    if tracked:
        ax = axes[2]
        ax.plot(epochs, [_extra(h, LAMBDA_MAX_EPOCH) for h in history], "o-", label=r"$\lambda_{max}$")
        ax.plot(epochs, [_extra(h, EOS_THRESHOLD) for h in history], "k--", label=r"$(2 + 2\beta) / \eta$")
        ax.set(xlabel="epoch", ylabel="top Hessian eigenvalue", title="Edge of stability")
        ax.legend()

    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def edge_of_stability_figure(steps: Sequence[int], lambda_max: Sequence[float], threshold: float) -> Figure:
    """lambda_max every K optimizer steps against the stability threshold (Cohen et al. 2021): under full-batch GD it
    rises to ``2 / lr`` (``(2 + 2 beta) / lr`` with heavy-ball momentum) and hovers there; under SGD it stays below.

    Args:
        steps: the optimizer steps at which lambda_max was tracked ``[K]``.
        lambda_max: its values ``[K]``.
        threshold: ``TrainConfig.stability_threshold`` (NaN for Adam: no line is drawn).

    Returns:
        A Figure with one axis.
    """
    if len(steps) != len(lambda_max) or len(steps) == 0:
        raise ValueError(
            f"Expected `steps` and `lambda_max` of one non-zero length, got {len(steps)}, {len(lambda_max)}"
        )
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(list(steps), list(lambda_max), ".-", lw=1, markersize=3, label=r"$\lambda_{max}$ on the tracking subset")
    if math.isfinite(threshold):
        ax.axhline(
            threshold,
            color="black",
            ls="--",
            label=f"full-batch GD's stability threshold $(2 + 2\\beta) / \\eta$ = {threshold:.3g}",
        )
        above = sum(v >= threshold for v in lambda_max)
        ax.set_title(f"Sharpness during training ({above} of {len(steps)} tracked steps >= threshold)", fontsize=10)
    else:
        ax.set_title("Sharpness during training", fontsize=10)
    ax.set(xlabel="optimizer step", ylabel="top Hessian eigenvalue")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
