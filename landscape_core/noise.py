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

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from landscape_core import rng
from landscape_core.common import check_count
from landscape_core.functional import DEFAULT_CHUNK, Data, LossFn, Params, evaluate, unflatten

__all__ = ["noise_vectors", "perturbed_metrics"]


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

    Returns:
        ``(losses, accs)``, each a list of ``draws`` floats.
    """
    losses, accs = [], []
    for z in noise_vectors(theta, draws, seed):
        loss, acc = evaluate(
            model, data, params=unflatten(theta + std * z, like), chunk_size=chunk_size, loss_fn=loss_fn
        )
        losses.append(loss)
        accs.append(acc)
    return losses, accs
