"""Tests of landscape_core.sharpness against closed forms, statistics, the seeded-generator rule and the purity
contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import Tensor, nn

from landscape_core import noise, rng
from landscape_core.functional import evaluate, flat_params, flatten, mean_loss, param_dict, unflatten
from landscape_core.models import TinyCNN
from landscape_core.sharpness import adaptive_sharpness, eps_sharpness, weight_noise_robustness
from tests.landscape_core.conftest import RecordingModel, first_logit, rule_draws

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is fastest


def _snapshot(model: nn.Module) -> dict:
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
    }


def _assert_unchanged(model: nn.Module, snap: dict) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap["params"][k]), k
    assert {k: p.requires_grad for k, p in model.named_parameters()} == snap["requires_grad"]
    assert {k: m.training for k, m in model.named_modules()} == snap["training"]
    assert all(p.grad is None for p in model.parameters())


class _Linear(nn.Module):
    """Output ``x @ w + b`` ``[N, 1]``; with ``loss_fn = mean`` the loss is linear in the parameters."""

    def __init__(self, w: Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor([b], dtype=w.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return (x @ self.w + self.b).unsqueeze(1)


class _Quadratic(nn.Module):
    """Loss ``||w||^2`` (through ``loss_fn = mean``) whatever the input."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.w.square().sum().expand(x.shape[0], 1)


def _mean_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.mean()


@pytest.fixture
def linear_case() -> tuple[nn.Module, tuple[Tensor, Tensor], Tensor]:
    """A linear-in-parameters loss ``L = g . theta`` with a known gradient ``g = (mean x, 1)``."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    w = torch.tensor([0.5, -1.5, 0.0, 2.0, -0.25], dtype=torch.float64)
    model = _Linear(w, 3.0)
    g = torch.cat([x.mean(0), torch.ones(1, dtype=torch.float64)])
    return model, (x, torch.zeros(40, dtype=torch.long)), g


# ---------------------------------------------------------------------------------------------- eps-sharpness


def test_eps_sharpness_linear_loss_matches_closed_form(linear_case) -> None:
    model, data, g = linear_case
    theta = flatten(param_dict(model))
    eps = 1e-2
    base = float(g @ theta)
    expected = 100 * float((g.abs() * eps * (theta.abs() + 1)).sum()) / (1 + base)
    result = eps_sharpness(model, data, eps=eps, loss_fn=_mean_loss)
    assert result.base_loss == pytest.approx(base, abs=1e-12)
    assert result.value == pytest.approx(expected, rel=1e-10)
    assert result.max_loss - result.base_loss == pytest.approx(expected * (1 + base) / 100, rel=1e-10)


def test_eps_sharpness_ascent_reaches_corner_where_gradient_vanishes() -> None:
    # At theta = 0 the gradient of ||w||^2 is 0, so the first-order corner finds nothing: only the projected ascent
    # from the random start can reach the maximum, sum box_i^2 = P eps^2 (box = eps (0 + 1)).
    model = _Quadratic(torch.zeros(7, dtype=torch.float64))
    data = (torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, dtype=torch.long))
    eps = 0.1
    result = eps_sharpness(model, data, eps=eps, steps=10, loss_fn=_mean_loss)
    assert result.base_loss == 0.0
    assert result.max_loss == pytest.approx(7 * eps**2, rel=1e-12)
    assert result.value == pytest.approx(100 * 7 * eps**2, rel=1e-12)


def test_eps_sharpness_exact_on_a_quadratic_and_above_the_first_order_corner() -> None:
    # L = ||w||^2 over the box |d_i| <= eps (|w_i| + 1): the maximum is sum_i (|w_i| + box_i)^2, at d = box sign(w)
    # on the non-zero coordinates and either corner on the zero ones. The first-order corner box * sign(grad) leaves
    # the zero coordinates at 0 (their gradient is 0), so only the ascent reaches the maximum: strictly above it.
    w = torch.tensor([0.5, -1.0, 0.0, 0.0, 2.0, 0.0, -0.25], dtype=torch.float64)
    model = _Quadratic(w)
    data = (torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, dtype=torch.long))
    eps = 0.1
    box = eps * (w.abs() + 1)
    exact_max = float(((w.abs() + box) ** 2).sum())
    corner = float(((w + box * w.sign()) ** 2).sum())
    base = float((w**2).sum())
    result = eps_sharpness(model, data, eps=eps, steps=10, seed=3, loss_fn=_mean_loss)
    assert result.base_loss == pytest.approx(base, rel=1e-12)
    assert result.max_loss == pytest.approx(exact_max, rel=1e-12)
    assert result.max_loss > corner + 0.5 * 3 * eps**2  # three zero coordinates, each worth eps^2 more
    assert result.value == pytest.approx(100 * (exact_max - base) / (1 + base), rel=1e-12)


def test_eps_sharpness_beats_its_first_order_corner_seeded_and_in_eval_mode(trained, data) -> None:
    first = eps_sharpness(trained, data, steps=4, seed=5)
    again = eps_sharpness(trained, data, steps=4, seed=5)
    assert first == again
    # At a minimum the loss is not linear: the ascent finds more than the first-order corner box * sign(grad L),
    # computed here independently (the gradient by torch.func.grad of the exact mean loss).
    like, theta = flat_params(trained)
    g = torch.func.grad(lambda t: mean_loss(trained, unflatten(t, like), data))(theta)
    box = 1e-3 * (theta.abs() + 1)
    corner_loss = evaluate(trained, data, params=unflatten(theta + box * g.sign(), like))[0]
    corner_phi = 100 * (corner_loss - first.base_loss) / (1 + first.base_loss)
    assert first.max_loss >= corner_loss
    assert first.value > 1.05 * corner_phi > 0
    assert first.base_loss == pytest.approx(evaluate(trained, data)[0], rel=1e-10)
    assert first.steps == 4
    bigger = eps_sharpness(trained, data, eps=1e-1, steps=4, seed=5)
    assert bigger.value > first.value > 0
    assert json.loads(json.dumps(first.to_dict()))["value"] == first.value


# ---------------------------------------------------------------------------------------------- adaptive


def test_adaptive_sharpness_linear_loss_matches_closed_form(linear_case) -> None:
    # max_{||u|| <= rho} g . (|w| u) = rho || g |w| ||_2
    model, data, g = linear_case
    theta = flatten(param_dict(model))
    rho = 0.05
    result = adaptive_sharpness(model, data, rho=rho, loss_fn=_mean_loss)
    expected = rho * float(torch.linalg.vector_norm(g * theta.abs()))
    assert result.value == pytest.approx(expected, rel=1e-10)
    with_eta = adaptive_sharpness(model, data, rho=rho, loss_fn=_mean_loss, eta=0.5)
    assert with_eta.value == pytest.approx(rho * float(torch.linalg.vector_norm(g * (theta.abs() + 0.5))), rel=1e-10)


def test_adaptive_sharpness_ascent_reaches_sphere_where_gradient_vanishes() -> None:
    # With eta = 1 at w = 0 the scale is 1: max ||u||^2 over the ball is rho^2, reachable only by the ascent.
    model = _Quadratic(torch.zeros(6, dtype=torch.float64))
    data = (torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.long))
    result = adaptive_sharpness(model, data, rho=0.3, steps=10, eta=1.0, loss_fn=_mean_loss)
    assert result.value == pytest.approx(0.3**2, rel=1e-12)


def test_adaptive_sharpness_beats_its_first_order_point_and_is_seeded(trained, data) -> None:
    first = adaptive_sharpness(trained, data, steps=3, seed=1)
    assert first == adaptive_sharpness(trained, data, steps=3, seed=1)
    wide = adaptive_sharpness(trained, data, rho=0.2, steps=3, seed=1)
    assert wide.value > first.value > 0
    # The first-order point u = rho g_u / ||g_u||, g_u = |w| grad L, computed independently: at rho = 0.2 the loss is
    # far from linear and the ascent finds more; at the default rho it is the best candidate (to rounding).
    like, theta = flat_params(trained)
    g_u = theta.abs() * torch.func.grad(lambda t: mean_loss(trained, unflatten(t, like), data))(theta)
    gains = {}
    for rho, result in ((0.2, wide), (0.002, first)):
        point = theta + theta.abs() * (rho * g_u / g_u.norm())
        gains[rho] = evaluate(trained, data, params=unflatten(point, like))[0] - result.base_loss
    assert first.value == pytest.approx(gains[0.002], rel=1e-6)
    assert wide.value > 1.2 * gains[0.2] > 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, d: eps_sharpness(m, d, eps=0.0), "eps"),
        (lambda m, d: eps_sharpness(m, d, steps=0), "steps"),
        (lambda m, d: adaptive_sharpness(m, d, rho=-1.0), "rho"),
        (lambda m, d: adaptive_sharpness(m, d, eta=-1.0), "eta"),
        (lambda m, d: weight_noise_robustness(m, d, sigmas=()), "sigmas"),
        (lambda m, d: weight_noise_robustness(m, d, sigmas=(0.1, 0.0)), "sigmas"),
        (lambda m, d: weight_noise_robustness(m, d, draws=0), "draws"),
    ],
)
def test_bad_arguments_raise(trained, data, call, message) -> None:
    with pytest.raises(ValueError, match=f"`{message}`"):
        call(trained, data)


# ---------------------------------------------------------------------------------------------- weight noise


def test_noise_at_tiny_sigma_equals_base(trained, data) -> None:
    result = weight_noise_robustness(trained, data, sigmas=(1e-10,), draws=3)
    base_loss, base_acc = evaluate(trained, data)
    assert result.base_loss == pytest.approx(base_loss, rel=1e-12)
    assert result.base_acc == base_acc
    assert result.loss_mean[0] == pytest.approx(base_loss, abs=1e-6)
    assert result.acc_mean[0] == pytest.approx(base_acc, abs=1e-12)


def test_noise_degrades_trained_model_monotonically(trained, data) -> None:
    sigmas = (0.01, 0.05, 0.2, 0.5)
    result = weight_noise_robustness(trained, data, sigmas=sigmas, draws=6, seed=0)
    assert result.sigmas == sigmas
    assert result.base_loss < result.loss_mean[0]
    assert all(a < b for a, b in zip(result.loss_mean, result.loss_mean[1:]))
    assert result.acc_mean[-1] < result.acc_mean[0] <= result.base_acc


def test_noise_statistics_match_scipy(trained, data) -> None:
    result = weight_noise_robustness(trained, data, sigmas=(0.05, 0.2), draws=5, seed=1)
    assert result.draws == 5
    for i in range(2):
        losses, accs = np.array(result.losses[i]), np.array(result.accs[i])
        assert losses.shape == (5,) and accs.shape == (5,)
        assert result.loss_mean[i] == pytest.approx(losses.mean(), rel=1e-12)
        assert result.loss_std[i] == pytest.approx(losses.std(ddof=1), rel=1e-10)
        assert result.loss_stderr[i] == pytest.approx(result.loss_std[i] / math.sqrt(5), rel=1e-12)
        assert result.loss_stderr[i] == pytest.approx(scipy.stats.sem(losses), rel=1e-10)
        assert result.acc_stderr[i] == pytest.approx(scipy.stats.sem(accs), rel=1e-10, abs=1e-15)
    rows = result.rows()
    assert [r["sigma"] for r in rows] == [0.05, 0.2]
    assert rows[1]["loss_stderr"] == result.loss_stderr[1] and rows[0]["acc_mean"] == result.acc_mean[0]
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["losses"][1] == list(result.losses[1])


def test_noise_is_seeded(trained, data) -> None:
    a = weight_noise_robustness(trained, data, sigmas=(0.1,), draws=3, seed=4)
    assert a == weight_noise_robustness(trained, data, sigmas=(0.1,), draws=3, seed=4)
    assert a.losses != weight_noise_robustness(trained, data, sigmas=(0.1,), draws=3, seed=5).losses


def test_noise_is_isotropic_gaussian_on_all_parameters(linear_case) -> None:
    # For L = g . theta, L(theta + sigma z) - L(theta) = sigma g . z ~ N(0, sigma^2 ||g||^2), bias included.
    model, data, g = linear_case
    sigma, draws = 0.3, 400
    result = weight_noise_robustness(model, data, sigmas=(sigma,), draws=draws, seed=0, loss_fn=_mean_loss)
    excess = (np.array(result.losses[0]) - result.base_loss) / (sigma * float(torch.linalg.vector_norm(g)))
    assert scipy.stats.kstest(excess, "norm").pvalue > 1e-3
    assert excess.std(ddof=1) == pytest.approx(1.0, abs=0.12)


# ---------------------------------------------------------------------------------------------- seeded-generator rule


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rng_draws_are_float64_cpu_draws_then_cast(dtype) -> None:
    shape = (4, 25)  # >= 16 elements: CPU randn/rand take their vectorized paths, which depend on the dtype
    assert torch.equal(
        rng.randn(shape, rng.generator(4), dtype=dtype),
        torch.randn(shape, generator=rule_draws(4), dtype=torch.float64).to(dtype),
    )
    assert torch.equal(
        rng.rand(shape, rng.generator(4), dtype=dtype),
        torch.rand(shape, generator=rule_draws(4), dtype=torch.float64).to(dtype),
    )
    bits = torch.randint(0, 2, shape, generator=rule_draws(4), dtype=torch.int8)
    assert torch.equal(rng.rademacher(shape, rng.generator(4), dtype=dtype), (bits.double() * 2 - 1).to(dtype))
    assert rng.randn(7, rng.generator(0)).dtype == torch.float64  # float64 unless asked
    assert not torch.equal(rng.randn(7, rng.generator(0)), rng.randn(7, rng.generator(1)))


def _recording(dtype: torch.dtype) -> tuple[RecordingModel, tuple[Tensor, Tensor]]:
    w = torch.linspace(-1.0, 2.0, 40, dtype=torch.float64).to(dtype)  # >= 16: vectorized draws
    return RecordingModel(w), (torch.zeros(4, 1, dtype=dtype), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eps_and_adaptive_starts_follow_the_seeded_generator_rule(dtype) -> None:
    # The loss is 0 with gradient 0, so the ascent stays at its random start; the last evaluation is there.
    model, data = _recording(dtype)
    theta = model.w.detach().clone()
    eps_sharpness(model, data, eps=0.1, steps=2, seed=7, loss_fn=first_logit)
    box = 0.1 * (theta.abs() + 1)
    u = torch.rand(theta.shape, generator=rule_draws(7), dtype=torch.float64).to(dtype)
    assert torch.equal(model.seen[-1], theta + box * (2 * u - 1))

    model.seen.clear()
    rho, eta = 0.3, 0.5
    adaptive_sharpness(model, data, rho=rho, eta=eta, steps=2, seed=8, loss_fn=first_logit)
    gen = rule_draws(8)
    z = torch.randn(theta.shape, generator=gen, dtype=torch.float64).to(dtype)
    radius = rho * float(torch.rand((), generator=gen, dtype=torch.float64)) ** (1 / z.numel())
    assert torch.equal(model.seen[-1], theta + (theta.abs() + eta) * (z * (radius / torch.linalg.vector_norm(z))))


def test_a_float32_copy_gets_the_float64_models_starts_and_noise_up_to_the_cast() -> None:
    (m64, d64), (m32, d32) = _recording(torch.float64), _recording(torch.float32)
    for model, data in ((m64, d64), (m32, d32)):
        eps_sharpness(model, data, eps=0.1, steps=1, seed=2, loss_fn=first_logit)
        adaptive_sharpness(model, data, rho=0.3, eta=1.0, steps=1, seed=2, loss_fn=first_logit)
        weight_noise_robustness(model, data, sigmas=(0.5,), draws=2, seed=2, loss_fn=first_logit)
    assert len(m64.seen) == len(m32.seen) == 7
    for a, b in zip(m64.seen, m32.seen, strict=True):
        torch.testing.assert_close(b, a.float(), rtol=1e-6, atol=1e-6)
    theta64, theta32 = m64.w.detach(), m32.w.detach()
    for z64, z32 in zip(noise.noise_vectors(theta64, 3, 9), noise.noise_vectors(theta32, 3, 9), strict=True):
        assert z64.dtype == torch.float64 and z32.dtype == torch.float32
        assert torch.equal(z32, z64.float())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_weight_noise_follows_the_seeded_generator_rule_with_common_random_numbers(dtype) -> None:
    model, data = _recording(dtype)
    theta = model.w.detach().clone()
    sigmas, draws = (0.1, 0.7), 3
    weight_noise_robustness(model, data, sigmas=sigmas, draws=draws, seed=5, loss_fn=first_logit)
    gen = rule_draws(5)
    z = [torch.randn(theta.shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(draws)]
    expected = [theta] + [theta + sigma * z_k for sigma in sigmas for z_k in z]  # the same z_k at every sigma
    assert len(model.seen) == len(expected)
    for seen, want in zip(model.seen, expected, strict=True):
        assert torch.equal(seen, want)


# ---------------------------------------------------------------------------------------------- purity


def test_callers_model_is_never_changed(data) -> None:
    torch.manual_seed(0)
    model = TinyCNN().double()
    model.train()
    model.conv1.bias.requires_grad_(False)
    snap = _snapshot(model)
    eps_sharpness(model, data, steps=2, chunk_size=50)
    _assert_unchanged(model, snap)
    adaptive_sharpness(model, data, steps=2, chunk_size=50)
    _assert_unchanged(model, snap)
    weight_noise_robustness(model, data, sigmas=(0.1,), draws=2, chunk_size=50)
    _assert_unchanged(model, snap)


def test_dropout_model_is_evaluated_in_eval_mode(data) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10)).double().train()
    base = evaluate(model, data)[0]  # eval mode by contract
    assert eps_sharpness(model, data, steps=1).base_loss == pytest.approx(base, rel=1e-12)
    assert adaptive_sharpness(model, data, steps=1).base_loss == pytest.approx(base, rel=1e-12)
    assert weight_noise_robustness(model, data, sigmas=(1e-12,), draws=2).loss_std[0] < 1e-9
    assert model.training


def test_chunking_does_not_change_results(trained, data) -> None:
    whole = eps_sharpness(trained, data, steps=2, chunk_size=1024)
    chunked = eps_sharpness(trained, data, steps=2, chunk_size=37)
    assert chunked.base_loss == pytest.approx(whole.base_loss, rel=1e-10)
    assert chunked.value == pytest.approx(whole.value, rel=1e-6)
