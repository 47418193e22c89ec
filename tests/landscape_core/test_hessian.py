"""landscape_core.hessian against closed forms (quadratics with known spectra) and a dense TinyCNN Hessian."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

from landscape_core import hessian as hs
from landscape_core import rng
from landscape_core.functional import flatten, param_dict, unflatten
from tests.landscape_core.conftest import (
    GAPPED,
    NEAR_DEGENERATE,
    ModelSnapshot,
    dense_hessian,
    dense_hessian_tiny,
    make_quadratic,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _random(p: int, m: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*((m,) if m else ()), p, generator=g, dtype=torch.float64)


def _op(q, **kwargs) -> hs.HessianOperator:
    """The Hessian operator of a quadratic problem (its own loss)."""
    return hs.HessianOperator(q.model, q.data, loss_fn=q.loss_fn, **kwargs)


class DenseOperator:
    """A symmetric matrix as a LinearOperator: no model, no loss, not a Hessian."""

    def __init__(self, A: torch.Tensor) -> None:
        self.A = A
        self.size, self.dtype, self.device = A.shape[0], A.dtype, A.device
        self.n_hvp = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.n_hvp += 1
        return self.A @ v

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.n_hvp += V.shape[0]
        return V @ self.A  # row i is A V[i], A symmetric


def _dense_symmetric(p: int, eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    A = (Q * eigenvalues) @ Q.T
    return 0.5 * (A + A.T)


# ----------------------------------------------------------------------------------------------------------------------
# HVP
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_hvp_of_quadratic_is_exact(quadratic, chunk_size):
    v = _random(quadratic.size)
    Hv = hs.hvp(quadratic.model, quadratic.data, v, chunk_size=chunk_size, loss_fn=quadratic.loss_fn)
    # A chunked sum (instead of the weighted mean) would be off by a factor of up to 50 here.
    torch.testing.assert_close(Hv, quadratic.A @ v, atol=1e-10, rtol=0)


def test_hvp_batch_of_quadratic_is_exact(quadratic):
    V = _random(quadratic.size, 5)
    HV = hs.hvp_batch(quadratic.model, quadratic.data, V, chunk_size=7, loss_fn=quadratic.loss_fn)
    torch.testing.assert_close(HV, V @ quadratic.A, atol=1e-10, rtol=0)


def test_hvp_accepts_float32_vector_and_returns_model_dtype(quadratic):
    v = _random(quadratic.size).float()
    Hv = hs.hvp(quadratic.model, quadratic.data, v, loss_fn=quadratic.loss_fn)
    assert Hv.dtype == torch.float64
    torch.testing.assert_close(Hv, quadratic.A @ v.double(), atol=1e-10, rtol=0)


def test_hvp_matches_dense_hessian(tiny_model, tiny_data, tiny_dense):
    v = _random(tiny_dense.hessian.shape[0], seed=3)
    torch.testing.assert_close(hs.hvp(tiny_model, tiny_data, v), tiny_dense.hessian @ v, atol=1e-10, rtol=0)


def test_chunked_hvp_equals_single_chunk(tiny_model, tiny_data):
    n = tiny_data[0].shape[0]
    v = _random(flatten(param_dict(tiny_model)).numel(), seed=4)
    reference = hs.hvp(tiny_model, tiny_data, v, chunk_size=n)
    assert reference.abs().max() > 1e-3  # not trivially zero
    for chunk_size in (1, 7, 64, 1024):
        chunked = hs.hvp(tiny_model, tiny_data, v, chunk_size=chunk_size)
        torch.testing.assert_close(chunked, reference, atol=1e-10, rtol=0)


def test_hvp_batch_equals_stacked_hvp(tiny_model, tiny_data):
    V = _random(flatten(param_dict(tiny_model)).numel(), 4, seed=5)
    stacked = torch.stack([hs.hvp(tiny_model, tiny_data, v, chunk_size=100) for v in V])
    vmapped = hs.hvp_batch(tiny_model, tiny_data, V, chunk_size=100, vectorize=True)
    torch.testing.assert_close(vmapped, stacked, atol=1e-10, rtol=0)
    looped = hs.hvp_batch(tiny_model, tiny_data, V, chunk_size=100, vectorize=False, block_size=3)
    torch.testing.assert_close(looped, stacked, atol=1e-10, rtol=0)


def test_matmat_falls_back_to_a_loop_when_vmap_fails(quadratic, monkeypatch):
    def broken(self, V):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(hs.HessianOperator, "_matmat_vmap", broken)
    op = hs.HessianOperator(quadratic.model, quadratic.data, loss_fn=quadratic.loss_fn, vectorize=True)
    V = _random(quadratic.size, 3)
    with pytest.warns(RuntimeWarning, match="falling back to a loop"):
        HV = op.matmat(V)
    torch.testing.assert_close(HV, V @ quadratic.A, atol=1e-10, rtol=0)
    assert op.n_hvp == 3 and not op.vectorize


def test_operator_counts_hvps(quadratic):
    op = hs.HessianOperator(quadratic.model, quadratic.data, loss_fn=quadratic.loss_fn)
    op.matvec(_random(quadratic.size))
    op.matmat(_random(quadratic.size, 4), block_size=3)
    assert op.n_hvp == 5


def test_hvp_rejects_wrong_size(quadratic):
    with pytest.raises(ValueError, match=r"shape \[P\] with P = 40"):
        hs.hvp(quadratic.model, quadratic.data, torch.zeros(39, dtype=torch.float64), loss_fn=quadratic.loss_fn)


# ----------------------------------------------------------------------------------------------------------------------
# Operators and probes
# ----------------------------------------------------------------------------------------------------------------------


def test_hessian_operator_is_a_linear_operator_and_models_are_refused(quadratic):
    assert isinstance(_op(quadratic), hs.LinearOperator)
    assert isinstance(DenseOperator(torch.eye(3, dtype=torch.float64)), hs.LinearOperator)
    for call in (
        lambda: hs.top_eigenvalues(quadratic.model, k=1),
        lambda: hs.hessian_trace(quadratic.model),
        lambda: hs.spectral_density(quadratic.model, n_probes=1, n_steps=2),
    ):
        with pytest.raises(TypeError, match=r"Expected `op` a LinearOperator such as HessianOperator"):
            call()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_random_vectors_follow_the_seeded_generator_rule(dtype):
    # Drawn in float64 on the CPU from Generator().manual_seed(seed), then cast: the same numbers for every dtype.
    op = DenseOperator(torch.eye(7, dtype=dtype))
    gaussian = hs.random_vectors(op, 3, rng.generator(5))
    expected = torch.randn(3, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    assert gaussian.dtype == dtype and torch.equal(gaussian, expected)
    signs = hs.random_vectors(op, 4, rng.generator(6), kind="rademacher")
    bits = torch.randint(0, 2, (4, 7), generator=torch.Generator().manual_seed(6), dtype=torch.int8)
    assert torch.equal(signs, (bits.double() * 2 - 1).to(dtype))
    with pytest.raises(ValueError, match="Expected `kind` in"):
        hs.random_vectors(op, 1, rng.generator(0), kind="uniform")


def test_top_eigenvalues_trace_and_density_of_a_dense_non_hessian_operator():
    p = 30
    A = _dense_symmetric(p, torch.linspace(-4.0, 9.0, p, dtype=torch.float64) ** 3 / 50, seed=3)
    exact = torch.linalg.eigvalsh(A)  # ascending
    op = DenseOperator(A)
    top = hs.top_eigenvalues(op, k=4, tol=1e-10, max_iter=p)
    torch.testing.assert_close(top.eigenvalues, exact[-4:].flip(0), atol=1e-9, rtol=0)
    torch.testing.assert_close(top.eigenvectors @ A, top.eigenvalues[:, None] * top.eigenvectors, atol=1e-8, rtol=0)
    assert top.converged and top.n_hvp == op.n_hvp <= p
    power = hs.top_eigenvalues(op, k=1, method="power", tol=1e-12, max_iter=2000)
    assert float(power.eigenvalues[0]) == pytest.approx(float(exact[-1]), abs=1e-6)
    # Hutchinson's samples are z^T A z for the rule's Rademacher probes, exactly.
    trace = hs.hessian_trace(op, n_probes=9, seed=4, block_size=4)
    Z = rng.rademacher((9, p), rng.generator(4))
    torch.testing.assert_close(trace.samples, ((Z @ A) * Z).sum(1), atol=1e-12, rtol=0)
    # P Lanczos steps of SLQ recover the whole spectrum.
    density = hs.spectral_density(op, n_probes=2, n_steps=p, seed=5)
    for row in density.nodes:
        torch.testing.assert_close(row, exact, atol=1e-8, rtol=0)


def test_one_operator_reused_across_estimators_gives_the_numbers_of_fresh_ones(tiny_model, tiny_data):
    data = (tiny_data[0][:48], tiny_data[1][:48])

    def run(make):
        return (
            hs.top_eigenvalues(make(), k=2, max_iter=6, seed=1),
            hs.hessian_trace(make(), n_probes=5, seed=2, block_size=3),
            hs.spectral_density(make(), n_probes=2, n_steps=3, seed=3),
            hs.top_eigenvalues(make(), k=1, method="power", max_iter=4, seed=4),
        )

    shared = hs.HessianOperator(tiny_model, data, chunk_size=20)
    reused = run(lambda: shared)
    fresh = run(lambda: hs.HessianOperator(tiny_model, data, chunk_size=20))
    for a, b in zip(reused, fresh, strict=True):
        assert a.n_hvp == b.n_hvp > 0  # each result counts its own HVPs, not the operator's running total
        for name in ("eigenvalues", "eigenvectors", "residuals", "samples", "nodes", "weights"):
            if hasattr(a, name):
                assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert [r.n_hvp for r in reused] == [6, 5, 6, 4]
    assert shared.n_hvp == sum(r.n_hvp for r in reused)


# ----------------------------------------------------------------------------------------------------------------------
# Top eigenvalues
# ----------------------------------------------------------------------------------------------------------------------


def _assert_eigenvectors(result, quadratic, k, atol):
    for i in range(k):
        overlap = abs(float(result.eigenvectors[i] @ quadratic.eigenvectors[:, i]))
        assert overlap == pytest.approx(1.0, abs=atol)


def test_lanczos_gives_exact_top_k_of_quadratic(quadratic):
    result = hs.top_eigenvalues(_op(quadratic, chunk_size=7), k=3, tol=1e-8)
    torch.testing.assert_close(result.eigenvalues, quadratic.eigenvalues[:3], atol=1e-9, rtol=0)
    assert result.eigenvalues.tolist() == sorted(result.eigenvalues.tolist(), reverse=True)
    _assert_eigenvectors(result, quadratic, 3, 1e-8)
    torch.testing.assert_close(torch.linalg.vector_norm(result.eigenvectors, dim=1), torch.ones(3, dtype=torch.float64))
    # Residuals are true ||Hv - lambda v||: recompute them with the closed form.
    V, lam = result.eigenvectors, result.eigenvalues
    true = torch.linalg.vector_norm(V @ quadratic.A - lam[:, None] * V, dim=1)
    torch.testing.assert_close(result.residuals, true, atol=1e-11, rtol=0)
    assert result.converged and result.converged_mask.all()
    assert result.n_hvp < quadratic.size


def test_lanczos_is_largest_algebraic_not_largest_magnitude(negative_quadratic):
    result = hs.top_eigenvalues(_op(negative_quadratic), k=3, tol=1e-8)
    expected = torch.tensor([5.0, 4.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(result.eigenvalues, expected, atol=1e-9, rtol=0)


def test_power_iteration_gives_top_k_of_gapped_quadratic(gapped_quadratic):
    q = gapped_quadratic
    result = hs.top_eigenvalues(_op(q), k=2, method="power", max_iter=500, tol=1e-12)
    torch.testing.assert_close(result.eigenvalues, q.eigenvalues[:2], atol=1e-8, rtol=0)
    _assert_eigenvectors(result, q, 2, 1e-6)
    assert result.method == "power" and 2 < result.n_hvp <= 1000


def test_lanczos_needs_far_fewer_hvps_than_power_on_near_degenerate_pair(quadratic):
    kwargs = dict(k=1, tol=1e-8, max_iter=2000)
    op = _op(quadratic)
    lanczos = hs.top_eigenvalues(op, method="lanczos", **kwargs)
    power = hs.top_eigenvalues(op, method="power", **kwargs)
    exact = float(quadratic.eigenvalues[0])
    assert float(lanczos.eigenvalues[0]) == pytest.approx(exact, abs=1e-9)
    assert float(power.eigenvalues[0]) == pytest.approx(exact, abs=1e-4)
    # Power iteration's error after its stop rule is still far above Lanczos', with many more HVPs.
    assert abs(float(power.eigenvalues[0]) - exact) > 100 * abs(float(lanczos.eigenvalues[0]) - exact)
    assert 5 * lanczos.n_hvp < power.n_hvp
    assert op.n_hvp == lanczos.n_hvp + power.n_hvp


def test_lanczos_matches_dense_tiny_cnn(tiny_model, tiny_data, tiny_dense):
    result = hs.top_eigenvalues(hs.HessianOperator(tiny_model, tiny_data, chunk_size=100), k=3, max_iter=100, tol=1e-6)
    exact = tiny_dense.eigenvalues[-3:].flip(0)
    assert ((result.eigenvalues - exact).abs() / exact.abs()).max() < 1e-4
    assert result.converged
    assert (result.residuals <= 1e-6 * result.eigenvalues.abs().clamp(min=1)).all()
    # The returned vectors are eigenvectors of the dense Hessian.
    dense_residuals = torch.linalg.vector_norm(
        result.eigenvectors @ tiny_dense.hessian - result.eigenvalues[:, None] * result.eigenvectors, dim=1
    )
    torch.testing.assert_close(dense_residuals, result.residuals, atol=1e-9, rtol=0)


def test_multilevel_lanczos_converges_to_the_full_operators_eigenvalues(tiny_model, tiny_data, tiny_dense):
    """Issue 24: the coarse level (the first 32 of 256 examples) only supplies the start; the answer is the full
    Hessian's to the same residual test, and a run that must be a random-start probe keeps its random start."""
    op = hs.HessianOperator(tiny_model, tiny_data, chunk_size=100)
    coarse_top = float(torch.linalg.eigvalsh(dense_hessian_tiny(tiny_model, _head(tiny_data, 32)))[-1])
    result = hs.top_eigenvalues(op, k=2, max_iter=100, tol=1e-6, coarse=32)
    exact = tiny_dense.eigenvalues[-2:].flip(0)
    assert ((result.eigenvalues - exact).abs() / exact.abs()).max() < 1e-4
    assert abs(coarse_top - float(exact[0])) / float(exact[0]) > 1e-2  # the coarse level alone would be wrong
    assert result.converged and result.coarse_hvp > 0 and not result.krylov.random_start
    dense_residuals = torch.linalg.vector_norm(
        result.eigenvectors @ tiny_dense.hessian - result.eigenvalues[:, None] * result.eigenvectors, dim=1
    )
    torch.testing.assert_close(dense_residuals, result.residuals, atol=1e-9, rtol=0)
    for kept in (dict(coarse=None), dict(coarse=32, min_iter=5), dict(coarse=32, v0=result.eigenvectors[0])):
        single = hs.top_eigenvalues(op, k=1, max_iter=100, tol=1e-6, **kept)
        assert single.coarse_hvp == 0, kept
    assert hs.top_eigenvalues(op, k=1, tol=1e-6, coarse=32, min_iter=5).krylov.random_start
    assert op.coarse(65) is None  # fewer than 4x the coarse level's examples: no coarse level


def _head(data, n):
    return data[0][:n], data[1][:n]


def test_power_iteration_matches_dense_tiny_cnn(tiny_model, tiny_data, tiny_dense):
    op = hs.HessianOperator(tiny_model, tiny_data)
    result = hs.top_eigenvalues(op, k=1, method="power", max_iter=100, tol=1e-3)  # PyHessian's
    exact = float(tiny_dense.eigenvalues[-1])
    assert abs(float(result.eigenvalues[0]) - exact) / abs(exact) < 1e-2


def test_warm_start_with_the_top_eigenvector(quadratic):
    top = quadratic.eigenvectors[:, 0]
    result = hs.top_eigenvalues(_op(quadratic), k=1, tol=1e-8, v0=top)
    assert result.n_hvp == 1
    assert float(result.eigenvalues[0]) == pytest.approx(19.13, abs=1e-10)
    # As a parameter dict, and with k > 1: an invariant start restarts in the orthogonal complement.
    as_dict = unflatten(top, param_dict(quadratic.model))
    result = hs.top_eigenvalues(_op(quadratic), k=3, tol=1e-8, v0=as_dict)
    torch.testing.assert_close(result.eigenvalues, quadratic.eigenvalues[:3], atol=1e-9, rtol=0)
    # An operator without parameter names takes flat start vectors only.
    with pytest.raises(ValueError, match=r"Expected `v0` a flat vector \[P\]"):
        hs.top_eigenvalues(DenseOperator(quadratic.A), k=1, v0=as_dict)


def test_max_iter_bounds_lanczos_and_reports_not_converged(tiny_model, tiny_data):
    result = hs.top_eigenvalues(hs.HessianOperator(tiny_model, tiny_data), k=2, max_iter=3, tol=1e-10)
    assert result.n_hvp == 3
    assert not result.converged


def test_eigen_bad_arguments(quadratic):
    op = _op(quadratic)
    with pytest.raises(ValueError, match=r"^Expected `k` >= 1, got 0$"):
        hs.top_eigenvalues(op, k=0)
    with pytest.raises(ValueError, match="Expected `method` in"):
        hs.top_eigenvalues(op, method="arnoldi")
    with pytest.raises(ValueError, match="Expected `k` <= 40"):
        hs.top_eigenvalues(op, k=41)
    with pytest.raises(ValueError, match="Expected `max_iter` >= `k`"):
        hs.top_eigenvalues(op, k=3, max_iter=2)
    with pytest.raises(ValueError, match=r"^Expected `max_iter` >= 1, got 0$"):
        hs.top_eigenvalues(op, method="power", max_iter=0)
    with pytest.raises(ValueError, match="Expected `tol` > 0"):
        hs.top_eigenvalues(op, tol=0.0)
    with pytest.raises(ValueError, match="Expected `v0` a non-zero"):
        hs.top_eigenvalues(op, v0=torch.zeros(40, dtype=torch.float64))
    assert op.n_hvp == 0  # every check comes before any HVP


# ----------------------------------------------------------------------------------------------------------------------
# Trace
# ----------------------------------------------------------------------------------------------------------------------


def test_trace_of_quadratic_within_three_stderr(quadratic):
    result = hs.hessian_trace(_op(quadratic, vectorize=True), n_probes=50, block_size=16)
    exact = float(torch.trace(quadratic.A))
    assert result.stderr > 0
    assert abs(result.estimate - exact) <= 3 * result.stderr
    assert result.n_hvp == 50 and result.samples.shape == (50,)
    # The per-probe values are exact quadratic forms of Rademacher vectors.
    assert result.stderr == pytest.approx(float(result.samples.std()) / math.sqrt(50))
    looped = hs.hessian_trace(_op(quadratic, vectorize=False), n_probes=50)
    torch.testing.assert_close(looped.samples, result.samples, atol=1e-10, rtol=0)  # same probes, block-independent


def test_trace_matches_dense_tiny_cnn(tiny_model, tiny_data, tiny_dense):
    result = hs.hessian_trace(hs.HessianOperator(tiny_model, tiny_data), n_probes=40, block_size=20)
    assert 0 < result.stderr < 0.25 * abs(tiny_dense.trace)  # informative: a 2x error would fail
    assert abs(result.estimate - tiny_dense.trace) <= 3 * result.stderr


def test_trace_single_probe_has_nan_stderr(quadratic):
    result = hs.hessian_trace(_op(quadratic), n_probes=1)
    assert math.isnan(result.stderr) and math.isfinite(result.estimate)


def test_same_seed_same_numbers_different_seed_different_probes(quadratic):
    op = _op(quadratic)
    a = hs.hessian_trace(op, n_probes=6, seed=3)
    b = hs.hessian_trace(op, n_probes=6, seed=3)
    c = hs.hessian_trace(op, n_probes=6, seed=4)
    assert torch.equal(a.samples, b.samples) and a.estimate == b.estimate
    assert not torch.equal(a.samples, c.samples)
    e1 = hs.top_eigenvalues(op, k=2, max_iter=5, seed=3)
    e2 = hs.top_eigenvalues(op, k=2, max_iter=5, seed=3)
    e3 = hs.top_eigenvalues(op, k=2, max_iter=5, seed=4)
    assert torch.equal(e1.eigenvalues, e2.eigenvalues) and torch.equal(e1.eigenvectors, e2.eigenvectors)
    assert not torch.equal(e1.eigenvalues, e3.eigenvalues)  # 5 steps are not enough to agree to the last bit
    d1 = hs.spectral_density(op, n_probes=2, n_steps=4, seed=3)
    d2 = hs.spectral_density(op, n_probes=2, n_steps=4, seed=3)
    d3 = hs.spectral_density(op, n_probes=2, n_steps=4, seed=4)
    assert torch.equal(d1.nodes, d2.nodes) and torch.equal(d1.weights, d2.weights)
    assert not torch.equal(d1.nodes, d3.nodes)


# ----------------------------------------------------------------------------------------------------------------------
# Spectral density
# ----------------------------------------------------------------------------------------------------------------------


def test_slq_on_quadratic(quadratic):
    result = hs.spectral_density(_op(quadratic), n_probes=30, n_steps=8)
    assert result.nodes.shape == result.weights.shape == (30, 8)
    assert result.n_hvp == 30 * 8
    torch.testing.assert_close(result.weights.sum(dim=1), torch.ones(30, dtype=torch.float64))
    lo, hi = float(quadratic.eigenvalues.min()), float(quadratic.eigenvalues.max())
    assert (result.nodes >= lo - 1e-9).all() and (result.nodes <= hi + 1e-9).all()
    # Nodes and weights are each probe's Gauss quadrature: exact for v^T A^j v up to j = 2 n_steps - 1, with v the
    # rule's normalized Rademacher probe (seed 0). Wrong weights (e.g. the last components of the Ritz vectors) or
    # other probes fail this.
    V = rng.rademacher((30, quadratic.size), rng.generator(0)) / math.sqrt(quadratic.size)
    power = V
    for j in range(1, 6):
        power = power @ quadratic.A  # rows v^T A^j
        torch.testing.assert_close(result.moment(j), (power * V).sum(1), rtol=1e-9, atol=1e-9)
    # sum_j w_j theta_j = v^T A v for the normalized probe, so its mean over probes estimates trace / P.
    means = result.moment(1)
    exact = float(torch.trace(quadratic.A)) / quadratic.size
    assert abs(float(means.mean()) - exact) <= 3 * float(means.std()) / math.sqrt(30)


def test_slq_with_p_steps_recovers_the_whole_spectrum():
    q = make_quadratic(NEAR_DEGENERATE, seed=5)
    result = hs.spectral_density(_op(q), n_probes=2, n_steps=q.size)
    for p in range(2):
        torch.testing.assert_close(result.nodes[p], q.eigenvalues.flip(0), atol=1e-8, rtol=0)


def test_density_is_a_smoothed_mixture(quadratic):
    result = hs.spectral_density(_op(quadratic), n_probes=3, n_steps=6)
    grid = torch.linspace(-20, 30, 5001, dtype=torch.float64)
    density = result.density(grid, sigma=0.5)
    assert density.shape == (5001,)
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-6)
    # Against the formula, mean_p sum_j w_pj N(x; node_pj, sigma^2), on the whole grid (scipy's normal pdf).
    pdf = scipy.stats.norm.pdf(grid.numpy()[None, None, :], result.nodes.numpy()[:, :, None], 0.5)
    expected = (result.weights.numpy()[:, :, None] * pdf).sum(1).mean(0)
    torch.testing.assert_close(density, torch.from_numpy(expected), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="Expected `sigma` > 0"):
        result.density(grid, 0.0)


def test_slq_nodes_within_dense_spectrum_tiny_cnn(tiny_model, tiny_data, tiny_dense):
    result = hs.spectral_density(hs.HessianOperator(tiny_model, tiny_data), n_probes=2, n_steps=10, seed=1)
    lo, hi = float(tiny_dense.eigenvalues[0]), float(tiny_dense.eigenvalues[-1])
    assert (result.nodes >= lo - 1e-9).all() and (result.nodes <= hi + 1e-9).all()
    assert float(result.nodes.max()) == pytest.approx(hi, rel=1e-2)  # extreme Ritz values converge first


def test_slq_bad_arguments(quadratic):
    op = _op(quadratic)
    with pytest.raises(ValueError, match="Expected `n_steps` <= 40"):
        hs.spectral_density(op, n_probes=1, n_steps=41)
    with pytest.raises(ValueError, match="Expected `n_probes` >= 1, got 0"):
        hs.spectral_density(op, n_probes=0, n_steps=4)
    with pytest.raises(ValueError, match="Expected `n_probes` >= 1, got 0"):
        hs.hessian_trace(op, n_probes=0)
    with pytest.raises(ValueError, match="Expected `block_size` >= 1, got 0"):
        hs.hessian_trace(op, block_size=0)


# ----------------------------------------------------------------------------------------------------------------------
# Purity
# ----------------------------------------------------------------------------------------------------------------------


def test_model_is_unchanged_by_every_function(tiny_model, tiny_data):
    model = tiny_model.train()
    model.fc2.bias.requires_grad_(False)
    snapshot = ModelSnapshot.of(model)
    data = (tiny_data[0][:32], tiny_data[1][:32])
    p = flatten(param_dict(model)).numel()
    hs.hvp(model, data, _random(p), chunk_size=10)
    hs.hvp_batch(model, data, _random(p, 2), chunk_size=10)
    op = hs.HessianOperator(model, data, chunk_size=10)
    hs.top_eigenvalues(op, k=2, max_iter=4)
    hs.top_eigenvalues(op, k=1, method="power", max_iter=3)
    hs.hessian_trace(op, n_probes=2)
    hs.spectral_density(op, n_probes=1, n_steps=3)
    snapshot.assert_unchanged(model)
    assert model.training and all(m.training for m in model.modules())


def test_block_dense_reference_equals_torch_func_hessian(tiny_model, tiny_data):
    """The test's own TinyCNN reference (assembled by blocks) against a plain torch.func.hessian, on 4 examples."""
    few = (tiny_data[0][:4], tiny_data[1][:4])
    torch.testing.assert_close(dense_hessian_tiny(tiny_model, few), dense_hessian(tiny_model, few), atol=1e-12, rtol=0)


def test_everything_is_evaluated_in_eval_mode():
    q = make_quadratic(GAPPED, seed=1, train_sensitive=True)  # its loss triples in train mode
    args, kw = (q.model, q.data), dict(loss_fn=q.loss_fn)
    v = _random(q.size)
    torch.testing.assert_close(hs.hvp(*args, v, **kw), q.A @ v, atol=1e-10, rtol=0)
    torch.testing.assert_close(hs.hvp_batch(*args, v[None], **kw)[0], q.A @ v, atol=1e-10, rtol=0)
    assert float(hs.top_eigenvalues(_op(q), k=1, tol=1e-8).eigenvalues[0]) == pytest.approx(10.0, abs=1e-8)
    slq = hs.spectral_density(_op(q), n_probes=1, n_steps=q.size)
    torch.testing.assert_close(slq.nodes[0], q.eigenvalues.flip(0), atol=1e-8, rtol=0)
    assert q.model.training


# ----------------------------------------------------------------------------------------------------------------------
# Issue 16: the Lanczos run's Krylov basis deflates the trace and seeds the density
# ----------------------------------------------------------------------------------------------------------------------


def _head_heavy(p: int = 40, seed: int = 8) -> torch.Tensor:
    """A symmetric matrix whose spectrum has a large head (like a trained network's Hessian) and a small bulk."""
    spectrum = torch.cat([torch.tensor([40.0, 25.0, 12.0, 6.0], dtype=torch.float64), 0.3 * _random(p - 4, seed=1)])
    return _dense_symmetric(p, spectrum, seed=seed)


def test_deflated_trace_is_exact_when_the_krylov_basis_spans_everything():
    A = _head_heavy()
    op = DenseOperator(A)
    run = hs.top_eigenvalues(op, k=1, max_iter=A.shape[0], min_iter=A.shape[0], tol=1e-12, seed=0)
    assert run.krylov is not None and run.krylov.steps == A.shape[0] and run.krylov.random_start
    trace = hs.hessian_trace(op, n_probes=3, seed=1, deflate=run.krylov)
    assert trace.estimate == pytest.approx(float(torch.trace(A)), abs=1e-9) and trace.stderr < 1e-9
    assert trace.deflated == A.shape[0] and trace.n_hvp == 3


def test_deflated_trace_is_unbiased_and_its_variance_is_the_complements_closed_form():
    """Over many probes the deflated estimate meets the exact trace within 4 standard errors, its per-probe variance
    is Rademacher's 2 (||M||_F^2 - sum M_ii^2) for the deflated M = (I - P) A (I - P), and that is far below plain
    Hutchinson's; a deflation that forgot tr(Q A Q^T) would be off by sum(alphas) >> 4 standard errors."""
    A = _head_heavy()
    op = DenseOperator(A)
    run = hs.top_eigenvalues(op, k=2, max_iter=8, min_iter=8, tol=1e-12, seed=0)
    Q = run.krylov.basis
    torch.testing.assert_close(Q @ Q.T, torch.eye(8, dtype=torch.float64), atol=1e-10, rtol=0)
    assert run.krylov.trace == pytest.approx(float(torch.trace(Q @ A @ Q.T)), abs=1e-10)
    deflated = hs.hessian_trace(op, n_probes=4000, seed=2, block_size=500, deflate=run.krylov)
    plain = hs.hessian_trace(op, n_probes=4000, seed=2, block_size=500)
    exact = float(torch.trace(A))
    assert abs(deflated.estimate - exact) <= 4 * deflated.stderr
    P = torch.eye(A.shape[0], dtype=torch.float64) - Q.T @ Q
    M = P @ A @ P
    closed = 2 * (float((M * M).sum()) - float((torch.diagonal(M) ** 2).sum()))
    assert float(deflated.samples.var()) == pytest.approx(closed, rel=0.15)
    assert deflated.stderr < 0.2 * plain.stderr
    assert run.krylov.trace > 10 * deflated.stderr  # the exact part is no rounding error


def test_trace_stops_at_its_standard_error_goal():
    op = DenseOperator(_head_heavy())
    full = hs.hessian_trace(op, n_probes=200, seed=3, block_size=2)
    goal = 1.5 * full.stderr
    early = hs.hessian_trace(op, n_probes=200, seed=3, block_size=2, stderr_goal=goal)
    assert hs.MIN_PROBES <= early.n_hvp < 200 and early.stderr <= goal
    torch.testing.assert_close(early.samples, full.samples[: early.n_hvp])  # the same probes, fewer of them
    never = hs.hessian_trace(op, n_probes=6, seed=3, block_size=2, stderr_goal=1e-12)
    assert never.n_hvp == 6


def test_a_random_start_lanczos_run_is_a_density_probe_like_a_fresh_one():
    """The density with the top-k run as probe 1 has that run's quadrature for its first row (nodes and weights of
    its first n_steps steps) and a fresh probe for the second; n_steps = P recovers the whole spectrum in both."""
    A = _head_heavy(p=24)
    op = DenseOperator(A)
    run = hs.top_eigenvalues(op, k=3, max_iter=24, min_iter=24, tol=1e-3, seed=6)
    assert run.krylov.steps == 24  # min_iter held the tolerance off
    before = op.n_hvp
    density = hs.spectral_density(op, n_probes=2, n_steps=24, seed=7, runs=[run.krylov])
    assert density.n_hvp == op.n_hvp - before == 24  # one fresh probe only
    exact = torch.linalg.eigvalsh(A)
    for row in density.nodes:
        torch.testing.assert_close(row, exact, atol=1e-8, rtol=0)
    # the first row's weights are the squared components of the run's start vector on the eigenvectors
    start = run.krylov.basis[0]
    _, vectors = torch.linalg.eigh(A)
    torch.testing.assert_close(density.weights[0], (vectors.T @ start) ** 2, atol=1e-8, rtol=0)
    short = hs.spectral_density(op, n_probes=1, n_steps=5, runs=[run.krylov])
    nodes, weights = hs.Krylov(
        run.krylov.basis[:5], run.krylov.images[:5], run.krylov.alphas[:5], run.krylov.betas[:4], True
    ).quadrature()
    torch.testing.assert_close(short.nodes[0], nodes)
    torch.testing.assert_close(short.weights[0], weights)
    warm = hs.top_eigenvalues(op, k=1, max_iter=24, min_iter=24, v0=start)
    with pytest.raises(ValueError, match="random starts"):
        hs.spectral_density(op, n_probes=2, n_steps=24, runs=[warm.krylov])
    with pytest.raises(ValueError, match="n_steps"):
        hs.spectral_density(op, n_probes=2, n_steps=24, runs=[run_of(op, 5)])


def run_of(op, steps: int) -> hs.Krylov:
    """The Krylov record of a ``steps``-step Lanczos run from a random start."""
    return hs.top_eigenvalues(op, k=1, max_iter=steps, min_iter=steps, tol=1e-3, seed=1).krylov


def test_a_relative_tolerance_converges_a_spectrum_far_below_one():
    """With the default floor of 1 a spectrum of ~1e-4 passes the residual test at the first step; tol_floor 0 makes
    the test relative, and the run continues until lambda_max is right (the normalized Hessian's case)."""
    A = 1e-4 * _head_heavy()
    op = DenseOperator(A)
    floored = hs.top_eigenvalues(op, k=1, max_iter=40, tol=1e-3, seed=0)
    relative = hs.top_eigenvalues(op, k=1, max_iter=40, tol=1e-3, seed=0, tol_floor=0.0)
    exact = float(torch.linalg.eigvalsh(A)[-1])
    assert floored.n_hvp == 1 and floored.converged
    assert relative.n_hvp > 1 and relative.converged
    assert float(relative.eigenvalues[0]) == pytest.approx(exact, rel=1e-4)
    assert float(relative.residuals[0]) <= 1e-3 * exact
