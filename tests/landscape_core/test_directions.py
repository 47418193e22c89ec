"""landscape_core.directions: Gaussian, filter-normalized (Li et al. 2018), orthogonal and eigen directions."""

from __future__ import annotations

import copy

import pytest
import torch

from landscape_core import directions as dr
from landscape_core.functional import flatten, param_dict
from tests.landscape_core.conftest import ModelSnapshot, rule_draws

pytestmark = pytest.mark.usefixtures("one_thread")


def _filter_norms(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)


def test_random_direction_is_seeded_and_shaped_like_params(tiny_model):
    theta = param_dict(tiny_model)
    a = dr.random_direction(tiny_model, seed=1)
    b = dr.random_direction(tiny_model, seed=1)
    c = dr.random_direction(tiny_model, seed=2)
    assert list(a) == list(theta)
    for name, p in theta.items():
        assert a[name].shape == p.shape and a[name].dtype == p.dtype and a[name].device == p.device
        assert torch.equal(a[name], b[name])
    assert not torch.equal(flatten(a), flatten(c))
    flat = flatten(a)
    assert abs(float(flat.mean())) < 0.1 and float(flat.std()) == pytest.approx(1.0, abs=0.1)  # N(0, 1) draws


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_random_directions_follow_the_seeded_generator_rule(tiny_model, dtype):
    # One float64 draw per parameter, in named_parameters() order, from Generator().manual_seed(seed), then cast: a
    # float32 copy of the model gets the float64 model's direction up to the cast.
    model = copy.deepcopy(tiny_model).to(dtype)
    gen = rule_draws(3)
    expected = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in model.named_parameters()}
    d = dr.random_direction(model, seed=3)
    assert all(torch.equal(d[n], expected[n].to(dtype)) for n in expected)
    # orthogonal_pair draws its two directions one after the other from one generator
    gen = rule_draws(6)
    first = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype) for n, p in model.named_parameters()}
    d1, _ = dr.orthogonal_pair(model, seed=6)
    reference = dr.filter_normalize(first, param_dict(model))
    assert all(torch.equal(d1[n], reference[n]) for n in expected)


def test_filter_normalize_matches_filter_norms_and_zeroes_biases(tiny_model):
    theta = param_dict(tiny_model)
    d = dr.filter_normalize(dr.random_direction(tiny_model, seed=3), theta)
    for name, t in theta.items():
        if t.ndim >= 2:
            # conv filters [out, in, 3, 3] and linear rows [out, in]: one norm per output unit
            torch.testing.assert_close(_filter_norms(d[name]), _filter_norms(t), atol=1e-12, rtol=1e-12)
        else:
            assert torch.equal(d[name], torch.zeros_like(t)), name
    assert d["conv2.weight"].shape[0] == 8 and d["fc1.weight"].shape[0] == 16


def test_filter_normalize_keeps_each_filter_direction(tiny_model):
    theta = param_dict(tiny_model)
    raw = dr.random_direction(tiny_model, seed=3)
    d = dr.filter_normalize(raw, theta)
    a = raw["conv1.weight"].reshape(4, -1)
    b = d["conv1.weight"].reshape(4, -1)
    cosine = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    torch.testing.assert_close(cosine, torch.ones(4, dtype=torch.float64))


def test_filter_normalize_with_1d_parameters_normalizes_them_as_a_whole(tiny_model):
    theta = param_dict(tiny_model)
    d = dr.filter_normalize(dr.random_direction(tiny_model, seed=3), theta, ignore_1d=False)
    for name, t in theta.items():
        if t.ndim == 1:
            assert float(d[name].norm()) == pytest.approx(float(t.norm()), rel=1e-12)
            assert not torch.equal(d[name], t)  # normalized, not copied


def test_filter_normalize_is_pure_and_accepts_flat(tiny_model):
    theta = param_dict(tiny_model)
    raw = dr.random_direction(tiny_model, seed=4)
    raw_copy = {k: v.clone() for k, v in raw.items()}
    theta_copy = {k: v.clone() for k, v in theta.items()}
    from_dict = dr.filter_normalize(raw, theta)
    from_flat = dr.filter_normalize(flatten(raw), theta)
    for name in theta:
        assert torch.equal(raw[name], raw_copy[name]) and torch.equal(theta[name], theta_copy[name])
        assert torch.equal(from_dict[name], from_flat[name])


def test_filter_normalize_leaves_an_all_zero_filter_at_zero(tiny_model):
    theta = param_dict(tiny_model)
    raw = dr.random_direction(tiny_model, seed=3)
    raw["conv2.weight"][2] = 0.0
    d = dr.filter_normalize(raw, theta)
    assert torch.isfinite(flatten(d)).all()
    assert not d["conv2.weight"][2].any() and d["conv2.weight"][1].any()


def test_random_filter_normalized(tiny_model):
    theta = param_dict(tiny_model)
    expected = dr.filter_normalize(dr.random_direction(tiny_model, seed=5), theta)
    d = dr.random_filter_normalized(tiny_model, seed=5)
    assert all(torch.equal(d[k], expected[k]) for k in theta)


def test_orthogonal_pair(tiny_model):
    theta = param_dict(tiny_model)
    d1, d2 = dr.orthogonal_pair(tiny_model, seed=6)
    f1, f2 = flatten(d1), flatten(d2)
    assert abs(float(f1 @ f2)) <= 1e-12 * float(f1 @ f1)
    assert float(f2.norm()) == pytest.approx(float(f1.norm()), rel=1e-12)
    for name, t in theta.items():
        if t.ndim >= 2:
            torch.testing.assert_close(_filter_norms(d1[name]), _filter_norms(t), atol=1e-12, rtol=1e-12)
            # d2 stays close to filter-normalized (Gram-Schmidt moves it by O(1/sqrt(P)))
            ratio = _filter_norms(d2[name]) / _filter_norms(t)
            assert float((ratio - 1).abs().max()) < 0.5, name
        else:
            assert not d1[name].any() and not d2[name].any()
    again = dr.orthogonal_pair(tiny_model, seed=6)
    other = dr.orthogonal_pair(tiny_model, seed=7)
    assert torch.equal(flatten(again[1]), f2) and not torch.equal(flatten(other[0]), f1)
    # The two directions are independent draws, not one direction and a rotation of it.
    assert not torch.equal(f1, flatten(dr.random_filter_normalized(tiny_model, seed=7)))


def test_eigen_direction_is_a_unit_params_dict(tiny_model):
    theta = param_dict(tiny_model)
    vector = 3.0 * flatten(dr.random_direction(tiny_model, seed=8))
    d = dr.eigen_direction(vector, tiny_model)
    assert list(d) == list(theta) and all(d[k].shape == theta[k].shape for k in theta)
    assert float(flatten(d).norm()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(flatten(d), vector / vector.norm())
    assert dr.eigen_direction(vector.float(), theta)["fc1.weight"].dtype == torch.float64
    with pytest.raises(ValueError, match="non-zero"):
        dr.eigen_direction(torch.zeros_like(vector), theta)


def test_as_params_and_to_flat_round_trip(tiny_model):
    theta = param_dict(tiny_model)
    vector = flatten(dr.random_direction(tiny_model, seed=9))
    as_dict = dr.as_params(vector, theta)
    assert torch.equal(dr.to_flat(as_dict), vector)
    as_dict["conv1.bias"].add_(1.0)  # a copy: the caller's vector is not aliased
    assert torch.equal(dr.to_flat(dr.as_params(vector, tiny_model)), vector)
    with pytest.raises(ValueError, match=r"Expected a flat direction of shape \[2570\], got \(2569,\)"):
        dr.as_params(vector[:-1], theta)
    with pytest.raises(ValueError, match="Expected a direction with names"):
        dr.as_params({"conv1.weight": theta["conv1.weight"]}, theta)
    bad = dict(theta, **{"fc2.bias": torch.zeros(11, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"Expected `fc2.bias` of shape \(10,\), got \(11,\)"):
        dr.as_params(bad, theta)


def test_directions_leave_the_model_unchanged(tiny_model):
    model = tiny_model.train()
    model.conv1.weight.requires_grad_(False)
    snapshot = ModelSnapshot.of(model)
    dr.random_direction(model, seed=0)
    dr.random_filter_normalized(model, seed=0, ignore_1d=False)
    dr.orthogonal_pair(model, seed=0)
    dr.eigen_direction(torch.ones(2570, dtype=torch.float64), model)
    snapshot.assert_unchanged(model)
