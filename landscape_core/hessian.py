"""Hessian of the mean loss: exact chunked HVPs, top-k eigenvalues, Hutchinson trace and spectral density.

The estimators (:func:`top_eigenvalues`: Lanczos or power iteration, :func:`hessian_trace`: Hutchinson,
:func:`spectral_density`: stochastic Lanczos quadrature) take a :class:`LinearOperator`, a symmetric operator on flat
vectors ``[P]`` with ``matvec``/``matmat`` and a product counter, as hessian-eigenthings does; so the same Lanczos
serves the Hessian and any other symmetric operator (a GGN or Fisher, a dense matrix in a test), and one operator,
built once, serves several estimators::

    op = HessianOperator(model, data, chunk_size=256)
    top = top_eigenvalues(op, k=5)
    trace = hessian_trace(op, n_probes=100)

:class:`HessianOperator` takes detached copies of the parameters once, slices the data into chunks once, and exposes
``matvec`` (one HVP) and ``matmat`` (many HVPs sharing the forward pass of each chunk). HVPs are forward-over-reverse,
``jvp(grad(L), (theta,), (v,))[1]``, evaluated in eval mode and averaged over the chunks with weights
``chunk size / total`` (the exact mean over all of ``data``, never a sum). Each result's ``n_hvp`` counts the products
of that call only, also when the operator is reused.

Flat vectors ``[P]`` follow the order of ``model.named_parameters()`` (see :func:`functional.flatten`). Nothing here
mutates the caller's model: its train/eval flags are only switched for the duration of a call and then restored.

Randomness is an argument: every function with probes or start vectors takes a ``seed``; the draws follow
landscape_core's one seeded-generator rule (:mod:`landscape_core.rng`: a CPU ``torch.Generator``, float64 draws, then
cast to the operator's dtype and moved to its device), so the same seed gives the same probes on every device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vmap

from landscape_core import rng
from landscape_core.common import check, check_count, check_positive
from landscape_core.devices import threads_for_load
from landscape_core.functional import (
    DEFAULT_CHUNK,
    Data,
    LossFn,
    Params,
    chunks,
    effective_chunk,
    eval_mode,
    flatten,
    loss_at,
    param_dict,
    unflatten,
)

__all__ = [
    "DensityResult",
    "EigenResult",
    "HessianOperator",
    "Krylov",
    "LinearOperator",
    "ScaledOperator",
    "TraceResult",
    "hessian_trace",
    "hvp",
    "hvp_batch",
    "random_vectors",
    "spectral_density",
    "top_eigenvalues",
]

METHODS = ("lanczos", "power")
#: Multilevel Lanczos (``top_eigenvalues(coarse=...)``): the coarse level's examples, the least multiple of them the
#: operator must hold for the coarse level to pay, and the coarse run's tolerance (a start vector, not the answer).
COARSE_EXAMPLES = 256
COARSE_MIN_RATIO = 4
COARSE_TOL = 1e-2
MIN_PROBES = 4  # hessian_trace(stderr_goal=...) trusts no standard error of fewer probes
KINDS = ("gaussian", "rademacher")


# ----------------------------------------------------------------------------------------------------------------------
# The operators
# ----------------------------------------------------------------------------------------------------------------------


@runtime_checkable
class LinearOperator(Protocol):
    """What the estimators need of a symmetric linear operator ``A`` on flat vectors ``[size]``.

    Attributes:
        size: The dimension ``P``.
        dtype: The dtype of the vectors ``matvec`` takes and returns (start vectors and probes are cast to it).
        device: Their device.
        n_hvp: Products computed so far (``matmat`` of ``m`` vectors counts ``m``); estimators report the
            difference over their own call, so an operator can be reused.

    ``matvec(v [P]) -> A v [P]`` and ``matmat(V [m, P]) -> [m, P]`` with row ``i`` equal to ``A V[i]``; both take
    vectors in ``dtype`` on ``device``. Random start vectors and probes are drawn for it by :func:`random_vectors`.
    """

    size: int
    dtype: torch.dtype
    device: torch.device
    n_hvp: int

    def matvec(self, v: Tensor) -> Tensor: ...

    def matmat(self, V: Tensor) -> Tensor: ...


def random_vectors(op: LinearOperator, n: int, generator: torch.Generator, kind: str = "gaussian") -> Tensor:
    """``n`` random vectors ``[n, op.size]`` (``gaussian`` or ``rademacher``) by the seeded-generator rule of
    :mod:`landscape_core.rng`: drawn in float64 on the CPU from ``generator``, then cast to ``op.dtype`` and moved to
    ``op.device``."""
    if kind == "gaussian":
        return rng.randn((n, op.size), generator, dtype=op.dtype, device=op.device)
    if kind == "rademacher":
        return rng.rademacher((n, op.size), generator, dtype=op.dtype, device=op.device)
    raise ValueError(f"Expected `kind` in {KINDS}, got {kind!r}")


def _vectors(op: LinearOperator, v: Tensor, ndim: int) -> Tensor:
    """``v`` checked to be ``[P]`` (``ndim`` 1) or ``[m, P]`` (2) for ``op``, detached, in its dtype and device."""
    v = torch.as_tensor(v)
    if v.ndim != ndim or v.shape[-1] != op.size:
        shape = "[P]" if ndim == 1 else "[m, P]"
        raise ValueError(f"Expected a vector of shape {shape} with P = {op.size}, got {tuple(v.shape)}")
    return v.detach().to(device=op.device, dtype=op.dtype)


def _check_operator(op: object) -> None:
    check(
        not isinstance(op, nn.Module) and isinstance(op, LinearOperator),
        "op",
        "a LinearOperator such as HessianOperator(model, data)",
        type(op).__name__,
        error=TypeError,
    )


class HessianOperator:
    """The Hessian of the exact mean loss of ``model`` over ``data``, as a :class:`LinearOperator` on flat vectors
    ``[P]``.

    Parameters and buffers are detached copies taken at construction and the data is sliced into chunks once, so
    Lanczos, power iteration, Hutchinson and SLQ share one HVP code path, and one operator can serve several
    estimators (it describes the model as it was when the operator was built). ``n_hvp`` counts Hessian-vector
    products (``matmat`` of ``m`` vectors counts ``m``).

    Args:
        model: Any module; evaluated in eval mode through ``torch.func.functional_call``, never mutated.
        data: ``(inputs [N, ...], targets [N])``.
        chunk_size: At most this many examples per forward pass (bounds memory; ``matmat`` of ``m`` vectors holds ``m``
            tangents). On a CPU passes are capped at ``functional.CPU_CHUNK`` examples, which keeps activations in
            cache and makes an HVP ~2x faster than one pass over 1024 (the result changes only by summation order).
        loss_fn: ``loss_fn(logits, targets) -> scalar`` mean loss of a chunk; cross-entropy when ``None``.
        vectorize: ``True``: ``matmat`` vmaps the JVP over its vectors so each chunk's primal forward and backward
            pass is computed once for all of them. If vmap raises (an op without a batching rule), the operator
            warns once and falls back to a Python loop over the vectors (same numbers, one forward pass per vector).
            ``False``: the loop. ``None`` (default): vmap on accelerators, the loop on a CPU, where vmapped conv
            tangents go through grouped convolutions: measured ~1.7x slower than the loop for SeedCNN (8 vectors,
            256 examples, one thread), 1.1x (4 vectors) to 1.7x (10 vectors) over the paper's 2,048 images.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        loss_fn: LossFn | None = None,
        vectorize: bool | None = None,
    ) -> None:
        self.model = model
        self.params: Params = param_dict(model)
        self.buffers: Params = {name: b.detach() for name, b in model.named_buffers()}
        self.data = data
        self.chunk_size = chunk_size
        self.batches = list(chunks(data, effective_chunk(chunk_size, data[0].device)))
        self.loss_fn = loss_fn
        self.vectorize = data[0].device.type != "cpu" if vectorize is None else vectorize
        self.n_hvp = 0
        first = next(iter(self.params.values()), None)
        if first is None:
            raise ValueError("Expected a model with parameters, got none")
        self.dtype = first.dtype
        self.device = first.device
        self.size = sum(p.numel() for p in self.params.values())

    # -- helpers -------------------------------------------------------------------------------------------------------

    def _to_dict(self, vector: Tensor, batched: bool) -> Params:
        if not batched:
            return unflatten(vector, self.params)  # keeps channels_last conv weights on their fast path
        out, start = {}, 0
        for name, p in self.params.items():
            stop = start + p.numel()
            piece = vector[..., start:stop]
            out[name] = piece.reshape(vector.shape[0], *p.shape)
            start = stop
        return out

    def _flat(self, tree: Params, batched: bool) -> Tensor:
        if batched:
            return torch.cat([t.reshape(t.shape[0], -1) for t in tree.values()], dim=1)
        return flatten(tree)

    def _check_vectors(self, v: Tensor, ndim: int) -> Tensor:
        return _vectors(self, v, ndim)

    def _grad_fn(self, batch: Data) -> Callable[[Params], Params]:
        model, loss_fn, buffers = self.model, self.loss_fn, self.buffers
        return grad(lambda p: loss_at(model, p, batch, loss_fn, buffers))

    def _hvp_chunk(self, batch: Data, tangent: Params) -> Params:
        return jvp(self._grad_fn(batch), (self.params,), (tangent,))[1]

    # -- public --------------------------------------------------------------------------------------------------------

    def coarse(self, examples: int) -> HessianOperator | None:
        """The same Hessian (same weights) on the first ``examples`` examples: multilevel Lanczos's cheap level
        (``top_eigenvalues(coarse=...)``). None when this operator holds fewer than ``COARSE_MIN_RATIO`` times as many
        examples (the coarse level would not pay)."""
        if examples < 1 or self.data[0].shape[0] < COARSE_MIN_RATIO * examples:
            return None
        level = HessianOperator(
            self.model,
            (self.data[0][:examples], self.data[1][:examples]),
            chunk_size=self.chunk_size,
            loss_fn=self.loss_fn,
            vectorize=self.vectorize,
        )
        level.params, level.buffers = self.params, self.buffers
        return level

    def matvec(self, v: Tensor) -> Tensor:
        """One Hessian-vector product.

        Args:
            v: Flat vector ``[P]`` (cast to the model's dtype and device).

        Returns:
            ``H v`` as a flat vector ``[P]`` in the model's dtype and device.
        """
        v = self._check_vectors(v, 1)
        tangent = self._to_dict(v, batched=False)
        total = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        with eval_mode(self.model), threads_for_load(self.device):
            for batch, weight in self.batches:
                total += self._flat(self._hvp_chunk(batch, tangent), batched=False) * weight
        self.n_hvp += 1
        return total

    def matmat(self, V: Tensor, *, block_size: int | None = None) -> Tensor:
        """Hessian products with the rows of ``V``, sharing each chunk's forward pass among them.

        Args:
            V: Vectors as rows, ``[m, P]``.
            block_size: At most this many vectors per vmapped pass (memory grows with it); all ``m`` when ``None``.

        Returns:
            ``(H V^T)^T``, i.e. row ``i`` is ``H V[i]``: ``[m, P]``.
        """
        V = self._check_vectors(V, 2)
        m = V.shape[0]
        block = m if block_size is None else block_size
        check(block >= 1, "block_size", ">= 1", block_size)
        out = torch.zeros_like(V)
        for start in range(0, m, max(block, 1)):
            out[start : start + block] = self._matmat_block(V[start : start + block])
        return out

    def _matmat_block(self, V: Tensor) -> Tensor:
        m = V.shape[0]
        if m == 0:
            return V.clone()
        if self.vectorize:
            try:
                out = self._matmat_vmap(V)
            except (RuntimeError, NotImplementedError) as err:  # no batching/forward-AD rule (or out of memory)
                warnings.warn(
                    f"vmap over the HVP failed ({type(err).__name__}: {err}); falling back to a loop over vectors",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.vectorize = False
            else:
                self.n_hvp += m
                return out
        return torch.stack([self.matvec(v) for v in V])

    def _matmat_vmap(self, V: Tensor) -> Tensor:
        tangents = self._to_dict(V, batched=True)
        total = torch.zeros_like(V)
        with eval_mode(self.model):
            for batch, weight in self.batches:
                # The primal (params, batch) is unbatched, so vmap computes its forward/backward pass once per chunk;
                # only the tangent computations are batched over the m vectors.
                out = vmap(lambda t, batch=batch: self._hvp_chunk(batch, t))(tangents)
                total += self._flat(out, batched=True) * weight
        return total

    def quadratic_forms(self, V: Tensor, *, block_size: int | None = None) -> Tensor:
        """``v^T H v`` for each row of ``V [m, P]``: ``[m]``."""
        V = self._check_vectors(V, 2)
        return (self.matmat(V, block_size=block_size) * V).sum(dim=1)


class ScaledOperator:
    """``C A C`` for a symmetric operator ``A`` and a diagonal ``C = diag(scale)``, itself a :class:`LinearOperator`.

    With ``A`` the Hessian and ``scale = |w|`` this is the Hessian in the normalized parametrization ``w = |w_0| * u``
    (Tsuzuku et al. 2020; the second-order term of Andriushchenko et al. 2023's adaptive sharpness). A rescaling
    ``w' = D w`` that preserves the function turns ``H`` into ``D^-1 H D^-1`` and ``|w|`` into ``D |w|``, so ``C A C``
    is the same operator for every such rescaling: its spectrum and trace are rescaling-invariant.

    Products are counted on ``op`` (``n_hvp`` is read through).
    """

    def __init__(self, op: LinearOperator, scale: Tensor) -> None:
        _check_operator(op)
        self.op = op
        self.scale = _vectors(op, scale, 1)
        self.size, self.dtype, self.device = op.size, op.dtype, op.device

    @property
    def n_hvp(self) -> int:
        return self.op.n_hvp

    def coarse(self, examples: int) -> ScaledOperator | None:
        """``C A' C`` with ``A'`` the coarse level of ``A`` (:meth:`HessianOperator.coarse`); None when it has none."""
        level = getattr(self.op, "coarse", None)
        inner = level(examples) if level is not None else None
        return ScaledOperator(inner, self.scale) if inner is not None else None

    def matvec(self, v: Tensor) -> Tensor:
        return self.scale * self.op.matvec(self.scale * _vectors(self, v, 1))

    def matmat(self, V: Tensor) -> Tensor:
        return self.scale * self.op.matmat(self.scale * _vectors(self, V, 2))


def hvp(
    model: nn.Module, data: Data, v: Tensor, *, chunk_size: int = DEFAULT_CHUNK, loss_fn: LossFn | None = None
) -> Tensor:
    """Hessian-vector product of the exact mean loss, forward-over-reverse, chunked.

    Args:
        model: The model (not mutated; evaluated in eval mode).
        data: ``(inputs [N, ...], targets [N])``.
        v: Flat vector ``[P]`` in the order of ``model.named_parameters()``.
        chunk_size: Examples per forward pass.
        loss_fn: Mean loss of a chunk; cross-entropy when ``None``.

    Returns:
        ``H v``: ``[P]`` in the model's dtype and device.
    """
    return HessianOperator(model, data, chunk_size=chunk_size, loss_fn=loss_fn).matvec(v)


def hvp_batch(
    model: nn.Module,
    data: Data,
    V: Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
    block_size: int | None = None,
    vectorize: bool | None = None,
) -> Tensor:
    """Hessian products with many vectors at once, vmapping the JVP so each chunk's forward pass is shared.

    Falls back to a loop over the vectors (with a ``RuntimeWarning``) if vmap fails; ``vectorize=False`` forces the
    loop.

    Args:
        model: The model (not mutated; evaluated in eval mode).
        data: ``(inputs [N, ...], targets [N])``.
        V: Vectors as rows, ``[m, P]``.
        chunk_size: Examples per forward pass.
        loss_fn: Mean loss of a chunk; cross-entropy when ``None``.
        block_size: At most this many vectors per vmapped pass (memory); all at once when ``None``.
        vectorize: vmap, a plain loop, or (None) vmap on accelerators and the loop on a CPU.

    Returns:
        ``[m, P]`` with row ``i`` equal to ``H V[i]``.
    """
    op = HessianOperator(model, data, chunk_size=chunk_size, loss_fn=loss_fn, vectorize=vectorize)
    return op.matmat(V, block_size=block_size)


# ----------------------------------------------------------------------------------------------------------------------
# Top eigenvalues
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Krylov:
    """What a Lanczos run leaves behind besides its Ritz pairs: the orthonormal Krylov basis, the operator's products
    with it, and the tridiagonal matrix ``T = Q A Q^T``.

    Two estimators reuse it at no extra product: :func:`hessian_trace` deflates Hutchinson by the basis
    (``tr(Q A Q^T) = sum(alphas)`` exactly, probes only on the complement), and :func:`spectral_density` takes a run
    from a random start as one of its quadrature probes (``random_start``).

    Attributes:
        basis: ``Q``, ``[m, P]`` orthonormal rows, in the operator's dtype and device.
        images: ``A Q^T`` as rows, ``[m, P]`` (row ``j`` is ``A q_j``).
        alphas: ``T``'s diagonal, ``[m]`` floats (``alphas[j] = q_j^T A q_j``).
        betas: ``T``'s off-diagonal, ``[m - 1]`` floats (0 where the run restarted after a breakdown).
        random_start: whether ``q_0`` was drawn at random (not a warm start): only then is the run an unbiased
            quadrature probe.
    """

    basis: Tensor
    images: Tensor
    alphas: tuple[float, ...]
    betas: tuple[float, ...]
    random_start: bool

    @property
    def steps(self) -> int:
        return len(self.alphas)

    @property
    def trace(self) -> float:
        """``tr(Q A Q^T) = sum_j q_j^T A q_j``: the operator's trace on the span of the basis."""
        return float(sum(self.alphas))

    def quadrature(self) -> tuple[Tensor, Tensor]:
        """Gauss quadrature of ``q_0^T f(A) q_0``: nodes (Ritz values, ascending) and weights (squared first
        components of the Ritz vectors), both ``[m]`` float64 on CPU."""
        return _gauss_quadrature(list(self.alphas), list(self.betas))


@dataclass(frozen=True)
class EigenResult:
    """Top-k eigenpairs (largest algebraic) of an operator (the Hessian, for a :class:`HessianOperator`).

    Attributes:
        eigenvalues: ``[k]`` float64 on CPU, descending.
        eigenvectors: ``[k, P]`` unit rows, in the operator's dtype and device.
        residuals: ``[k]`` float64 on CPU: true residuals ``||H v - lambda v||`` computed from real HVPs (for Lanczos
            ``H v`` is assembled from the HVPs of the Krylov basis, ``H (Q^T s) = (H Q)^T s``, so it costs no extra
            HVP; for power iteration it is the last HVP of each eigenvector). Not the Lanczos bound.
        converged: ``True`` when ``residuals[i] <= tol * max(|eigenvalues[i]|, 1)`` for every ``i``.
        n_hvp: Operator products (HVPs) this call spent.
        method: ``"lanczos"`` or ``"power"``.
        tol: The tolerance the result was computed (and judged) with.
        tol_floor: The floor of the tolerance's scale (``residual <= tol * max(|lambda|, tol_floor)``).
        krylov: Lanczos's basis, its products and tridiagonal matrix (:class:`Krylov`); None for power iteration.
        coarse_hvp: Products on the coarse level of multilevel Lanczos (each on ``COARSE_EXAMPLES`` examples, so
            about ``COARSE_EXAMPLES / N`` of one of ``n_hvp``); 0 without one.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    converged: bool
    n_hvp: int
    method: str
    tol: float
    tol_floor: float = 1.0
    krylov: Krylov | None = None
    coarse_hvp: int = 0

    @property
    def converged_mask(self) -> Tensor:
        """Per-eigenpair convergence, ``[k]`` bool."""
        return _converged_mask(self.eigenvalues, self.residuals, self.tol, self.tol_floor)


def _converged_mask(eigenvalues: Tensor, residuals: Tensor, tol: float, floor: float = 1.0) -> Tensor:
    return residuals <= tol * eigenvalues.abs().clamp(min=floor)


def top_eigenvalues(
    op: LinearOperator,
    *,
    k: int = 1,
    method: str = "lanczos",
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    v0: Tensor | Params | None = None,
    min_iter: int = 1,
    tol_floor: float = 1.0,
    coarse: int | None = COARSE_EXAMPLES,
) -> EigenResult:
    """The ``k`` largest (algebraic) eigenvalues of a symmetric operator, with eigenvectors and residuals (for a
    :class:`HessianOperator`: of the Hessian of the mean loss; "HVP" below is one product with the operator).

    ``method="lanczos"`` (default): Lanczos with full reorthogonalization (twice-is-enough Gram-Schmidt against the
    whole basis) from ``v0`` (or a Gaussian vector from ``seed``). After each step the tridiagonal matrix is
    diagonalized; the run stops when the top-``k`` Ritz residual estimates ``|beta_j s_{j,i}|`` are all
    ``<= tol * max(|theta_i|, 1)``, or after ``max_iter`` steps (at most ``P``). ``max_iter`` counts Lanczos steps,
    one HVP each. It keeps the basis and its HVPs (``2 * max_iter * P`` numbers) so that the residuals of the Ritz
    pairs are true residuals at no extra HVP. On an exact breakdown (an invariant Krylov subspace) before ``k`` steps
    it restarts from a random vector orthogonal to the basis, so a warm start that is itself an eigenvector still
    yields ``k`` eigenpairs; like any Krylov method it cannot see past an invariant subspace of dimension ``>= k``
    (e.g. ``k=1`` and ``v0`` exactly a non-top eigenvector), which a generic start or warm start never is.

    ``method="power"``: the deflated power iteration of PyHessian, kept for parity with the paper. Eigenvector ``i``
    starts from a fresh Gaussian vector (``v0`` for the first), is re-orthogonalized against the ones already found
    at every step, and stops when the Rayleigh quotient's relative change ``|l - l_prev| / (|l_prev| + 1e-6) < tol``
    or after ``max_iter`` HVPs (``max_iter`` is per eigenvalue). Power iteration converges to the eigenvalues of
    largest *magnitude*, so it only returns the largest algebraic ones when no negative eigenvalue dominates; results
    are sorted descending.

    Multilevel Lanczos (as in multigrid): a Lanczos run without a warm start (``v0`` None) and without a floor on its
    steps (``min_iter`` 1: a run that must be a random-start quadrature probe keeps its random start) on an operator
    with a coarse level (:meth:`HessianOperator.coarse`: the same Hessian on its first ``coarse`` examples, when it
    holds at least ``COARSE_MIN_RATIO`` times as many) first solves the coarse level from the random start to
    ``COARSE_TOL``, then starts the full run from the sum of those Ritz vectors. A product on 256 examples costs about
    an eighth of one on 2,048. The answer is the full operator's, to the same residual test. ``coarse=None`` turns
    it off.

    In both cases ``converged`` is judged on the true residuals, ``residual <= tol * max(|lambda|, 1)``; power
    iteration's relative-change rule is weaker, so its flag is often ``False`` at the same ``tol``.

    Args:
        op: The operator, e.g. ``HessianOperator(model, data, chunk_size=...)`` (the model is not mutated).
        k: Number of eigenpairs, ``1 <= k <= P``.
        method: ``"lanczos"`` or ``"power"``.
        max_iter: Lanczos steps in total (>= ``k``), or power-iteration HVPs per eigenvalue.
        tol: Convergence tolerance (relative to ``max(|lambda|, 1)``).
        seed: Seeds the start vector(s).
        v0: Warm start, flat ``[P]`` or (for a :class:`HessianOperator`) a parameter dict (e.g. the previous epoch's
            top eigenvector).
        min_iter: Lanczos only: at least this many steps before the tolerance may stop the run (at most
            ``max_iter``), e.g. so that a run from a random start doubles as a spectral-density probe of that many
            steps (:func:`spectral_density`'s ``runs``).
        tol_floor: The tests read ``tol * max(|lambda|, tol_floor)``: the default 1 keeps a near-zero eigenvalue from
            demanding an impossibly small residual; an operator whose whole spectrum lies far below 1 (the
            normalized Hessian, ~1e-4 of the raw one) needs a floor below its own scale, or the test passes at once.
        coarse: The coarse level's examples for multilevel Lanczos (above); None: a single level.

    Returns:
        An :class:`EigenResult`.
    """
    _check_operator(op)
    check(isinstance(k, int) and k >= 1, "k", ">= 1", k)
    check(method in METHODS, "method", f"in {METHODS}", method)
    check_count("max_iter", max_iter)
    check_positive("tol", tol)
    check(k <= op.size, "k", f"<= {op.size} (the number of parameters)", k)
    check_count("min_iter", min_iter)
    check(tol_floor >= 0, "tol_floor", ">= 0", tol_floor)
    if method == "lanczos":
        check(max_iter >= k, "max_iter", f">= `k` ({k}) for Lanczos", max_iter)
    coarse_hvp = 0
    level = getattr(op, "coarse", None)
    level = level(coarse) if method == "lanczos" and v0 is None and min_iter == 1 and coarse and level else None
    if level is not None:
        first = top_eigenvalues(
            level, k=k, max_iter=max_iter, tol=max(tol, COARSE_TOL), seed=seed, tol_floor=tol_floor, coarse=None
        )
        v0, coarse_hvp = first.eigenvectors.sum(dim=0), first.n_hvp
    n_before = op.n_hvp
    generator = rng.generator(seed)
    start = _start_vector(op, v0, generator)
    krylov = None
    if method == "lanczos":
        values, vectors, residuals, krylov = _lanczos_top(
            op,
            start,
            k=k,
            max_iter=max_iter,
            min_iter=min_iter,
            tol=tol,
            floor=tol_floor,
            generator=generator,
            random_start=v0 is None,
        )
    else:
        values, vectors, residuals = _power_top(op, start, k=k, max_iter=max_iter, tol=tol, generator=generator)
    return EigenResult(
        eigenvalues=values,
        eigenvectors=vectors,
        residuals=residuals,
        converged=bool(_converged_mask(values, residuals, tol, tol_floor).all()),
        n_hvp=op.n_hvp - n_before,
        method=method,
        tol=float(tol),
        tol_floor=float(tol_floor),
        krylov=krylov,
        coarse_hvp=coarse_hvp,
    )


def _start_vector(op: LinearOperator, v0: Tensor | Params | None, generator: torch.Generator) -> Tensor:
    if v0 is None:
        v = random_vectors(op, 1, generator)[0]
    else:
        if isinstance(v0, dict):
            names = getattr(op, "params", None)
            check(names is not None, "v0", "a flat vector [P] (the operator has no parameter names)", "a dict")
            check(set(v0) == set(names), "v0", f"with keys {list(names)}", list(v0))
            v0 = torch.cat([torch.as_tensor(v0[name]).reshape(-1) for name in names])
        v = _vectors(op, v0, 1)
    norm = torch.linalg.vector_norm(v)
    check(bool(norm > 0) and bool(torch.isfinite(norm)), "v0", "a non-zero finite vector", f"norm {float(norm)}")
    return v / norm


def _orthogonalize(w: Tensor, basis: Tensor) -> Tensor:
    """Remove from ``w [P]`` its components along the orthonormal rows of ``basis [j, P]`` (twice is enough)."""
    if basis.shape[0] == 0:
        return w
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _tridiagonal(alphas: list[float], betas: list[float]) -> Tensor:
    """The symmetric tridiagonal matrix ``[m, m]`` (float64) with diagonal ``alphas`` and off-diagonal ``betas``."""
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if len(alphas) > 1:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return T


def _gauss_quadrature(alphas: list[float], betas: list[float]) -> tuple[Tensor, Tensor]:
    """Nodes (ascending Ritz values) and weights (squared first components of the Ritz vectors) of the Gauss
    quadrature that a Lanczos tridiagonal matrix defines for its start vector, both ``[m]`` float64 on CPU."""
    theta, S = torch.linalg.eigh(_tridiagonal(alphas, betas))
    return theta, S[0] ** 2


def _breakdown_tol(alphas: list[float], betas: list[float]) -> float:
    scale = max([abs(a) for a in alphas] + [abs(b) for b in betas] + [1.0])
    return 1e3 * torch.finfo(torch.float64).eps * scale


def _lanczos_top(
    op: LinearOperator,
    q: Tensor,
    *,
    k: int,
    max_iter: int,
    min_iter: int,
    tol: float,
    floor: float,
    generator: torch.Generator,
    random_start: bool,
) -> tuple[Tensor, Tensor, Tensor, Krylov]:
    steps = min(max_iter, op.size)
    # Uninitialized: row j is written at step j before any read, and untouched rows cost no memory traffic (zeroing
    # 2 x max_iter x P floats up front took ~0.1 s per call on a CPU, half an HVP of SeedCNN over 256 images).
    Q = torch.empty(steps, op.size, dtype=op.dtype, device=op.device)  # orthonormal Krylov basis
    HQ = torch.empty_like(Q)  # the raw HVPs, so Ritz residuals cost no extra HVP
    alphas: list[float] = []
    betas: list[float] = []
    eps = torch.finfo(op.dtype).eps
    for j in range(steps):
        Q[j] = q
        w = op.matvec(q)
        HQ[j] = w
        alphas.append(float(q @ w))
        w = _orthogonalize(w, Q[: j + 1])  # full reorthogonalization (subsumes the three-term recurrence)
        beta = float(torch.linalg.vector_norm(w))
        theta, S = torch.linalg.eigh(_tridiagonal(alphas, betas))
        m = j + 1
        if m >= max(k, min_iter):
            estimates = (beta * S[-1, -k:]).abs()
            if bool((estimates <= tol * theta[-k:].abs().clamp(min=floor)).all()):
                break
        if m == steps:
            break
        if beta <= max(_breakdown_tol(alphas, betas), 10 * eps):
            # Invariant subspace: restart in its orthogonal complement (T gets a zero off-diagonal entry).
            for _ in range(3):
                fresh = _orthogonalize(random_vectors(op, 1, generator)[0], Q[:m])
                norm = torch.linalg.vector_norm(fresh)
                if norm > 1e-3:  # the complement is not numerically empty
                    break
            q = fresh / norm
            betas.append(0.0)
        else:
            q = w / beta
            betas.append(beta)
    m = len(alphas)
    theta, S = torch.linalg.eigh(_tridiagonal(alphas, betas))
    top = torch.arange(m - 1, m - 1 - k, -1)  # eigh is ascending: the last k, descending
    values = theta[top]
    coeffs = S[:, top].T.to(device=op.device, dtype=op.dtype)  # [k, m]
    vectors = coeffs @ Q[:m]
    Hv = coeffs @ HQ[:m]
    norms = torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
    vectors, Hv = vectors / norms, Hv / norms
    residuals = torch.linalg.vector_norm(Hv - values.to(device=op.device, dtype=op.dtype)[:, None] * vectors, dim=1)
    krylov = Krylov(Q[:m], HQ[:m], tuple(alphas), tuple(betas[: m - 1]), random_start=random_start)
    return values, vectors, residuals.double().cpu(), krylov


def _power_top(
    op: LinearOperator, start: Tensor, *, k: int, max_iter: int, tol: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    found = torch.zeros(0, op.size, dtype=op.dtype, device=op.device)
    values: list[float] = []
    residuals: list[float] = []
    for i in range(k):
        v = start if i == 0 else random_vectors(op, 1, generator)[0]
        previous = None
        for step in range(max_iter):
            v = _orthogonalize(v, found)
            v = v / torch.linalg.vector_norm(v)
            Hv = op.matvec(v)
            value = float(v @ Hv)
            done = previous is not None and abs(value - previous) / (abs(previous) + 1e-6) < tol
            previous = value
            if done or step == max_iter - 1:
                break
            next_v = _orthogonalize(Hv, found)
            if float(torch.linalg.vector_norm(next_v)) == 0.0:  # H v = 0 in the complement: v is an eigenvector
                break
            v = next_v
        # v is the unit vector whose HVP was computed last: its residual is exact
        residuals.append(float(torch.linalg.vector_norm(Hv - value * v)))
        values.append(value)
        found = torch.cat([found, v[None]])
    order = torch.argsort(torch.tensor(values, dtype=torch.float64), descending=True)
    return (
        torch.tensor(values, dtype=torch.float64)[order],
        found[order.to(op.device)],
        torch.tensor(residuals, dtype=torch.float64)[order],
    )


# ----------------------------------------------------------------------------------------------------------------------
# Trace
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceResult:
    """Hutchinson's estimate of ``tr(H)``, plain or deflated.

    Attributes:
        estimate: Mean of the per-probe samples.
        stderr: Sample standard deviation of the per-probe samples over ``sqrt(n_probes)`` (NaN for one probe).
        n_hvp: Operator products (HVPs) this call spent (``n_probes``).
        samples: Per-probe ``z^T H z`` (deflated: ``tr(Q H Q^T) + z'^T H z'``), ``[n_probes]`` float64 on CPU.
        deflated: The dimension of the subspace whose trace was computed exactly (0: plain Hutchinson).
    """

    estimate: float
    stderr: float
    n_hvp: int
    samples: Tensor
    deflated: int = 0


def hessian_trace(
    op: LinearOperator,
    *,
    n_probes: int = 20,
    seed: int = 0,
    block_size: int = 10,
    deflate: Krylov | None = None,
    stderr_goal: float | None = None,
) -> TraceResult:
    """Hutchinson's trace estimator with Rademacher probes, ``tr(H) ~ mean_i z_i^T H z_i``; deflated by a subspace
    when ``deflate`` is given.

    Deflated (Gambhir, Stathopoulos & Orginos 2017; the Krylov variant of Hutch++, Meyer et al. 2021, Chen & Hallman
    2023): with ``Q`` the orthonormal basis of a Lanczos run and ``P = Q^T Q``, ``tr(H) = tr(Q H Q^T) + tr((I - P) H
    (I - P))`` exactly (the cross terms vanish), the first term is ``sum(alphas)`` of the run at no product, and the
    probes estimate only the second: ``z' = (I - P) z``. Unbiased for any basis independent of the probes; its
    variance ``2 (||M||_F^2 - sum_i M_ii^2)`` with ``M = (I - P) H (I - P)`` loses the spectrum's head, which
    dominates a trained network's Hessian (measured on the paper's CNN: ``benchmarks`` row
    ``paper_trial_analysis_vs_training``).

    Standalone, a Lanczos run of about 1.5 x the number of classes (15 for Fashion-MNIST) is the deflation to use: the
    Hessian of a C-class network has about C outliers (Papyan 2020) that carry most of the probes' variance, and steps
    beyond them cost more HVPs than the probes they save (``benchmarks`` row ``trace_vs_peers``). In a trial the
    deflation is the 30-step top-k run that the density needs anyway, at no product of its own.

    Probes are drawn block by block from one generator and pushed through the operator's ``matmat`` (for a
    :class:`HessianOperator`, its ``vectorize`` flag chooses vmap or a loop).

    Args:
        op: The operator, e.g. ``HessianOperator(model, data, chunk_size=...)`` (the model is not mutated).
        n_probes: Number of Rademacher probes (>= 1).
        seed: Seeds the probes.
        block_size: Probes per ``matmat`` (memory grows with it).
        deflate: A Lanczos run on the same operator (``top_eigenvalues(...).krylov``); None: plain Hutchinson.
        stderr_goal: Stop once the standard error is at most this, after at least ``MIN_PROBES`` probes and
            checking after every block (``n_probes`` is then the most it draws); None: exactly ``n_probes``.

    Returns:
        A :class:`TraceResult`.
    """
    _check_operator(op)
    check_count("n_probes", n_probes)
    check_count("block_size", block_size)
    check(stderr_goal is None or stderr_goal > 0, "stderr_goal", "> 0", stderr_goal)
    exact, basis = 0.0, None
    if deflate is not None:
        check(deflate.basis.shape[-1] == op.size, "deflate", f"a basis of vectors of size {op.size}", "another size")
        exact, basis = deflate.trace, deflate.basis.to(device=op.device, dtype=op.dtype)
    n_before = op.n_hvp
    generator = rng.generator(seed)
    samples = []
    for start in range(0, n_probes, block_size):
        Z = random_vectors(op, min(block_size, n_probes - start), generator, kind="rademacher")
        if basis is not None:
            Z = Z - (Z @ basis.T) @ basis
        samples.append(exact + (op.matmat(Z) * Z).sum(dim=1).double().cpu())
        if stderr_goal is not None and _stderr(torch.cat(samples), MIN_PROBES) <= stderr_goal:
            break
    values = torch.cat(samples)
    stderr = _stderr(values, 2)
    deflated = 0 if basis is None else basis.shape[0]
    return TraceResult(float(values.mean()), stderr, op.n_hvp - n_before, values, deflated)


def _stderr(samples: Tensor, minimum: int) -> float:
    """The standard error of the mean of ``samples``; NaN below ``minimum`` samples."""
    n = samples.numel()
    return float(samples.std(unbiased=True) / math.sqrt(n)) if n >= max(minimum, 2) else math.nan


# ----------------------------------------------------------------------------------------------------------------------
# Spectral density
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DensityResult:
    """Stochastic Lanczos quadrature of the Hessian's spectral density (Ghorbani et al. 2019).

    Attributes:
        nodes: Ritz values per probe, ``[n_probes, n_steps]`` float64 on CPU, ascending within a probe.
        weights: Squared first components of the Ritz vectors, ``[n_probes, n_steps]``; each row sums to 1.
        n_hvp: Operator products (HVPs) this call spent.
    """

    nodes: Tensor
    weights: Tensor
    n_hvp: int

    def density(self, grid: Tensor, sigma: float) -> Tensor:
        """Gaussian-smoothed density averaged over probes.

        Args:
            grid: Points ``[G]`` at which to evaluate.
            sigma: Standard deviation of the Gaussian kernel (> 0).

        Returns:
            ``[G]`` float64: ``mean_p sum_j w_pj N(grid; node_pj, sigma^2)``; integrates to ~1 over a wide grid.
        """
        check_positive("sigma", sigma)
        grid = torch.as_tensor(grid, dtype=torch.float64).cpu()
        z = (grid[None, None, :] - self.nodes[:, :, None]) / sigma
        kernel = torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
        return (self.weights[:, :, None] * kernel).sum(dim=1).mean(dim=0)

    def moment(self, power: int = 1) -> Tensor:
        """Per-probe quadrature estimate of ``v^T H^power v`` (exact for ``power <= 2 n_steps - 1``): ``[n_probes]``."""
        return (self.weights * self.nodes**power).sum(dim=1)


def spectral_density(
    op: LinearOperator, *, n_probes: int, n_steps: int, seed: int = 0, runs: Sequence[Krylov] = ()
) -> DensityResult:
    """Stochastic Lanczos quadrature: the spectral density as Gauss quadrature nodes and weights per probe.

    Each probe is a normalized Rademacher vector ``v``; ``n_steps`` Lanczos steps with full reorthogonalization give a
    tridiagonal ``T = S diag(theta) S^T``; nodes are ``theta`` and weights ``S[0, :]^2`` (so that
    ``sum_j w_j f(theta_j) ~ v^T f(H) v``). The probes' Lanczos recurrences run side by side and go through the
    operator's ``matmat`` together (for a :class:`HessianOperator` they share each chunk's forward pass). A probe
    whose Krylov space becomes invariant before ``n_steps`` (exact quadrature already) stops there; its remaining
    entries are padded with its largest node and weight 0.

    ``runs``: Lanczos runs already made on ``op`` from random starts (``top_eigenvalues(..., min_iter=n_steps)
    .krylov``), each taken as one of the ``n_probes`` probes, so only the rest cost products (a unit Gaussian start
    is as unbiased a probe as a unit Rademacher one: ``E[v v^T] = I / P`` for both). A run's quadrature uses its
    first ``n_steps`` steps (Lanczos' tridiagonal matrix after ``n`` steps is the leading block of the longer one).

    Args:
        op: The operator, e.g. ``HessianOperator(model, data, chunk_size=...)`` (the model is not mutated).
        n_probes: Number of probes (>= 1), ``runs`` included.
        n_steps: Lanczos steps per probe, ``1 <= n_steps <= P``.
        seed: Seeds the probes.
        runs: Lanczos runs to reuse as probes (random starts, at least ``n_steps`` steps or an exact breakdown).

    Returns:
        A :class:`DensityResult`.
    """
    _check_operator(op)
    check_count("n_probes", n_probes)
    check_count("n_steps", n_steps)
    check(n_steps <= op.size, "n_steps", f"<= {op.size} (the number of parameters)", n_steps)
    check(len(runs) <= n_probes, "runs", f"at most n_probes ({n_probes}) Lanczos runs", len(runs))
    for run in runs:
        check(run.random_start, "runs", "Lanczos runs from random starts (a warm start is no probe)", "a warm start")
        check(run.steps >= n_steps, "runs", f"Lanczos runs of >= n_steps ({n_steps}) steps", run.steps)
    reused = [_gauss_quadrature(list(run.alphas[:n_steps]), list(run.betas[: n_steps - 1])) for run in runs]
    n_probes -= len(reused)
    if n_probes == 0:
        return _density_result(reused, n_steps, n_hvp=0)
    n_before = op.n_hvp
    V = random_vectors(op, n_probes, rng.generator(seed), kind="rademacher") / math.sqrt(op.size)
    bases = torch.zeros(n_probes, n_steps, op.size, dtype=op.dtype, device=op.device)
    alphas: list[list[float]] = [[] for _ in range(n_probes)]
    betas: list[list[float]] = [[] for _ in range(n_probes)]
    active = list(range(n_probes))
    for j in range(n_steps):
        bases[active, j] = V[active]
        W = op.matmat(V[active])
        still = []
        for row, p in enumerate(active):
            w = W[row]
            alphas[p].append(float(V[p] @ w))
            if j == n_steps - 1:
                continue
            w = _orthogonalize(w, bases[p, : j + 1])
            beta = float(torch.linalg.vector_norm(w))
            if beta <= _breakdown_tol(alphas[p], betas[p]):
                continue  # invariant subspace: this probe's quadrature is exact already
            betas[p].append(beta)
            V[p] = w / beta
            still.append(p)
        active = still
        if not active:
            break
    fresh = [_gauss_quadrature(alphas[p], betas[p]) for p in range(n_probes)]
    return _density_result(reused + fresh, n_steps, n_hvp=op.n_hvp - n_before)


def _density_result(quadratures: list[tuple[Tensor, Tensor]], n_steps: int, *, n_hvp: int) -> DensityResult:
    """Per-probe (nodes, weights) padded to ``n_steps`` (a probe that broke down early: its largest node, weight 0)."""
    nodes = torch.zeros(len(quadratures), n_steps, dtype=torch.float64)
    weights = torch.zeros_like(nodes)
    for p, (theta, weight) in enumerate(quadratures):
        m = theta.numel()
        nodes[p, :m], weights[p, :m] = theta, weight
        nodes[p, m:] = theta[-1]
    return DensityResult(nodes=nodes, weights=weights, n_hvp=n_hvp)
