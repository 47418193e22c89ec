"""PAC-Bayes flatness (Jiang et al. 2019) and the norm baselines a sharpness measure has to beat.

The PAC-Bayes noise vectors are :func:`landscape_core.noise.noise_vectors`, drawn by landscape_core's one
seeded-generator rule (:mod:`landscape_core.rng`: float64 on the CPU, then cast to the model's dtype and moved to its
device). This changed on purpose: they used to be drawn on the model's device in its dtype, so float64 CPU models get
the numbers they got before and float32 or CUDA models new ones (the same, up to the cast, as a float64 copy's).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from landscape_core.common import check, check_count
from landscape_core.functional import DEFAULT_CHUNK, Data, LossFn, Params, evaluate, flat_params, flatten, param_dict
from landscape_core.noise import perturbed_metrics

__all__ = ["PacBayesResult", "distance_from_init", "pac_bayes_sigma", "weight_norm"]

SIGMA_MIN = 1e-5
MAGNITUDE_EPS = 1e-3


@dataclass(frozen=True)
class PacBayesResult:
    """The largest noise scale whose expected training-accuracy drop stays within the target.

    Attributes:
        sigma: sigma*, the largest sigma found with ``drop <= target_drop`` (the lower end of the final bracket).
        upper: the smallest sigma found with ``drop > target_drop`` (the upper end of the final bracket), or
            ``sigma`` itself when even ``sigma_max`` stays within the target.
        measure: ``1 / sigma**2`` (larger = sharper).
        base_acc: accuracy at the unperturbed weights.
        drop_at_sigma: ``base_acc - mean accuracy`` under noise at ``sigma`` (<= target unless ``sigma`` is the
            lower search bound and already exceeds it; see ``bracketed``).
        magnitude_aware: whether the noise std was ``sqrt(sigma^2 w^2 + 1e-3^2)`` instead of ``sigma``.
        bracketed: False when sigma* sits on an end of the search interval (``[1e-5, sigma_max]``) because the
            drop never crossed the target inside it.
    """

    sigma: float
    upper: float
    measure: float
    base_acc: float
    drop_at_sigma: float
    magnitude_aware: bool
    bracketed: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields."""
        return asdict(self)


def pac_bayes_sigma(
    model: nn.Module,
    data: Data,
    *,
    magnitude_aware: bool = False,
    target_drop: float = 0.1,
    draws: int = 5,
    steps: int = 10,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    sigma_max: float = 1.0,
    loss_fn: LossFn | None = None,
    dtype: torch.dtype | None = None,
) -> PacBayesResult:
    """Jiang et al. (2019) PAC-Bayes flatness: the largest sigma with expected accuracy drop <= ``target_drop``.

    ``drop(sigma) = acc(w) - mean_k acc(w + s(sigma) * z_k)`` over ``draws`` standard-normal vectors ``z_k`` drawn
    once from ``seed`` and reused at every sigma (common random numbers: ``drop`` is then a deterministic
    function of sigma, and the result is monotone in ``target_drop``). The noise std is ``s = sigma`` (plain) or
    ``s = sqrt(sigma^2 w^2 + 1e-3^2)`` elementwise (magnitude-aware). The ``z_k`` are the same vectors
    ``weight_noise_robustness`` draws for the same seed (:func:`landscape_core.noise.noise_vectors`).

    Search: evaluate both ends of ``[1e-5, sigma_max]``; if ``drop(sigma_max) <= target`` return ``sigma_max``; if
    ``drop(1e-5) > target`` return ``1e-5`` (both flagged ``bracketed=False``). Otherwise bisect ``steps`` times in
    log space (midpoint ``sqrt(lo * hi)``), keeping ``drop(lo) <= target < drop(hi)``; sigma* is the final ``lo``,
    so ``drop_at_sigma <= target_drop`` exactly, with relative precision ``(sigma_max / 1e-5) ** (2 ** -steps)``.
    Cost: ``(steps + 2) * draws + 1`` evaluations over ``data``.

    Args:
        model: the network at w; not modified.
        data: ``(inputs [N, ...], targets [N])``, a training subset.
        magnitude_aware: scale the noise by the weights' magnitudes.
        target_drop: the allowed accuracy drop, in (0, 1).
        draws: noise draws per sigma (>= 1).
        steps: bisection steps (>= 0).
        seed: seeds the noise.
        chunk_size: examples per forward chunk.
        sigma_max: upper end of the search (> 1e-5).
        loss_fn: ``loss_fn(logits, targets) -> scalar``; only used for the loss, accuracy is argmax-based.
        dtype: the forward passes' arithmetic (``functional.evaluate``); None: the model's own.

    Returns:
        ``PacBayesResult``.
    """
    check(0 < target_drop < 1, "target_drop", "in (0, 1)", target_drop)
    check_count("draws", draws)
    check_count("steps", steps, minimum=0)
    check(sigma_max > SIGMA_MIN, "sigma_max", f"> {SIGMA_MIN}", sigma_max)
    like, theta = flat_params(model)
    base_acc = evaluate(model, data, params=like, chunk_size=chunk_size, loss_fn=loss_fn, dtype=dtype)[1]
    magnitude = theta.square() if magnitude_aware else None

    def drop(sigma: float) -> float:
        std = torch.sqrt(sigma**2 * magnitude + MAGNITUDE_EPS**2) if magnitude is not None else sigma
        accs = perturbed_metrics(
            model, like, theta, data, std, draws=draws, seed=seed, chunk_size=chunk_size, loss_fn=loss_fn, dtype=dtype
        )[1]
        return base_acc - sum(accs) / len(accs)

    lo, hi = SIGMA_MIN, float(sigma_max)
    drop_hi = drop(hi)
    if drop_hi <= target_drop:
        return _result(hi, hi, base_acc, drop_hi, magnitude_aware, bracketed=False)
    drop_lo = drop(lo)
    if drop_lo > target_drop:
        return _result(lo, lo, base_acc, drop_lo, magnitude_aware, bracketed=False)
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        drop_mid = drop(mid)
        if drop_mid <= target_drop:
            lo, drop_lo = mid, drop_mid
        else:
            hi = mid
    return _result(lo, hi, base_acc, drop_lo, magnitude_aware, bracketed=True)


def _result(
    sigma: float, upper: float, base_acc: float, drop: float, magnitude_aware: bool, *, bracketed: bool
) -> PacBayesResult:
    return PacBayesResult(
        sigma=sigma,
        upper=upper,
        measure=1.0 / sigma**2,
        base_acc=base_acc,
        drop_at_sigma=drop,
        magnitude_aware=magnitude_aware,
        bracketed=bracketed,
    )


def weight_norm(model: nn.Module) -> float:
    """``||w||_2`` over all parameters of ``model``."""
    return float(torch.linalg.vector_norm(flatten(param_dict(model))))


def distance_from_init(model: nn.Module, init_params: Params) -> float:
    """``||w - w_init||_2`` over all parameters.

    Args:
        model: the trained network.
        init_params: the initial parameters by name, as ``param_dict`` gives them (same names and shapes).

    Raises:
        ValueError: the names or shapes differ from the model's.
    """
    params = param_dict(model)
    if set(params) != set(init_params):
        raise ValueError(
            f"Expected `init_params` with the model's parameter names {sorted(params)}, got {sorted(init_params)}"
        )
    total = 0.0
    for name, p in params.items():
        w0 = init_params[name].detach().to(device=p.device, dtype=p.dtype)
        if w0.shape != p.shape:
            raise ValueError(f"Expected `init_params[{name!r}]` of shape {tuple(p.shape)}, got {tuple(w0.shape)}")
        total += float(torch.sum((p - w0).square(), dtype=torch.float64))
    return math.sqrt(total)
