"""Worst-case and average-case sharpness: Keskar's epsilon-sharpness, adaptive sharpness, m-sharpness and
weight-noise robustness.

The worst-case measures are instances of Andriushchenko et al. 2023's ``S(w) = max_{||u||_p <= radius} L(w + c * u) -
L(w)``, with ``p`` in {2, inf} and the scale ``c = |w| + 1`` (Keskar et al. 2017's epsilon-sharpness) or ``c = |w| +
eta`` (adaptive sharpness; ``eta = 0`` by default), maximized in the scaled space u by APGD
(:func:`landscape_core.ascent.maximize`, Croce & Hein 2020) with a budget of ``steps * restarts`` gradient
evaluations: ``restarts`` runs of ``steps`` evaluations, the first from ``u = 0`` through the first-order point, the
others from random points (plus further random runs on the evaluations left by runs that stop early at a fixed
point). The reported maximum is the best loss among the evaluated points (``u = 0`` included, so values are never
negative): a lower bound on the true maximum. On 10-dimensional quadratics at a minimum
(tests/landscape_core/test_sharpness.py) it reaches >= 95 % of the exact maximum at the ``quick`` and ``paper``
budgets, where the projected sign/normalized-gradient ascent it replaced did not.

All measures perturb a flat copy of the parameters (``flat_params`` + ``unflatten``) and evaluate the model
functionally in eval mode, so the caller's model is never touched. Losses are exact means over ``data``, computed in
chunks of ``chunk_size`` examples (gradients too: one ``torch.func.grad_and_value`` per chunk, weighted by chunk
size), so memory is bounded by the chunk, not by the data.

Random numbers (the searches' random starts, the weight noise) follow landscape_core's one seeded-generator rule
(:mod:`landscape_core.rng`): drawn in float64 on the CPU from ``rng.generator(seed)``, then cast to the model's dtype
and moved to its device, so a seed gives the same starts and noise, up to that cast, for a float32 or float64 model
on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from landscape_core import ascent
from landscape_core.common import check, check_count, check_positive
from landscape_core.functional import (
    DEFAULT_CHUNK,
    Data,
    LossFn,
    Params,
    chunks,
    effective_chunk,
    eval_mode,
    evaluate,
    evaluate_examples,
    flat_params,
    flatten,
    loss_at,
    unflatten,
)
from landscape_core.noise import Pilot, allocated_metrics, perturbed_metrics

__all__ = [
    "NoiseResult",
    "SharpnessResult",
    "adaptive_sharpness",
    "eps_sharpness",
    "m_batches",
    "m_sharpness",
    "weight_noise_robustness",
]


@dataclass(frozen=True)
class SharpnessResult:
    """A worst-case sharpness estimate.

    Attributes:
        value: the measure. For ``eps_sharpness`` Keskar's phi in percent, ``100 (max_loss - base_loss) /
            (1 + base_loss)``; for ``adaptive_sharpness`` and ``m_sharpness`` the plain loss increase ``max_loss -
            base_loss`` (for ``m_sharpness`` the mean of the per-batch increases). Never negative: the unperturbed
            point is one of the candidates.
        base_loss: L(w) (for ``m_sharpness`` the mean over its batches).
        max_loss: the largest loss seen inside the perturbation set, a lower bound on the true maximum (for
            ``m_sharpness`` the mean of the per-batch maxima).
        steps: APGD gradient evaluations per restart.
        restarts: planned APGD runs.
        n_grad: gradient evaluations in all, at most ``steps * restarts`` (times ``batches`` for ``m_sharpness``,
            each over one batch): a linear objective stops the search early (``landscape_core.ascent``).
        runs: APGD runs made: ``restarts``, more when runs stop early at a fixed point, 1 when the objective is
            linear (summed over the batches for ``m_sharpness``).
        batches: the batches searched separately (1 except for ``m_sharpness``).
    """

    value: float
    base_loss: float
    max_loss: float
    steps: int
    restarts: int = 1
    n_grad: int = 0
    runs: int = 1
    batches: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields."""
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class NoiseResult:
    """Loss and accuracy under Gaussian weight noise ``theta + sigma z``, per sigma.

    Per-sigma sequences are in the order of ``sigmas``; ``losses[i]`` and ``accs[i]`` hold the per-draw values
    for ``sigmas[i]``. ``std`` is the sample standard deviation (ddof = 1; 0 for a single draw) and ``stderr`` is
    ``std / sqrt(draws)``. With a pilot, each sigma has its own number of draws and ``allocations[i]`` says how many,
    on how many images each (:class:`landscape_core.noise.Allocation`); without one, ``allocations`` is empty.
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
    allocations: tuple[dict[str, Any], ...] = ()

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
    """Exact mean loss and its gradient ``[P]`` at flat parameters ``theta``, chunk by chunk (memory ~ one chunk; on a
    CPU at most ``functional.CPU_CHUNK`` examples per pass, measured ~2x faster per example than passes of 1024)."""
    params = unflatten(theta, like)
    step = torch.func.grad_and_value(lambda p, batch: loss_at(model, p, batch, loss_fn))
    loss = 0.0
    grad = torch.zeros_like(theta)
    with eval_mode(model):
        for batch, weight in chunks(data, effective_chunk(chunk_size, theta.device)):
            g, value = step(params, batch)
            grad += flatten(g) * weight
            loss += float(value) * weight
    return loss, grad


# --------------------------------------------------------------------------------------------------- measures


def _search(
    model: nn.Module,
    data: Data,
    *,
    scale: Callable[[Tensor], Tensor],
    radius: float,
    norm: str,
    steps: int,
    restarts: int,
    seed: int,
    chunk_size: int,
    loss_fn: LossFn | None,
) -> ascent.Ascent:
    """APGD in u for ``max_{||u||_p <= radius} L(w + c u)``, ``c = scale(w)``: ``base`` = L(w), ``value`` the max.

    The objective is ``u -> L(w + c * u)``, its gradient ``c * grad L(w + c * u)`` (chain rule); the maximum is over
    the points APGD evaluated, ``u = 0`` among them.
    """
    like, theta = flat_params(model)
    c = scale(theta)

    def value_and_grad(u: Tensor) -> tuple[float, Tensor]:
        loss, grad = _value_and_grad(model, like, theta + c * u, data, chunk_size, loss_fn)
        return loss, c * grad

    return ascent.maximize(value_and_grad, theta, radius=radius, norm=norm, steps=steps, restarts=restarts, seed=seed)


def _result(found: ascent.Ascent, value: float, steps: int, restarts: int) -> SharpnessResult:
    return SharpnessResult(
        value, found.base, found.value, steps, restarts=restarts, n_grad=found.n_evals, runs=found.runs
    )


def eps_sharpness(
    model: nn.Module,
    data: Data,
    *,
    eps: float = 1e-3,
    norm: str = "linf",
    steps: int = 20,
    restarts: int = 2,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
) -> SharpnessResult:
    """Keskar et al. (2017) epsilon-sharpness over the full parameter space, maximized by APGD.

    ``phi = 100 (max_{||u||_p <= eps} L(w + (|w| + 1) u) - L(w)) / (1 + L(w))``. With ``norm = "linf"`` the set is
    Keskar's box ``|d_i| <= eps (|w_i| + 1)``; with ``"l2"`` it is the ball of the same scaled radius,
    ``||d / (|w| + 1)||_2 <= eps`` (Andriushchenko et al. 2023's standard sharpness, in Keskar's scaling).

    The maximum is approximated from below by the best loss among the points evaluated by APGD
    (:func:`landscape_core.ascent.maximize`): ``restarts`` runs of ``steps`` evaluations, step size ``2 eps`` (per
    coordinate for the box), the first run from ``u = 0`` through the first-order point (exact for a loss linear in
    the parameters), the others from random points drawn from ``seed``; evaluations left by runs that stop early at a
    fixed point go to further random runs. ``u = 0`` is a candidate, so phi >= 0.

    Cost: ``steps * restarts`` gradient evaluations over ``data``.

    Args:
        model: the network at w; not modified (evaluated in eval mode through ``torch.func``).
        data: ``(inputs [N, ...], targets [N])``.
        eps: radius in the scaled space (Keskar's 1e-3 for the box).
        norm: ``"linf"`` (Keskar's box) or ``"l2"``.
        steps: APGD evaluations per restart (>= 1).
        restarts: APGD runs (>= 1).
        seed: seeds the random starts.
        chunk_size: examples per forward/backward chunk.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; mean cross-entropy by default.

    Returns:
        ``SharpnessResult`` with ``value`` = phi in percent.
    """
    check_positive("eps", eps)
    found = _search(
        model,
        data,
        scale=lambda theta: theta.abs() + 1,
        radius=eps,
        norm=norm,
        steps=steps,
        restarts=restarts,
        seed=seed,
        chunk_size=chunk_size,
        loss_fn=loss_fn,
    )
    return _result(found, 100.0 * (found.value - found.base) / (1.0 + found.base), steps, restarts)


def adaptive_sharpness(
    model: nn.Module,
    data: Data,
    *,
    rho: float = 0.002,
    norm: str = "l2",
    steps: int = 20,
    restarts: int = 2,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
    eta: float = 0.0,
) -> SharpnessResult:
    """Andriushchenko et al. (2023) elementwise-adaptive worst-case sharpness, maximized by APGD.

    ``S = max_{||u||_p <= rho} L(w + (|w| + eta) u) - L(w)``, ``p`` in {2, inf}, reported as the plain loss increase
    (not a percentage, unlike ``eps_sharpness``). ``eta = 0`` by default, as in the paper; then S is invariant under
    rescalings of the weights that leave the network's function unchanged (e.g. ``a W_1``, ``W_2 / a`` around a ReLU),
    and parameters that are exactly zero cannot move.

    The maximum is approximated from below by the best loss among the points evaluated by APGD
    (:func:`landscape_core.ascent.maximize`) in the scaled space u: ``restarts`` runs of ``steps`` evaluations, step
    size ``2 rho`` (per coordinate for L-infinity), the first run from ``u = 0`` through the first-order point
    ``rho g_u / ||g_u||`` (L2) or ``rho sign(g_u)`` (L-infinity), ``g_u = (|w| + eta) grad L(w)``, the others from
    random points drawn from ``seed``; evaluations left by runs that stop early at a fixed point go to further random
    runs. ``u = 0`` is a candidate, so S >= 0.

    Cost: ``steps * restarts`` gradient evaluations over ``data``.

    Args:
        model: the network at w; not modified.
        data: ``(inputs [N, ...], targets [N])``.
        rho: radius in the scaled space.
        norm: ``"l2"`` (the paper's default) or ``"linf"``.
        steps: APGD evaluations per restart (>= 1).
        restarts: APGD runs (>= 1).
        seed: seeds the random starts.
        chunk_size: examples per forward/backward chunk.
        loss_fn: ``loss_fn(logits, targets) -> scalar``; mean cross-entropy by default.
        eta: added to ``|w|`` in the scale (>= 0).

    Returns:
        ``SharpnessResult`` with ``value`` = max loss increase.
    """
    check_positive("rho", rho)
    check(eta >= 0, "eta", ">= 0", eta)
    found = _search(
        model,
        data,
        scale=lambda theta: theta.abs() + eta,
        radius=rho,
        norm=norm,
        steps=steps,
        restarts=restarts,
        seed=seed,
        chunk_size=chunk_size,
        loss_fn=loss_fn,
    )
    return _result(found, found.value - found.base, steps, restarts)


def m_batches(n: int, m: int) -> list[slice]:
    """The consecutive batches of m-sharpness over ``n`` examples: ``[0, m), [m, 2m), ...``; a last, smaller batch is
    dropped unless it is the only one (``n < m``: one batch of all ``n``)."""
    check_count("m", m)
    check_count("examples", n)
    if n < m:
        return [slice(0, n)]
    return [slice(i * m, (i + 1) * m) for i in range(n // m)]


def m_sharpness(
    model: nn.Module,
    data: Data,
    *,
    m: int = 128,
    rho: float = 0.002,
    norm: str = "l2",
    steps: int = 20,
    restarts: int = 2,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
    eta: float = 0.0,
) -> SharpnessResult:
    """Andriushchenko et al. (2023) m-sharpness: adaptive sharpness on batches of ``m`` examples, averaged.

    ``S_m = (1 / B) sum_b max_{||u_b||_p <= rho} [L_b(w + (|w| + eta) u_b) - L_b(w)]`` over the ``B`` consecutive
    batches ``b`` of ``m`` examples of ``data`` (:func:`m_batches`: in order, not shuffled, since ``data`` is already
    a random subset; a last, smaller batch is dropped unless it is the only one), each batch with its own worst-case
    perturbation. Batch ``b`` is searched exactly as ``adaptive_sharpness(model, batch_b, seed=seed + b, ...)``.
    ``base_loss`` and ``max_loss`` are the averages of the per-batch ``L_b(w)`` and maxima.

    Cost: ``steps * restarts`` gradient evaluations on each batch, i.e. the cost of one search over the ``B m``
    examples; ``n_grad`` counts the per-batch evaluations, ``B steps restarts``.

    Args:
        model: the network at w; not modified.
        data: ``(inputs [N, ...], targets [N])``.
        m: examples per batch (>= 1).
        rho, norm, steps, restarts, chunk_size, loss_fn, eta: as in :func:`adaptive_sharpness`, per batch.
        seed: batch ``b`` uses ``seed + b``.

    Returns:
        ``SharpnessResult`` with ``value`` = the mean per-batch max loss increase and ``batches`` = B.
    """
    check_count("m", m)
    inputs, targets = data
    results = [
        adaptive_sharpness(
            model,
            (inputs[batch], targets[batch]),
            rho=rho,
            norm=norm,
            steps=steps,
            restarts=restarts,
            seed=seed + b,
            chunk_size=chunk_size,
            loss_fn=loss_fn,
            eta=eta,
        )
        for b, batch in enumerate(m_batches(inputs.shape[0], m))
    ]
    count = len(results)
    return SharpnessResult(
        value=math.fsum(r.value for r in results) / count,
        base_loss=math.fsum(r.base_loss for r in results) / count,
        max_loss=math.fsum(r.max_loss for r in results) / count,
        steps=steps,
        restarts=restarts,
        n_grad=sum(r.n_grad for r in results),
        runs=sum(r.runs for r in results),
        batches=count,
    )


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
    dtype: torch.dtype | None = None,
    pilot: Pilot | None = None,
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
        dtype: the forward passes' arithmetic (``functional.evaluate``); None: the model's own.
        pilot: allocate draws against images (:func:`landscape_core.noise.allocated_metrics`): each sigma gets the
            precision of ``draws`` draws on all images at the least cost its pilot's variance components allow.
            Cross-entropy in the model's dtype only. None, or a pilot that would cost more than a quarter of the
            plain estimate (``Pilot.pays``): ``draws`` draws on all images.

    Returns:
        ``NoiseResult`` with raw ``[len(sigmas)][draws]`` losses/accuracies and their mean, std and stderr.
    """
    sigmas = tuple(float(s) for s in sigmas)
    check(bool(sigmas) and min(sigmas) > 0, "sigmas", "non-empty and > 0", sigmas)
    check_count("draws", draws)
    check(pilot is None or (loss_fn is None and dtype is None), "pilot", "cross-entropy in the model's dtype", pilot)
    if pilot is not None and not pilot.pays(data[0].shape[0], draws):
        pilot = None
    like, theta = flat_params(model)
    base = None
    if pilot is not None:  # the per-example values the paired differences need give the base values too
        base = evaluate_examples(model, data, params=like, chunk_size=chunk_size)
        base_loss, base_acc = float(base[0].mean()), float(base[1].mean())
    else:
        base_loss, base_acc = evaluate(model, data, params=like, chunk_size=chunk_size, loss_fn=loss_fn, dtype=dtype)
    losses, accs, allocations = [], [], []
    for sigma in sigmas:
        if pilot is not None and base is not None:
            loss, acc, allocation = allocated_metrics(
                model,
                like,
                theta,
                data,
                sigma,
                reference_draws=draws,
                seed=seed,
                pilot=pilot,
                base=base,
                chunk_size=chunk_size,
            )
            allocations.append(allocation.to_dict())
        else:
            loss, acc = perturbed_metrics(
                model,
                like,
                theta,
                data,
                sigma,
                draws=draws,
                seed=seed,
                chunk_size=chunk_size,
                loss_fn=loss_fn,
                dtype=dtype,
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
        allocations=tuple(allocations),
    )
