"""Gaussian weight noise with common random numbers: the seeded noise vectors and the model evaluated under them.

Shared by ``sharpness.weight_noise_robustness`` (loss and accuracy at ``theta + sigma z`` per sigma) and
``flatness.pac_bayes_sigma`` (the accuracy drop under noise, bisected over sigma): both draw the same vectors ``z_k``
for the same seed, at every noise scale (common random numbers), so curves over sigma are smooth and the bisection's
drop is a deterministic function of sigma.

The vectors follow landscape_core's one seeded-generator rule (:mod:`landscape_core.rng`): drawn in float64 on the
CPU from ``rng.generator(seed)``, then cast to the parameters' dtype and moved to their device, so a float32 model
and its float64 copy see the same noise up to that cast, on any device. (Before this rule the vectors were drawn on
the model's device in its dtype: float64 CPU models get the same numbers as then, float32 or CUDA models new ones.)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from landscape_core import rng
from landscape_core.common import check, check_count
from landscape_core.functional import DEFAULT_CHUNK, Data, LossFn, Params, evaluate, evaluate_examples, unflatten

__all__ = [
    "Allocation",
    "Pilot",
    "allocate",
    "allocated_metrics",
    "noise_vectors",
    "paired_metrics",
    "perturbed_metrics",
    "variance_components",
]


def noise_vectors(theta: Tensor, draws: int, seed: int) -> Iterator[Tensor]:
    """``draws`` standard-normal vectors shaped like ``theta`` (``[P]``), one at a time, from ``rng.generator(seed)``.

    Every caller that passes the same seed gets the same vectors (common random numbers across sigmas and across
    bisection steps), and only one vector is alive at a time. Drawn in float64 on the CPU, then cast to ``theta``'s
    dtype and moved to its device (:func:`rng.randn`).
    """
    check_count("draws", draws)
    gen = rng.generator(seed)
    for _ in range(draws):
        yield rng.randn(theta.shape, gen, dtype=theta.dtype, device=theta.device)


@torch.no_grad()
def perturbed_metrics(
    model: nn.Module,
    like: Params,
    theta: Tensor,
    data: Data,
    std: float | Tensor,
    *,
    draws: int,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[list[float], list[float]]:
    """Loss and accuracy at ``theta + std * z_k`` for the ``draws`` seeded noise vectors ``z_k`` of
    :func:`noise_vectors`, evaluated functionally in eval mode (the model is not touched).

    Args:
        model: the architecture (and buffers) to evaluate.
        like: the parameter dict ``theta`` flattens (names and shapes), e.g. from ``functional.flat_params``.
        theta: the flat parameters ``[P]``.
        data: ``(inputs [N, ...], targets [N])``.
        std: a scalar or per-parameter standard deviation ``[P]``.
        draws: noise vectors (>= 1).
        seed: seeds the vectors.
        chunk_size: examples per forward chunk.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; mean cross-entropy by default.
        dtype: the forward passes' arithmetic (``functional.evaluate``); None: the model's own.

    Returns:
        ``(losses, accs)``, each a list of ``draws`` floats.
    """
    losses, accs = [], []
    for z in noise_vectors(theta, draws, seed):
        loss, acc = evaluate(
            model, data, params=unflatten(theta + std * z, like), chunk_size=chunk_size, loss_fn=loss_fn, dtype=dtype
        )
        losses.append(loss)
        accs.append(acc)
    return losses, accs


# ----------------------------------------------------------------------------------------------------------------------
# Allocating draws against images
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    """How many noise draws, and how many images per draw, give an expectation under weight noise the precision of
    ``reference_draws`` draws on all ``total`` images, at the least cost.

    The estimate of ``E_z[L_all(theta + sigma z)]`` is ``L_all(theta) + mean_k mean_{i in S_k} [l_i(theta + sigma
    z_k) - l_i(theta)]``, each draw ``k`` on its own uniform subset ``S_k`` of ``images`` of the ``total`` images
    (paired differences: a control variate that removes the images' own spread of losses). A draw's variance is
    ``between + within / images * (1 - images / total)``: ``between`` the draw-to-draw variance of the all-image value,
    ``within`` the per-image variance of the paired difference. Matching ``between / reference_draws`` needs
    ``draws = reference_draws * (1 + within * (1 / images - 1 / total) / between)``; the cost is
    ``draws * (images + draw_cost)``, with ``draw_cost`` the price of one draw (the noise vector) in images.

    Attributes:
        images: images per draw (``total``: every draw sees all of them, the plain estimator).
        draws: draws.
        between: the draw-to-draw variance used (per metric: loss, accuracy), a lower confidence bound.
        within: the per-image variance of the paired difference (per metric).
    """

    images: int
    draws: int
    between: tuple[float, ...]
    within: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "draws": self.draws, "between": list(self.between), "within": list(self.within)}


def allocate(
    between: Sequence[float],
    within: Sequence[float],
    *,
    total: int,
    reference_draws: int,
    draw_cost: float,
    smallest: int = 64,
) -> Allocation:
    """The cheapest (images, draws) whose variance is at most ``between / reference_draws`` for every metric.

    Candidates: ``smallest * 2^j`` images below ``total``, and ``total``; a metric whose ``between`` is 0 (no
    draw-to-draw spread seen) forces ``total`` images and ``reference_draws`` draws, the plain estimator.
    """
    check_count("total", total)
    check_count("reference_draws", reference_draws)
    check(len(between) == len(within) and len(between) > 0, "between, within", "one value per metric each", between)
    plain = Allocation(total, reference_draws, tuple(between), tuple(within))
    if any(b <= 0 for b in between):
        return plain
    candidates = [n for n in (smallest * 2**j for j in range(32)) if n < total] + [total]
    best, best_cost = plain, reference_draws * (total + draw_cost)
    for n in candidates:
        inflation = max(1 + w * (1 / n - 1 / total) / b for b, w in zip(between, within))
        draws = math.ceil(reference_draws * inflation - 1e-9)
        cost = draws * (n + draw_cost)
        if cost < best_cost:
            best, best_cost = Allocation(n, draws, tuple(between), tuple(within)), cost
    return best


def variance_components(
    deltas: Sequence[Sequence[float]], within: Sequence[Sequence[float]], *, images: int, total: int, confidence: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Method-of-moments variance components from a pilot: per metric, ``deltas[m]`` the pilot draws' paired
    differences (each the mean over ``images`` of the ``total`` images) and ``within[m]`` their per-image sample
    variances. ``between`` is a one-sided ``confidence`` lower bound (chi-square, ``draws - 1`` degrees of freedom)
    of the draw-to-draw variance, less the subset's share; a smaller ``between`` asks for more draws, the safe side.

    Returns:
        ``(between, within)``, one value per metric; ``between`` clipped at 0.
    """
    from scipy.stats import chi2

    out_between, out_within = [], []
    for values, spreads in zip(deltas, within):
        d = len(values)
        check(d >= 2, "pilot draws", ">= 2", d)
        w = sum(spreads) / len(spreads)
        lower = statistics.variance(values) * (d - 1) / float(chi2.ppf(confidence, d - 1))
        out_between.append(max(0.0, lower - w / images * (1 - images / total)))
        out_within.append(w)
    return tuple(out_between), tuple(out_within)


@dataclass(frozen=True)
class Pilot:
    """The pilot that measures the variance components before :func:`allocated_metrics` allocates its draws.

    Attributes:
        draws: pilot draws (their own noise vectors, not reused by the estimate).
        images: images per pilot draw (at most all of them).
        draw_cost: the cost of one draw (drawing and adding the noise vector) in images evaluated (measured on the
            reference CPU for SeedCNN: ~10 ms per 809,034-parameter vector, ~120 images' forward pass).
        confidence: of the lower bound on the draw-to-draw variance (:func:`variance_components`).
    """

    draws: int = 8
    images: int = 512
    draw_cost: float = 128.0
    confidence: float = 0.9

    def pays(self, total: int, reference_draws: int) -> bool:
        """Whether the pilot costs at most a quarter of the plain estimate (``reference_draws`` draws on ``total``
        images); on small subsets it does not, and the plain estimator runs."""
        return self.draws * (min(total, self.images) + self.draw_cost) <= 0.25 * reference_draws * total

    def __post_init__(self) -> None:
        check(self.draws >= 2, "pilot draws", ">= 2", self.draws)
        check_count("pilot images", self.images)
        check(0 < self.confidence < 1, "confidence", "in (0, 1)", self.confidence)


PILOT_SEED = 7919  # added to the seed: the pilot's noise vectors, apart from the estimate's
SUBSET_SEED = 104_729  # added to the seed: the draws' image subsets (the same sequence at every sigma)


@torch.no_grad()
def allocated_metrics(
    model: nn.Module,
    like: Params,
    theta: Tensor,
    data: Data,
    std: float,
    *,
    reference_draws: int,
    seed: int,
    pilot: Pilot,
    base: tuple[Tensor, Tensor],
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[list[float], list[float], Allocation]:
    """Per-draw estimates of the all-image loss and accuracy at ``theta + std * z_k``, with the draws allocated against
    the images (:class:`Allocation`): the precision of ``reference_draws`` draws on all images, for less.

    A pilot of ``pilot.draws`` draws on ``pilot.images`` images each measures the variance components; then draw
    ``k`` evaluates the first ``images`` of a seeded permutation of the images (nested across sigmas: common random
    numbers) at the ``k``-th noise vector of ``seed`` (the same vectors as :func:`perturbed_metrics`), and its
    estimate is the all-image base value plus the mean paired difference ``l_i(theta + std z_k) - l_i(theta)``.
    Cross-entropy only (per-example losses).

    Args:
        base: per-example ``(losses, correct)`` at ``theta`` over all of ``data`` (``evaluate_examples``).

    Returns:
        ``(losses, accs, allocation)``: one estimate per draw of the allocation.
    """
    total = data[0].shape[0]
    n0 = min(total, pilot.images)
    deltas: tuple[list[float], list[float]] = ([], [])
    spreads: tuple[list[float], list[float]] = ([], [])
    pilot_seed = seed + PILOT_SEED  # its own vectors and subsets: the allocation is independent of the estimate's draws
    for z, index in zip(noise_vectors(theta, pilot.draws, pilot_seed), _subsets(total, n0, pilot_seed)):
        for m, d in enumerate(_paired(model, like, theta + std * z, data, index, base, chunk_size)):
            deltas[m].append(float(d.mean()))
            spreads[m].append(float(d.var(correction=1)) if d.numel() > 1 else 0.0)
    between, within = variance_components(deltas, spreads, images=n0, total=total, confidence=pilot.confidence)
    allocation = allocate(between, within, total=total, reference_draws=reference_draws, draw_cost=pilot.draw_cost)
    losses, accs = paired_metrics(
        model, like, theta, data, std, allocation, seed=seed, base=base, chunk_size=chunk_size
    )
    return losses, accs, allocation


@torch.no_grad()
def paired_metrics(
    model: nn.Module,
    like: Params,
    theta: Tensor,
    data: Data,
    std: float,
    allocation: Allocation,
    *,
    seed: int,
    base: tuple[Tensor, Tensor],
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[list[float], list[float]]:
    """Per-draw estimates of the all-image loss and accuracy at ``theta + std * z_k`` for ``allocation.draws`` draws on
    ``allocation.images`` images each: ``base + mean_{i in S_k} (l_i(theta + std z_k) - l_i(theta))``, ``S_k`` the
    first ``images`` of the ``k``-th seeded permutation (all images, in order, when ``images`` is all of them: then
    each value is the all-image loss at that draw, as :func:`perturbed_metrics` computes it)."""
    base_values = (float(base[0].mean()), float(base[1].mean()))
    losses, accs = [], []
    subsets = _subsets(data[0].shape[0], allocation.images, seed)
    for z, index in zip(noise_vectors(theta, allocation.draws, seed), subsets):
        d_loss, d_correct = _paired(model, like, theta + std * z, data, index, base, chunk_size)
        losses.append(base_values[0] + float(d_loss.mean()))
        accs.append(base_values[1] + float(d_correct.mean()))
    return losses, accs


def _subsets(total: int, n: int, seed: int) -> Iterator[Tensor | None]:
    """The draws' image subsets: the first ``n`` of successive seeded permutations (None: all images, in order)."""
    gen = rng.generator(seed + SUBSET_SEED)
    while True:
        yield None if n >= total else torch.randperm(total, generator=gen)[:n]


def _paired(
    model: nn.Module,
    like: Params,
    point: Tensor,
    data: Data,
    index: Tensor | None,
    base: tuple[Tensor, Tensor],
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """Per-example ``(loss, correct)`` at the flat parameters ``point`` minus those at the base, on ``index``."""
    inputs, targets = data
    if index is not None:
        data = inputs[index.to(inputs.device)], targets[index.to(targets.device)]
    loss, correct = evaluate_examples(model, data, params=unflatten(point, like), chunk_size=chunk_size)
    if index is None:
        return loss - base[0], correct - base[1]
    return loss - base[0][index], correct - base[1][index]
