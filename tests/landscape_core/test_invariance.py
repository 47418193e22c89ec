"""landscape_core.invariance and landscape_core.invariant: function-preserving rescalings, the audit, and the
rescaling-invariant measures, against exact references (dense Hessians, per-example autograd) on a float64 TinyCNN.

Each invariance test has its counterpart that must fail: the raw measures change under the same rescalings."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape_core import hessian as hs
from landscape_core import invariance, invariant
from landscape_core.config import ANALYSES, IMAGE_FIELDS, AnalysisConfig, HessianConfig, InvarianceConfig, get_preset
from landscape_core.functional import flatten, param_dict
from landscape_core.measure import audit_invariance, measure
from landscape_core.models import TinyCNN
from landscape_core.splits import TrialData

pytestmark = pytest.mark.usefixtures("one_thread")

FACTORS = (0.5, 2.0, 10.0)


def _subset(data, n):
    return data[0][:n], data[1][:n]


def test_every_rescaling_preserves_the_function_and_moves_the_parameters(trained_tiny, learnable_data) -> None:
    before = {k: v.clone() for k, v in trained_tiny.state_dict().items()}
    plan = invariance.rescalings(trained_tiny, FACTORS)
    assert len(plan) == 3 * len(FACTORS)  # conv1/conv2, conv2/fc1, fc1/fc2 at each factor
    x = learnable_data[0]
    for r in plan:
        copy = invariance.rescaled(trained_tiny, r)
        torch.testing.assert_close(copy(x), trained_tiny(x), rtol=1e-12, atol=1e-12)
        moved = flatten(param_dict(copy)) - flatten(param_dict(trained_tiny))
        assert float(moved.abs().max()) > 1e-3, r.label
    for k, v in trained_tiny.state_dict().items():
        assert torch.equal(v, before[k]), k  # the original is untouched


def test_a_combined_rescaling_moves_every_layer_by_the_factor_and_keeps_the_function(
    trained_tiny, learnable_data
) -> None:
    """One copy per factor (issue 24): pairs at a, a^2, a, so conv1 and conv2 are multiplied by a, fc1 and fc2
    divided by it, and the biases multiplied by a, a^2, a; the logits stay the same."""
    plan = invariance.rescalings(trained_tiny, FACTORS, combined=True)
    assert [r.label for r in plan] == [f"all pairs x{a:g}" for a in FACTORS]
    before = param_dict(trained_tiny)
    x = learnable_data[0]
    for a, r in zip(FACTORS, plan, strict=True):
        copy = invariance.rescaled(trained_tiny, r)
        torch.testing.assert_close(copy(x), trained_tiny(x), rtol=1e-11, atol=1e-12)
        after = param_dict(copy)
        want = {"conv1": (a, a), "conv2": (a, a * a), "fc1": (1 / a, a), "fc2": (1 / a, 1.0)}
        for layer, (weight, bias) in want.items():
            torch.testing.assert_close(after[f"{layer}.weight"], before[f"{layer}.weight"] * weight, rtol=1e-12, atol=0)
            torch.testing.assert_close(after[f"{layer}.bias"], before[f"{layer}.bias"] * bias, rtol=1e-12, atol=0)


def test_the_combined_audit_gives_every_measure_the_verdict_of_the_audit_of_every_pair(
    trained_tiny, learnable_data
) -> None:
    """3 copies instead of 9 (issue 24), and the same verdict for every measure of the smoke preset's table."""
    n = learnable_data[0].shape[0]
    config = dataclasses.replace(
        get_preset("smoke").analysis,
        hessian=HessianConfig(subset=n, chunk_size=n, top_k=1, max_iter=60, tol=1e-8, trace_probes=4),
        skip=frozenset({"connectivity", "flatness"}),
    )
    data = TrialData(train=learnable_data, test=learnable_data)
    verdicts = {}
    for combined in (False, True):
        settings = InvarianceConfig(factors=FACTORS, combined=combined)
        audit = audit_invariance(
            trained_tiny, init_params=None, data=data, config=dataclasses.replace(config, invariance=settings)
        )
        assert len(audit.rescalings) == (len(FACTORS) if combined else 3 * len(FACTORS))
        verdicts[combined] = {key: audit.invariant(key) for key in audit.values}
    assert verdicts[True] == verdicts[False]
    assert sum(verdicts[True].values()) >= 3 and not all(verdicts[True].values())  # both kinds are present


def test_capped_puts_every_analysis_on_at_most_that_many_images_and_keeps_the_rest() -> None:
    paper = get_preset("paper").analysis
    capped = paper.capped(256)
    for part in dataclasses.fields(paper):
        before, after = getattr(paper, part.name), getattr(capped, part.name)
        if not dataclasses.is_dataclass(before):
            assert before == after, part.name
            continue
        for f in dataclasses.fields(before):
            value = getattr(after, f.name)
            if f.name in IMAGE_FIELDS:
                assert value == min(getattr(before, f.name) or 256, 256), (part.name, f.name)
            else:
                assert value == getattr(before, f.name), (part.name, f.name)
    assert paper.sharpness.subset == 2048 and capped.sharpness.subset == 256
    assert capped.noise.test_subset == 256  # None (every test image) included


def test_the_audit_refuses_a_rescaling_that_changes_the_function(trained_tiny, learnable_data) -> None:
    class WrongPairs(TinyCNN):
        def rescaling_pairs(self):
            return (("conv1", "fc1"),)  # conv2 sits in between: not a function-preserving pair

    wrong = WrongPairs().double()
    wrong.load_state_dict(trained_tiny.state_dict())
    with pytest.raises(ValueError, match="does not describe a function-preserving rescaling"):
        invariance.audit(wrong, lambda m, init: {"x": 1.0}, factors=(10.0,), inputs=learnable_data[0])


def test_ratio_is_max_over_min_with_its_edge_cases() -> None:
    assert invariance.ratio([2.0, 1.0, 4.0]) == 4.0
    assert invariance.ratio([-2.0, -1.0]) == 2.0
    assert invariance.ratio([0.0, 0.0]) == 1.0
    assert math.isinf(invariance.ratio([0.0, 1.0]))
    assert math.isinf(invariance.ratio([-1.0, 1.0]))
    assert math.isnan(invariance.ratio([1.0, math.nan]))


def test_normalized_hessian_is_diag_w_H_diag_w_of_the_dense_hessian(tiny_model, tiny_data, tiny_dense) -> None:
    w = flatten(param_dict(tiny_model)).abs()
    exact = w[:, None] * tiny_dense.hessian * w[None, :]
    op = invariant.normalized_hessian(hs.HessianOperator(tiny_model, tiny_data))
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), exact @ v, rtol=1e-9, atol=1e-12)
    top = hs.top_eigenvalues(op, k=1, max_iter=200, tol=1e-10, seed=0)
    assert float(top.eigenvalues[0]) == pytest.approx(float(torch.linalg.eigvalsh(exact)[-1]), rel=1e-8)
    trace = hs.hessian_trace(op, n_probes=400, seed=0)
    assert abs(trace.estimate - float(torch.trace(exact))) < 4 * trace.stderr


def test_fisher_rao_norm_is_the_mean_squared_w_dot_per_example_gradient(trained_tiny, learnable_data) -> None:
    data = _subset(learnable_data, 24)
    w = flatten(param_dict(trained_tiny))
    dots = []
    for i in range(24):
        trained_tiny.zero_grad()
        F.cross_entropy(trained_tiny(data[0][i : i + 1]), data[1][i : i + 1]).backward()
        dots.append(float(torch.dot(w, flatten({n: p.grad for n, p in trained_tiny.named_parameters()}))))
    for p in trained_tiny.parameters():
        p.grad = None
    want = sum(d * d for d in dots) / len(dots)
    assert invariant.fisher_rao_norm(trained_tiny, data, chunk_size=5) == pytest.approx(want, rel=1e-10)


def _geometry(model: nn.Module, _init, data) -> dict[str, float]:
    op = hs.HessianOperator(model, data)
    normalized = invariant.normalized_hessian(op)
    return {
        "lambda_max": float(hs.top_eigenvalues(op, k=1, max_iter=100, tol=1e-10).eigenvalues[0]),
        "lambda_max_normalized": float(hs.top_eigenvalues(normalized, k=1, max_iter=100, tol=1e-10).eigenvalues[0]),
        "trace_normalized": hs.hessian_trace(normalized, n_probes=8, seed=1).estimate,
        "fisher_rao": invariant.fisher_rao_norm(model, data),
    }


def test_the_audit_finds_the_invariant_measures_invariant_and_lambda_max_not(trained_tiny, learnable_data) -> None:
    data = _subset(learnable_data, 48)
    audit = invariance.audit(
        trained_tiny, lambda m, init: _geometry(m, init, data), factors=FACTORS, inputs=learnable_data[0]
    )
    ratios = audit.ratios
    for key in ("lambda_max_normalized", "trace_normalized", "fisher_rao"):
        assert ratios[key] == pytest.approx(1.0, abs=1e-7), key
        assert audit.invariant(key)
    assert ratios["lambda_max"] > 10.0  # Dinh et al.: the raw spectrum moves with the parametrization
    assert not audit.invariant("lambda_max")
    assert max(audit.output_change) < 1e-12
    assert len(audit.values["lambda_max"]) == 1 + 3 * len(FACTORS)


def test_the_measure_audit_covers_every_predictor_and_flags_the_raw_ones(trained_tiny, learnable_data) -> None:
    """``measure.audit_invariance`` on the smoke preset's analysis: every measure of the table is audited; the
    invariant ones (normalized Hessian, Fisher-Rao, adaptive sharpness) come out invariant, the raw Hessian,
    eps-sharpness and the weight-noise delta do not."""
    smoke = get_preset("smoke").analysis
    n = learnable_data[0].shape[0]
    config = dataclasses.replace(
        smoke,
        hessian=HessianConfig(subset=n, chunk_size=n, top_k=1, max_iter=60, tol=1e-8, trace_probes=4),
        invariance=InvarianceConfig(factors=(10.0,)),
        skip=frozenset({"connectivity", "flatness"}),
    )
    data = TrialData(train=learnable_data, test=learnable_data)
    audit = audit_invariance(trained_tiny, init_params=None, data=data, config=config)
    ratios = audit.ratios
    for key in ("hessian/lambda_max_normalized", "hessian/trace_normalized", "norm/fisher_rao"):
        assert ratios[key] == pytest.approx(1.0, abs=1e-6), key
    for key in ("hessian/lambda_max", "hessian/trace", "sharpness/eps", "perturb/train_loss_delta/sigma_0.05"):
        assert ratios[key] > 1.5, (key, ratios[key])
    scalars = measure(trained_tiny, init_params=None, data=data, config=config).scalars
    assert {k: v[0] for k, v in audit.values.items()} == pytest.approx({k: scalars[k] for k in audit.values})
    assert set(ANALYSES) >= {"invariance"}
    assert AnalysisConfig().invariance.factors == FACTORS


def test_measure_finds_the_normalized_top_eigenvalue_at_the_presets_tolerance(trained_tiny, learnable_data) -> None:
    """The normalized spectrum is ~w^2 times smaller than the raw one, far below the absolute floor of the Lanczos
    stopping rule (tol * max(|lambda|, 1)): stopping on it returned the Rayleigh quotient of the random start (7.5e-8
    instead of 0.022 on the smoke trial). measure runs all max_iter steps and must land on the exact value."""
    n = learnable_data[0].shape[0]
    config = AnalysisConfig(
        hessian=HessianConfig(subset=n, chunk_size=n, top_k=1, max_iter=30, tol=1e-3),
        skip=frozenset(ANALYSES) - {"hessian"},
    )
    data = TrialData(train=learnable_data, test=learnable_data)
    scalars = measure(trained_tiny, init_params=None, data=data, config=config).scalars
    exact = hs.top_eigenvalues(
        invariant.normalized_hessian(hs.HessianOperator(trained_tiny, learnable_data)), k=1, max_iter=300, tol=1e-12
    )
    assert scalars["hessian/lambda_max_normalized"] == pytest.approx(float(exact.eigenvalues[0]), rel=1e-3)
    assert scalars["hessian/normalized_converged"] == 1.0
