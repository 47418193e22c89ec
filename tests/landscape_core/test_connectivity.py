"""Tests of landscape_core.connectivity: the linear path, its barriers, and weight-matching alignment."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json

import pytest
import torch
from torch import Tensor, nn

from landscape_core.connectivity import (
    InterpolationResult,
    align,
    apply_permutations,
    barrier,
    interpolate,
    weight_matching,
)
from landscape_core.functional import evaluate, flatten, param_dict
from landscape_core.models import SeedCNN, TinyCNN, build_model
from landscape_core.permutations import ParamAxes, PermutationSpec

# ---------------------------------------------------------------------------------------------- local fixtures
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is fastest


def _model(cls: type[nn.Module], seed: int, width: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    return cls(width=width).double()


@pytest.fixture(scope="module")
def data() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 8, 8, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 10, (96,), generator=gen)


def _inputs(cls: type[nn.Module], n: int = 6, dtype: torch.dtype = torch.float64) -> Tensor:
    side = 28 if cls is SeedCNN else 8
    return torch.randn(n, 1, side, side, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(dtype)


def _permuted_params(params: dict[str, Tensor], p1: Tensor, p2: Tensor, p3: Tensor) -> dict[str, Tensor]:
    """An independent reference permutation of SeedCNN-shaped parameters (not connectivity's own code): unit
    ``p[j]`` of each hidden layer moves to position ``j``."""
    fc1 = params["fc1.weight"]
    fc1 = fc1.reshape(fc1.shape[0], p2.numel(), -1)[p3][:, p2].reshape(fc1.shape)
    return {
        "conv1.weight": params["conv1.weight"][p1],
        "conv1.bias": params["conv1.bias"][p1],
        "conv2.weight": params["conv2.weight"][p2][:, p1],
        "conv2.bias": params["conv2.bias"][p2],
        "fc1.weight": fc1,
        "fc1.bias": params["fc1.bias"][p3],
        "fc2.weight": params["fc2.weight"][:, p3],
        "fc2.bias": params["fc2.bias"],
    }


def _permute_by_hand(model: nn.Module, p1: Tensor, p2: Tensor, p3: Tensor) -> nn.Module:
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in _permuted_params(param_dict(model), p1, p2, p3).items():
            out.get_parameter(name).copy_(value)
    return out


def _random_perms(model: nn.Module, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randperm(model.conv1.out_channels, generator=gen),
        torch.randperm(model.conv2.out_channels, generator=gen),
        torch.randperm(model.fc1.out_features, generator=gen),
    )


def _distance(a: nn.Module, b: nn.Module) -> float:
    return float(torch.linalg.vector_norm(flatten(param_dict(a)) - flatten(param_dict(b))))


# ---------------------------------------------------------------------------------------------- interpolation


def test_interpolation_endpoints_are_the_models_own_losses(data) -> None:
    a, b = _model(TinyCNN, 0).train(), _model(TinyCNN, 1)
    result = interpolate(a, b, data, torch.linspace(0, 1, 5), chunk_size=40)
    assert result.alphas == (0.0, 0.25, 0.5, 0.75, 1.0)
    loss_a, acc_a = evaluate(a, data, chunk_size=40)
    loss_b, acc_b = evaluate(b, data, chunk_size=40)
    assert (result.loss[0], result.accuracy[0]) == (loss_a, acc_a)
    assert (result.loss[-1], result.accuracy[-1]) == (loss_b, acc_b)
    assert result.error == tuple(1 - x for x in result.accuracy)
    mid = {k: 0.5 * v + 0.5 * w for (k, v), w in zip(param_dict(a).items(), param_dict(b).values(), strict=True)}
    assert result.loss[2] == pytest.approx(evaluate(a, data, params=mid)[0], rel=1e-12)
    assert json.loads(json.dumps(result.to_dict()))["error"] == list(result.error)


def test_barrier_of_identical_endpoints_is_zero(data) -> None:
    a = _model(TinyCNN, 0)
    result = barrier(interpolate(a, copy.deepcopy(a), data, [0.0, 0.3, 0.5, 0.9, 1.0]))
    assert abs(result.loss_barrier) < 1e-12
    assert result.error_barrier == 0.0
    assert result.peak_loss == pytest.approx(evaluate(a, data)[0], rel=1e-12)


def test_barrier_matches_hand_computation() -> None:
    # L_A = 1, L_B = 3: the linear baseline is 1 + 2a = (1, 1.5, 2, 2.5, 3), so the excess is (0, 1.1, 1, .9, 0):
    # barrier 1.1 at a = .25 (against the endpoints' mean it would be 1.4 at a = .75). Errors (.1, .4, .5, .3, .3):
    # error barrier .5 - (.1 + .3) / 2 = .3.
    path = InterpolationResult(
        alphas=[0.0, 0.25, 0.5, 0.75, 1.0], loss=[1.0, 2.6, 3.0, 3.4, 3.0], accuracy=[0.9, 0.6, 0.5, 0.7, 0.7]
    )
    result = barrier(path)
    assert result.loss_barrier == pytest.approx(1.1)
    assert result.argmax_alpha == 0.25
    assert result.peak_loss == 3.4
    assert result.error_barrier == pytest.approx(0.3)
    # the order of the points does not matter: endpoints are found by value
    order = [3, 1, 4, 0, 2]
    shuffled = InterpolationResult(
        alphas=[path.alphas[i] for i in order],
        loss=[path.loss[i] for i in order],
        accuracy=[path.accuracy[i] for i in order],
    )
    assert barrier(shuffled) == result
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()


def test_barrier_needs_both_endpoints_and_consistent_lengths() -> None:
    with pytest.raises(ValueError, match="include 0"):
        barrier(InterpolationResult(alphas=[0.1, 1.0], loss=[1.0, 1.0], accuracy=[0.5, 0.5]))
    with pytest.raises(ValueError, match="include 1"):
        barrier(InterpolationResult(alphas=[0.0, 0.9], loss=[1.0, 1.0], accuracy=[0.5, 0.5]))
    with pytest.raises(ValueError, match="equal length"):
        InterpolationResult(alphas=[0.0, 1.0], loss=[1.0], accuracy=[0.5, 0.5])


def test_interpolate_rejects_different_architectures(data) -> None:
    with pytest.raises(ValueError, match="same parameter names"):
        interpolate(_model(TinyCNN, 0), TinyCNN(channels=2).double(), data, [0.0, 1.0])


# ---------------------------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("cls", [TinyCNN, SeedCNN])
def test_aligned_model_computes_the_same_function(cls) -> None:
    a, b = _model(cls, 0), _model(cls, 1)
    aligned = align(a, b, seed=0)
    x = _inputs(cls)
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), b(x), rtol=0, atol=1e-10)
    assert aligned is not b
    assert not torch.equal(aligned.fc1.weight, b.fc1.weight)  # it did permute something


@pytest.mark.parametrize(("cls", "width"), [(TinyCNN, 1.0), (SeedCNN, 1.0), (SeedCNN, 0.5), (TinyCNN, 2.0)])
def test_alignment_recovers_a_hidden_permutation_exactly(cls, width) -> None:
    b = _model(cls, 3, width)
    p1, p2, p3 = _random_perms(b, 4)
    permuted = _permute_by_hand(b, p1, p2, p3)
    x = _inputs(cls)
    with torch.no_grad():  # the reference permutation is function-preserving, and really moves weights
        torch.testing.assert_close(permuted(x), b(x), rtol=0, atol=1e-10)
    assert not torch.equal(permuted.conv2.weight, b.conv2.weight)
    recovered = align(b, permuted, seed=1)
    for (name, p), q in zip(recovered.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    perms = weight_matching(b, permuted, seed=1)
    assert list(perms) == ["P_conv1", "P_conv2", "P_fc1"]
    # permuted unit j is b's unit p[j]; position i must take permuted's unit j with p[j] = i, i.e. argsort(p)
    assert torch.equal(perms["P_conv1"], torch.argsort(p1))
    assert torch.equal(perms["P_conv2"], torch.argsort(p2))
    assert torch.equal(perms["P_fc1"], torch.argsort(p3))


@pytest.mark.parametrize("cls", [TinyCNN, SeedCNN])
def test_alignment_brings_two_random_nets_closer(cls) -> None:
    a, b = _model(cls, 5), _model(cls, 6)
    aligned = align(a, b)
    assert _distance(a, aligned) < _distance(a, b) - 1e-3
    # the weight norm is permutation-invariant
    torch.testing.assert_close(
        torch.linalg.vector_norm(flatten(param_dict(aligned))), torch.linalg.vector_norm(flatten(param_dict(b)))
    )
    assert _distance(a, align(a, b)) == _distance(a, aligned)  # deterministic


@pytest.mark.parametrize(("seed", "bias_scale"), [(0, 1.0), (1, 1.0), (2, 1.0), (3, 20.0), (4, 20.0)])
def test_alignment_is_a_coordinatewise_optimum_of_the_distance(seed, bias_scale) -> None:
    # Exhaustively over every single-layer permutation (2! x 4! x 5! on a narrow TinyCNN), holding the other two
    # at weight matching's answer: none brings B closer to A. A mis-specified matching cost (a missing or
    # wrongly permuted neighbour term, the wrong view at the flatten) fails this.
    torch.manual_seed(10 + seed)
    a, b = TinyCNN(channels=2, hidden=5).double(), TinyCNN(channels=2, hidden=5).double()
    with torch.no_grad():  # large biases make the bias terms of the matching cost matter
        for model in (a, b):
            for layer in (model.conv1, model.conv2, model.fc1):
                layer.bias.mul_(bias_scale)
    theta_a, params_b = flatten(param_dict(a)), param_dict(b)
    perms = weight_matching(a, b, seed=seed)
    found = [perms["P_conv1"], perms["P_conv2"], perms["P_fc1"]]

    def distance(ps: list[Tensor]) -> float:
        return float(torch.linalg.vector_norm(theta_a - flatten(_permuted_params(params_b, *ps))))

    best = distance(found)
    assert best == pytest.approx(_distance(a, align(a, b, seed=seed)), rel=1e-12)
    assert best < _distance(a, b)
    for layer, size in enumerate((2, 4, 5)):
        for candidate in itertools.permutations(range(size)):
            trial = list(found)
            trial[layer] = torch.tensor(candidate)
            assert distance(trial) >= best - 1e-12


def test_alignment_leaves_both_models_unchanged() -> None:
    a, b = _model(TinyCNN, 0).train(), _model(TinyCNN, 1).eval()
    b.conv1.weight.requires_grad_(False)
    before_a = {k: v.clone() for k, v in a.state_dict().items()}
    before_b = {k: v.clone() for k, v in b.state_dict().items()}
    aligned = align(a, b)
    interpolate(a, aligned, (_inputs(TinyCNN), torch.zeros(6, dtype=torch.long)), [0.0, 0.5, 1.0])
    assert all(torch.equal(v, before_a[k]) for k, v in a.state_dict().items())
    assert all(torch.equal(v, before_b[k]) for k, v in b.state_dict().items())
    assert all(m.training for m in a.modules()) and not any(m.training for m in b.modules())
    assert not b.conv1.weight.requires_grad and b.conv2.weight.requires_grad
    assert not aligned.conv1.weight.requires_grad and not aligned.training  # a copy of B, flags included
    assert aligned.conv1.weight.data_ptr() != b.conv1.weight.data_ptr()


def test_alignment_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        align(_model(TinyCNN, 0), TinyCNN(hidden=8).double())
    with pytest.raises(ValueError, match=r"Expected parameter 'conv1.weight' of the same shape"):
        weight_matching(_model(SeedCNN, 0), _model(SeedCNN, 1, width=0.5))


# ---------------------------------------------------------------------------------------------- permutation specs

# weight_matching(SeedCNN pair) as computed by the implementation before the permutation specs (a hard-coded chain
# conv1, conv2, fc1, fc2 with the flatten guessed from fan-in): models torch.manual_seed(a); SeedCNN().double() and
# the same for b, sha256 of json.dumps([conv1, conv2, fc1 perms as lists]), first 16 hex digits.
PREVIOUS_RESULTS = {
    (0, 1, 0): ([11, 2, 14, 3, 9, 1, 10, 8, 12, 7, 5, 15, 0, 4, 13, 6], "9c13adaaecf59c4d"),
    (5, 6, 3): ([7, 8, 11, 1, 3, 10, 0, 4, 14, 9, 5, 2, 6, 13, 12, 15], "a33dcbba10d78ecb"),
}


@pytest.mark.parametrize(("seed_a", "seed_b", "seed"), list(PREVIOUS_RESULTS))
def test_generic_weight_matching_equals_the_previous_seed_cnn_implementation(seed_a, seed_b, seed) -> None:
    perms = weight_matching(_model(SeedCNN, seed_a), _model(SeedCNN, seed_b), seed=seed)
    lists = [perms[name].tolist() for name in ("P_conv1", "P_conv2", "P_fc1")]
    conv1, digest = PREVIOUS_RESULTS[seed_a, seed_b, seed]
    assert lists[0] == conv1
    assert hashlib.sha256(json.dumps(lists).encode()).hexdigest()[:16] == digest
    assert lists[2] != list(range(128))  # the descent moved fc1's units: the digest is not that of identities


@pytest.mark.parametrize("width", [1.0, 0.5, 2.0])
def test_apply_permutations_preserves_the_function_and_the_layout(width) -> None:
    torch.manual_seed(11)
    model = build_model("seed_cnn", width=width)  # float32, channels_last conv weights on a CPU
    p1, p2, p3 = _random_perms(model, 12)
    perms = {"P_conv1": p1, "P_conv2": p2, "P_fc1": p3}
    permuted = apply_permutations(model, perms)
    x = _inputs(SeedCNN, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), model(x), rtol=0, atol=1e-5)
    # the independent reference: unit p[j] of each hidden layer moves to position j, nothing else moves
    expected = _permuted_params(param_dict(model), p1, p2, p3)
    for name, p in permuted.named_parameters():
        assert torch.equal(p, expected[name]), name
    assert not torch.equal(permuted.fc1.weight, model.fc1.weight)
    assert permuted.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    # a permutation left out is the identity
    only_fc1 = apply_permutations(model, {"P_fc1": p3})
    identity = torch.arange(p1.numel()), torch.arange(p2.numel())
    assert all(
        torch.equal(p, _permuted_params(param_dict(model), *identity, p3)[n]) for n, p in only_fc1.named_parameters()
    )
    with pytest.raises(ValueError, match=r"Expected permutations among \['P_conv1', 'P_conv2', 'P_fc1'\]"):
        apply_permutations(model, {"conv1": p1})


class _MLP(nn.Module):
    """Two linear layers, no ``permutation_spec``: connectivity gets the spec as an argument."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b = nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


MLP_SPEC = PermutationSpec(
    {"a.weight": ParamAxes(("H", None)), "a.bias": ParamAxes(("H",)), "b.weight": ParamAxes((None, "H"))}
)


def test_weight_matching_is_generic_over_a_spec_passed_in() -> None:
    torch.manual_seed(4)
    model = _MLP().double()
    with pytest.raises(ValueError, match=r"Expected a model with a `permutation_spec\(\)` method or a `spec`"):
        weight_matching(model, model)
    p = torch.randperm(7, generator=torch.Generator().manual_seed(5))
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        permuted.a.weight.copy_(model.a.weight[p])
        permuted.a.bias.copy_(model.a.bias[p])
        permuted.b.weight.copy_(model.b.weight[:, p])
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), model(x), rtol=0, atol=1e-12)
    perms = weight_matching(model, permuted, spec=MLP_SPEC)
    assert list(perms) == ["H"] and torch.equal(perms["H"], torch.argsort(p))
    recovered = align(model, permuted, spec=MLP_SPEC)
    assert all(torch.equal(a, b) for a, b in zip(recovered.parameters(), model.parameters(), strict=True))
