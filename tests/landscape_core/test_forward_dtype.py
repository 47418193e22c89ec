"""bfloat16 forward passes (``AnalysisConfig.forward_dtype``, issue 16) move each estimate that uses them by at most a
tenth of its own standard error, on SeedCNNs trained on Fashion-MNIST: the slices' losses, the barrier path's losses
and the PAC-Bayes accuracy drop. (Weight noise stays float32: at sigma 0.01 on the paper's CNN bf16 moved the test-loss
estimate by ~0.11 of its standard error; see ``measure._measure_noise``.)"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from landscape_core import connectivity, devices, directions, slices
from landscape_core.config import TrainConfig
from landscape_core.errors import UsageError
from landscape_core.functional import evaluate, evaluate_examples, flat_params, param_dict, unflatten
from landscape_core.noise import perturbed_metrics
from landscape_core.splits import TrialData
from landscape_core.train import train

TENTH = 0.1
IMAGES = 512


@pytest.fixture(scope="module")
def minima(fashion):
    """Two SeedCNNs (seeds 1 and 2) trained 2 epochs on 1,024 Fashion-MNIST images, and 512 of those images."""
    config = TrainConfig(train_size=1024, test_size=64, epochs=2, batch_size=64, seed=1, device="cpu")
    data = TrialData.build(fashion, config)
    first = train(config, data).model
    second = train(dataclasses.replace(config, seed=2), data).model
    return first, second, (data.train[0][:IMAGES], data.train[1][:IMAGES])


def _stderr_of_mean_loss(model, data, params) -> float:
    losses, _ = evaluate_examples(model, data, params=params)
    return float(losses.std()) / math.sqrt(losses.numel())


def test_slice_losses_in_bf16_are_within_a_tenth_of_their_standard_error(minima) -> None:
    model, _, data = minima
    d = directions.random_filter_normalized(model, seed=0)
    alphas = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    fp32 = slices.slice_1d(model, data, d, alphas)
    bf16 = slices.slice_1d(model, data, d, alphas, dtype=torch.bfloat16)
    theta = param_dict(model)
    worst = 0.0
    for i, alpha in enumerate(alphas.tolist()):
        stderr = _stderr_of_mean_loss(model, data, {k: v + alpha * d[k] for k, v in theta.items()})
        worst = max(worst, abs(float(bf16.loss[i] - fp32.loss[i])) / stderr)
    assert 0 < worst <= TENTH  # bf16 does change the numbers, by less than a tenth of their sampling error


def test_barrier_path_losses_in_bf16_are_within_a_tenth_of_their_standard_error(minima) -> None:
    first, second, data = minima
    alphas = torch.linspace(0.0, 1.0, 5, dtype=torch.float64).tolist()
    fp32 = connectivity.interpolate(first, second, data, alphas)
    bf16 = connectivity.interpolate(first, second, data, alphas, dtype=torch.bfloat16)
    a, b = param_dict(first), param_dict(second)
    ratios = []
    for i, t in enumerate(alphas):
        stderr = _stderr_of_mean_loss(first, data, {k: (1 - t) * a[k] + t * b[k] for k in a})
        ratios.append(abs(bf16.loss[i] - fp32.loss[i]) / stderr)
    assert max(ratios) <= TENTH
    peak = max(range(len(alphas)), key=lambda i: fp32.loss[i])
    stderr = _stderr_of_mean_loss(first, data, {k: (1 - alphas[peak]) * a[k] + alphas[peak] * b[k] for k in a})
    barrier_change = connectivity.barrier(bf16).loss_barrier - connectivity.barrier(fp32).loss_barrier
    assert abs(barrier_change) <= TENTH * stderr


def test_the_pac_bayes_accuracy_drop_in_bf16_is_within_a_tenth_of_its_standard_error(minima) -> None:
    """The drop at sigma = 0.02 (where PAC-Bayes' bisection ends on these models), over 8 draws: bf16 and float32
    evaluate the same noise vectors; the difference of the mean accuracy against the draws' standard error."""
    model, _, data = minima
    like, theta = flat_params(model)
    fp32 = torch.tensor(perturbed_metrics(model, like, theta, data, 0.02, draws=8, seed=0)[1])
    bf16 = torch.tensor(perturbed_metrics(model, like, theta, data, 0.02, draws=8, seed=0, dtype=torch.bfloat16)[1])
    stderr = float(fp32.std()) / math.sqrt(8)
    assert stderr > 0 and abs(float(bf16.mean() - fp32.mean())) <= TENTH * stderr


def test_evaluate_runs_the_forward_pass_in_the_dtype_asked(minima) -> None:
    model, _, data = minima
    params = dict(model.named_parameters())
    exact = evaluate(model, data)
    rounded = {k: v.to(torch.bfloat16).float() for k, v in params.items()}
    # bf16 arithmetic: not float32's result, and close to that of the bf16-rounded weights in float32
    bf16 = evaluate(model, data, dtype=torch.bfloat16)
    assert bf16[0] != exact[0]
    assert bf16[0] == pytest.approx(evaluate(model, data, params=rounded)[0], abs=2e-3)
    assert evaluate(model, data, params=unflatten(flat_params(model)[1], params), dtype=None) == pytest.approx(exact)


def test_the_forward_dtype_resolves_by_name_and_hardware() -> None:
    assert devices.forward_dtype("float32", "cpu") is None
    assert devices.forward_dtype("bfloat16", "cpu") is torch.bfloat16
    native = any(
        getattr(torch.cpu, p, lambda: False)() for p in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    assert devices.forward_dtype("auto", "cpu") is (torch.bfloat16 if native else None)
    with pytest.raises(UsageError, match="forward_dtype"):
        devices.forward_dtype("float16", "cpu")
