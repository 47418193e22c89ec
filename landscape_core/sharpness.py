"""Worst-case and average-case sharpness: Keskar's epsilon-sharpness, adaptive sharpness and weight-noise robustness.

All three perturb a flat copy of the parameters (``param_dict`` + ``flatten``) and evaluate the model functionally in
eval mode, so the caller's model is never touched. Losses are exact means over ``data``, computed in chunks of
``chunk_size`` examples (gradients too: one ``torch.func.grad_and_value`` per chunk, weighted by chunk size), so
memory is bounded by the chunk, not by the data.

Random numbers (the ascents' random starts, the weight noise) follow landscape_core's one seeded-generator rule
(:mod:`landscape_core.rng`): drawn in float64 on the CPU from ``rng.generator(seed)``, then cast to the model's dtype
and moved to its device, so a seed gives the same starts and noise, up to that cast, for a float32 or float64 model
on any device. This changed on purpose: the draws used to be made on the model's device in its dtype. Float64 CPU
models get exactly the numbers they got before; float32 or CUDA models get new ones (e.g. ``eps_sharpness`` of a
float32 TinyCNN, ``steps=4, seed=5``, on 64 random images: 0.150592 before, 0.151049 now, the float64 model's
0.151049 up to float32 rounding).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from landscape_core import rng
from landscape_core.common import check, check_count, check_positive
from landscape_core.functional import (
    DEFAULT_CHUNK,
    Data,
    LossFn,
    Params,
    chunks,
    eval_mode,
    evaluate,
    flat_params,
    flatten,
    loss_at,
    unflatten,
)
from landscape_core.noise import perturbed_metrics

__all__ = [
    "NoiseResult",
    "SharpnessResult",
    "adaptive_sharpness",
    "eps_sharpness",
    "weight_noise_robustness",
]


@dataclass(frozen=True)
class SharpnessResult:
    """A worst-case sharpness estimate.

    Attributes:
        value: the measure. For ``eps_sharpness`` Keskar's phi in percent, ``100 (max_loss - base_loss) /
            (1 + base_loss)``; for ``adaptive_sharpness`` the plain loss increase ``max_loss - base_loss``.
            Never negative: the unperturbed point is one of the candidates.
        base_loss: L(theta).
        max_loss: the largest loss seen inside the perturbation set (a lower bound on the true maximum).
        steps: projected-gradient-ascent steps taken.
    """

    value: float
    base_loss: float
    max_loss: float
    steps: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields."""
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class NoiseResult:
    """Loss and accuracy under Gaussian weight noise ``theta + sigma z``, per sigma.

    Per-sigma sequences are in the order of ``sigmas``; ``losses[i]`` and ``accs[i]`` hold the ``draws`` raw values
    for ``sigmas[i]``. ``std`` is the sample standard deviation (ddof = 1; 0 for a single draw) and ``stderr`` is
    ``std / sqrt(draws)``.
    """

    sigmas: tuple[float, ...]
    base_loss: float
    base_acc: float
    losses: tuple[tuple[float, ...], ...]
    accs: tuple[tuple[float, ...], ...]
    loss_mean: tuple[float, ...]
    loss_std: tuple[float, ...]
    loss_stderr: tuple[float, ...]
    acc_mean: tuple[float, ...]
    acc_std: tuple[float, ...]
    acc_stderr: tuple[float, ...]

    @property
    def draws(self) -> int:
        """Noise draws per sigma."""
        return len(self.losses[0]) if self.losses else 0

    def rows(self) -> list[dict[str, float]]:
        """One dict of summary statistics per sigma (no raw draws), in the order of ``sigmas``."""
        keys = ("loss_mean", "loss_std", "loss_stderr", "acc_mean", "acc_std", "acc_stderr")
        return [{"sigma": sigma, **{key: getattr(self, key)[i] for key in keys}} for i, sigma in enumerate(self.sigmas)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: floats and (nested) lists."""
        return {
            k: (float(v) if isinstance(v, float) else [list(x) if isinstance(x, tuple) else x for x in v])
            for k, v in asdict(self).items()
        }


# --------------------------------------------------------------------------------------------------- helpers


def _value_and_grad(
    model: nn.Module, like: Params, theta: Tensor, data: Data, chunk_size: int, loss_fn: LossFn | None
) -> tuple[float, Tensor]:
    """Exact mean loss and its gradient ``[P]`` at flat parameters ``theta``, chunk by chunk (memory ~ one chunk)."""
    params = unflatten(theta, like)
    step = torch.func.grad_and_value(lambda p, batch: loss_at(model, p, batch, loss_fn))
    loss = 0.0
    grad = torch.zeros_like(theta)
    with eval_mode(model):
        for batch, weight in chunks(data, chunk_size):
            g, value = step(params, batch)
            grad += flatten(g) * weight
            loss += float(value) * weight
    return loss, grad


def _loss(model: nn.Module, like: Params, theta: Tensor, data: Data, chunk_size: int, loss_fn: LossFn | None) -> float:
    return evaluate(model, data, params=unflatten(theta, like), chunk_size=chunk_size, loss_fn=loss_fn)[0]


# --------------------------------------------------------------------------------------------------- measures


def eps_sharpness(
    model: nn.Module,
    data: Data,
    *,
    eps: float = 1e-3,
    steps: int = 10,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
) -> SharpnessResult:
    """Keskar et al. (2017) epsilon-sharpness over the full parameter space.

    The box is ``C = {d : |d_i| <= eps (|theta_i| + 1)}`` and
    ``phi = 100 (max_{d in C} L(theta + d) - L(theta)) / (1 + L(theta))``.

    The maximum is approximated from below by the best loss seen among:

    1. ``d = 0`` (so phi >= 0);
    2. the first-order corner ``d = box * sign(grad L(theta))`` (exact for a loss linear in the parameters);
    3. projected sign-gradient ascent: start ``d_0 = box * u``, ``u ~ U(-1, 1)^P`` drawn from ``seed``, then
       ``steps`` updates ``d <- clip(d + (2 / steps) box * sign(grad L(theta + d)), -box, box)``. A step is
       ``2 / steps`` of the box half-width, so the ascent can cross the whole box once; every iterate is a
       candidate.

    Cost: ``steps + 1`` gradient evaluations and two loss evaluations over ``data``.

    Args:
        model: the network at theta; not modified (evaluated in eval mode through ``torch.func``).
        data: ``(inputs [N, ...], targets [N])``.
        eps: relative box size (Keskar's 1e-3).
        steps: ascent steps (>= 1).
        seed: seeds the random start.
        chunk_size: examples per forward/backward chunk.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; mean cross-entropy by default.

    Returns:
        ``SharpnessResult`` with ``value`` = phi in percent.
    """
    check_positive("eps", eps)
    check_count("steps", steps)
    like, theta = flat_params(model)
    box = eps * (theta.abs() + 1)
    base_loss, grad = _value_and_grad(model, like, theta, data, chunk_size, loss_fn)
    best = base_loss
    best = max(best, _loss(model, like, theta + box * grad.sign(), data, chunk_size, loss_fn))
    d = box * (2 * rng.rand(theta.shape, rng.generator(seed), dtype=theta.dtype, device=theta.device) - 1)
    step = 2.0 / steps * box
    for _ in range(steps):
        loss, grad = _value_and_grad(model, like, theta + d, data, chunk_size, loss_fn)
        best = max(best, loss)
        d = torch.clamp(d + step * grad.sign(), -box, box)
    best = max(best, _loss(model, like, theta + d, data, chunk_size, loss_fn))
    value = 100.0 * (best - base_loss) / (1.0 + base_loss)
    return SharpnessResult(value=value, base_loss=base_loss, max_loss=best, steps=steps)


def adaptive_sharpness(
    model: nn.Module,
    data: Data,
    *,
    rho: float = 0.002,
    steps: int = 10,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
    eta: float = 0.0,
) -> SharpnessResult:
    """Andriushchenko et al. (2023) elementwise-adaptive L2 worst-case sharpness.

    ``S = max_{||d / (|w| + eta)||_2 <= rho} L(w + d) - L(w)``, reported as the plain loss increase (not a
    percentage, unlike ``eps_sharpness``). ``eta = 0`` by default, as in the paper's adaptive sharpness; then
    parameters that are exactly zero cannot move.

    The maximum is approximated in the rescaled space ``d = (|w| + eta) u``, ``||u||_2 <= rho``, from below by the
    best loss seen among:

    1. ``u = 0``;
    2. the first-order point ``u = rho g_u / ||g_u||`` with ``g_u = (|w| + eta) grad L(w)`` (exact for a linear
       loss);
    3. projected normalized-gradient ascent: a random start uniform in the ball (drawn from ``seed``), then
       ``steps`` updates ``u <- proj_ball(u + (2 rho / steps) g_u / ||g_u||)``; every iterate is a candidate.

    Args:
        model: the network at w; not modified.
        data: ``(inputs [N, ...], targets [N])``.
        rho: radius in the rescaled space.
        steps: ascent steps (>= 1).
        seed: seeds the random start.
        chunk_size: examples per forward/backward chunk.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; mean cross-entropy by default.
        eta: added to ``|w|`` in the scale (>= 0).

    Returns:
        ``SharpnessResult`` with ``value`` = max loss increase.
    """
    check_positive("rho", rho)
    check_count("steps", steps)
    check(eta >= 0, "eta", ">= 0", eta)
    like, theta = flat_params(model)
    scale = theta.abs() + eta

    def project(u: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(u)
        return u * (rho / norm) if norm > rho else u

    def direction(grad: Tensor) -> Tensor:
        g_u = scale * grad
        norm = torch.linalg.vector_norm(g_u)
        return g_u / norm if norm > 0 else g_u

    base_loss, grad = _value_and_grad(model, like, theta, data, chunk_size, loss_fn)
    best = base_loss
    best = max(best, _loss(model, like, theta + scale * (rho * direction(grad)), data, chunk_size, loss_fn))
    gen = rng.generator(seed)
    z = rng.randn(theta.shape, gen, dtype=theta.dtype, device=theta.device)
    radius = rho * float(rng.rand((), gen)) ** (1 / z.numel())  # a float64 draw, used as a Python float
    u = z * (radius / torch.linalg.vector_norm(z))
    step = 2.0 * rho / steps
    for _ in range(steps):
        loss, grad = _value_and_grad(model, like, theta + scale * u, data, chunk_size, loss_fn)
        best = max(best, loss)
        u = project(u + step * direction(grad))
    best = max(best, _loss(model, like, theta + scale * u, data, chunk_size, loss_fn))
    return SharpnessResult(value=best - base_loss, base_loss=base_loss, max_loss=best, steps=steps)


def _summary(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std (ddof = 1; 0 for one value) and standard error of ``values``."""
    x = torch.tensor(values, dtype=torch.float64)
    n = x.numel()
    std = float(x.std(correction=1)) if n > 1 else 0.0
    return float(x.mean()), std, std / math.sqrt(n)


def weight_noise_robustness(
    model: nn.Module,
    data: Data,
    *,
    sigmas: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10),
    draws: int = 20,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
) -> NoiseResult:
    """Loss and accuracy at ``theta + sigma z``, ``z ~ N(0, I)`` on every parameter, ``draws`` times per sigma.

    The same ``draws`` noise vectors (from ``seed``) are used for every sigma (common random numbers), so the curve
    over sigma is smooth and differences between sigmas are not draw noise; the per-sigma statistics are each an
    ordinary mean over independent draws.

    Args:
        model: the network at theta; not modified.
        data: ``(inputs [N, ...], targets [N])``, typically a test subset.
        sigmas: noise scales (> 0), absolute (not relative to the weights).
        draws: noise draws per sigma (>= 1).
        seed: seeds the noise.
        chunk_size: examples per forward chunk.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; mean cross-entropy by default.

    Returns:
        ``NoiseResult`` with raw ``[len(sigmas)][draws]`` losses/accuracies and their mean, std and stderr.
    """
    sigmas = tuple(float(s) for s in sigmas)
    check(bool(sigmas) and min(sigmas) > 0, "sigmas", "non-empty and > 0", sigmas)
    check_count("draws", draws)
    like, theta = flat_params(model)
    base_loss, base_acc = evaluate(model, data, params=like, chunk_size=chunk_size, loss_fn=loss_fn)
    losses, accs = [], []
    for sigma in sigmas:
        loss, acc = perturbed_metrics(
            model, like, theta, data, sigma, draws=draws, seed=seed, chunk_size=chunk_size, loss_fn=loss_fn
        )
        losses.append(tuple(loss))
        accs.append(tuple(acc))
    loss_stats = [_summary(list(x)) for x in losses]
    acc_stats = [_summary(list(x)) for x in accs]
    return NoiseResult(
        sigmas=sigmas,
        base_loss=base_loss,
        base_acc=base_acc,
        losses=tuple(losses),
        accs=tuple(accs),
        loss_mean=tuple(s[0] for s in loss_stats),
        loss_std=tuple(s[1] for s in loss_stats),
        loss_stderr=tuple(s[2] for s in loss_stats),
        acc_mean=tuple(s[0] for s in acc_stats),
        acc_std=tuple(s[1] for s in acc_stats),
        acc_stderr=tuple(s[2] for s in acc_stats),
    )
