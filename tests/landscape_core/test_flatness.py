"""Tests of landscape_core.flatness: PAC-Bayes sigma* bisection and the norm baselines."""

from __future__ import annotations

import json
import math

import pytest
import torch

from landscape_core.flatness import distance_from_init, pac_bayes_sigma, weight_norm
from landscape_core.functional import evaluate, flatten, param_dict, unflatten
from landscape_core.models import TinyCNN
from landscape_core.sharpness import weight_noise_robustness
from tests.landscape_core.conftest import RecordingModel, first_logit, rule_draws

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is fastest


# ---------------------------------------------------------------------------------------------- PAC-Bayes


@pytest.mark.parametrize("magnitude_aware", [False, True])
def test_sigma_grows_with_target_drop_and_respects_it(trained, data, magnitude_aware) -> None:
    results = [
        pac_bayes_sigma(trained, data, magnitude_aware=magnitude_aware, target_drop=t, draws=2, steps=6)
        for t in (0.02, 0.1, 0.4)
    ]
    assert results[0].sigma < results[1].sigma < results[2].sigma
    for target, r in zip((0.02, 0.1, 0.4), results, strict=True):
        assert r.bracketed
        assert r.magnitude_aware is magnitude_aware
        assert r.drop_at_sigma <= target
        assert r.sigma < r.upper <= r.sigma * (1.0 / 1e-5) ** (2.0**-6) * (1 + 1e-12)
        assert r.measure == pytest.approx(1.0 / r.sigma**2)
        assert r.base_acc == evaluate(trained, data)[1]


def test_sigma_is_deterministic_and_seeded(trained, data) -> None:
    a = pac_bayes_sigma(trained, data, draws=2, steps=6, seed=3)
    assert a == pac_bayes_sigma(trained, data, draws=2, steps=6, seed=3)
    assert json.loads(json.dumps(a.to_dict())) == a.to_dict()


def test_plain_bracket_agrees_with_weight_noise(trained, data) -> None:
    # Same seed, same noise vectors: the drop the bisection saw at sigma* is <= target, at its upper end > target.
    target, draws, seed = 0.1, 3, 7
    r = pac_bayes_sigma(trained, data, target_drop=target, draws=draws, steps=8, seed=seed)
    noise = weight_noise_robustness(trained, data, sigmas=(r.sigma, r.upper), draws=draws, seed=seed)
    drops = [r.base_acc - m for m in noise.acc_mean]
    assert drops[0] == pytest.approx(r.drop_at_sigma, abs=1e-12)
    assert drops[0] <= target < drops[1]


def test_magnitude_aware_noise_std(trained, data) -> None:
    # One draw by hand: std = sqrt(sigma^2 w^2 + 1e-3^2), z the first normal vector of the seeded-generator rule
    # (float64 from Generator().manual_seed(seed), cast to the model's dtype).
    target, seed = 0.1, 11
    r = pac_bayes_sigma(trained, data, magnitude_aware=True, target_drop=target, draws=1, steps=8, seed=seed)
    like = param_dict(trained)
    theta = flatten(like)
    z = torch.randn(theta.shape, generator=rule_draws(seed), dtype=torch.float64).to(theta.dtype)
    for sigma, inside in ((r.sigma, True), (r.upper, False)):
        std = torch.sqrt(sigma**2 * theta**2 + 1e-6)
        acc = evaluate(trained, data, params=unflatten(theta + std * z, like))[1]
        assert (r.base_acc - acc <= target) is inside
    assert r.drop_at_sigma == pytest.approx(
        r.base_acc
        - evaluate(trained, data, params=unflatten(theta + torch.sqrt(r.sigma**2 * theta**2 + 1e-6) * z, like))[1]
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("magnitude_aware", [False, True])
def test_pac_bayes_noise_follows_the_seeded_generator_rule(dtype, magnitude_aware) -> None:
    # RecordingModel's accuracy is always 1 (drop 0 <= target), so the search evaluates sigma_max only: the base
    # point, then theta + std * z_k for the rule's draws z_k, cast to the model's dtype.
    theta = torch.linspace(-1.0, 2.0, 40, dtype=torch.float64).to(dtype)  # >= 16: vectorized draws
    model = RecordingModel(theta)
    data = (torch.zeros(4, 1, dtype=dtype), torch.zeros(4, dtype=torch.long))
    sigma_max, draws = 0.4, 3
    result = pac_bayes_sigma(
        model,
        data,
        magnitude_aware=magnitude_aware,
        draws=draws,
        steps=2,
        seed=6,
        sigma_max=sigma_max,
        loss_fn=first_logit,
    )
    assert result.sigma == sigma_max and not result.bracketed and result.drop_at_sigma == 0.0
    std = torch.sqrt(sigma_max**2 * theta.square() + 1e-3**2) if magnitude_aware else sigma_max
    gen = rule_draws(6)
    expected = [theta] + [
        theta + std * torch.randn(theta.shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(draws)
    ]
    assert len(model.seen) == len(expected)
    for seen, want in zip(model.seen, expected, strict=True):
        assert torch.equal(seen, want)


def test_unbracketed_search_returns_interval_ends(trained, data) -> None:
    flat = pac_bayes_sigma(trained, data, sigma_max=1e-4, draws=1, steps=3)
    assert not flat.bracketed and flat.sigma == flat.upper == 1e-4 and flat.drop_at_sigma <= 0.1
    # magnitude-aware noise never falls below 1e-3 per weight; with a huge target it is trivially inside
    sharp = pac_bayes_sigma(trained, data, target_drop=0.99, draws=1, steps=3)
    assert not sharp.bracketed and sharp.sigma == 1.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target_drop": 0.0}, "target_drop"),
        ({"target_drop": 1.0}, "target_drop"),
        ({"draws": 0}, "draws"),
        ({"steps": -1}, "steps"),
        ({"sigma_max": 1e-6}, "sigma_max"),
    ],
)
def test_bad_arguments_raise(trained, data, kwargs, name) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        pac_bayes_sigma(trained, data, **kwargs)


# ---------------------------------------------------------------------------------------------- norms


def test_weight_norm_is_flat_vector_norm() -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    expected = float(torch.linalg.vector_norm(torch.cat([p.detach().reshape(-1) for p in model.parameters()])))
    assert weight_norm(model) == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    assert weight_norm(model) == pytest.approx(2 * expected, rel=1e-6)


def test_distance_from_init() -> None:
    torch.manual_seed(0)
    model = TinyCNN().double()
    init = param_dict(model)
    assert distance_from_init(model, init) == 0.0
    with torch.no_grad():
        model.fc2.bias.add_(3.0)  # 10 entries moved by 3
        model.conv1.weight[0, 0, 0, 0] += 4.0
    assert distance_from_init(model, init) == pytest.approx(math.sqrt(10 * 9.0 + 16.0), rel=1e-12)
    with pytest.raises(ValueError, match="init_params"):
        distance_from_init(model, {k: v for k, v in init.items() if k != "fc2.bias"})
    with pytest.raises(ValueError, match="shape"):
        distance_from_init(model, {**init, "fc2.bias": torch.zeros(3, dtype=torch.float64)})


def test_callers_model_is_never_changed(data) -> None:
    torch.manual_seed(0)
    model = TinyCNN().double().train()
    model.fc1.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    pac_bayes_sigma(model, data, draws=1, steps=2, chunk_size=64)
    pac_bayes_sigma(model, data, magnitude_aware=True, draws=1, steps=2)
    weight_norm(model)
    distance_from_init(model, param_dict(model))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert all(m.training for m in model.modules())
