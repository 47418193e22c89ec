"""Rescaling-invariant measures of a minimum: the Hessian in the normalized parametrization and the Fisher-Rao norm.

A function-preserving rescaling (:mod:`landscape_core.invariance`) is a positive diagonal map ``w' = D w`` with
``L'(w') = L(D^-1 w')``. It turns the gradient into ``D^-1 g`` and the Hessian into ``D^-1 H D^-1``, which is why
lambda_max and the trace of ``H`` change under it (Dinh et al. 2017). The measures here cancel ``D`` exactly:

- :func:`normalized_hessian`: ``diag|w| H diag|w|``, whose top eigenvalue and trace are logged as
  ``hessian/lambda_max_normalized`` and ``hessian/trace_normalized``. ``(D|w|) D^-1 H D^-1 (D|w|) = |w| H |w|``.
- :func:`fisher_rao_norm`: ``mean_i <w, grad_w l_i(w)>^2``, ``norm/fisher_rao``. ``<D w, D^-1 g> = <w, g>``.

Both are invariant for every positive diagonal rescaling that preserves the function, not only the per-layer ones the
audit applies, and both are exact (no search): the audit finds ratios of 1 up to float32 rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from landscape_core.functional import DEFAULT_CHUNK, Data, chunks, effective_chunk, eval_mode, flatten, param_dict
from landscape_core.hessian import HessianOperator, ScaledOperator

__all__ = ["fisher_rao_norm", "normalized_hessian"]


def normalized_hessian(op: HessianOperator) -> ScaledOperator:
    """The Hessian in the normalized parametrization, ``diag|w| H diag|w|``, of the model ``op`` was built on.

    Its top eigenvalue is Tsuzuku et al. 2020's normalized sharpness ("Normalized flat minima: exploring scale
    invariant definition of flat minima for neural networks using PAC-Bayesian analysis", ICML) with elementwise
    normalization, and the second-order limit of Andriushchenko et al. 2023's adaptive worst-case sharpness at a
    minimum: ``max_{||u||_2 <= rho} L(w + |w| u) - L(w) ~ rho^2 / 2 * lambda_max(|w| H |w|)``. Its trace is the
    second-order limit of the adaptive average-case sharpness, ``E_u L(w + |w| u) - L(w) ~ sigma^2 / 2 *
    tr(|w| H |w|)`` for ``u ~ N(0, sigma^2 I)``. Pass it to ``hessian.top_eigenvalues`` and ``hessian.hessian_trace``.
    """
    return ScaledOperator(op, flatten(op.params).abs())


def fisher_rao_norm(model: nn.Module, data: Data, *, chunk_size: int = DEFAULT_CHUNK) -> float:
    """The (empirical) Fisher-Rao norm, ``||w||_fr^2 = mean_i <w, grad_w l_i(w)>^2`` over the examples of ``data``.

    ``l_i`` is example i's cross-entropy. Liang, Poggio, Rakhlin and Stokes 2019 ("Fisher-Rao metric, geometry, and
    complexity of neural networks", AISTATS) define the norm as ``<w, I(w) w>`` with ``I`` the Fisher information,
    and show that for a ReLU network it equals the expected squared ``<w, grad_w l>``; Jiang et al. 2019
    ("Fantastic generalization measures and where to find them", ICLR 2020) use this empirical form (their
    ``fisher-rao``). It is rescaling-invariant since ``<D w, D^-1 g> = <w, g>`` (see the module).

    ``<w, grad_w l_i>`` is the directional derivative of ``l_i`` along ``w`` itself, so one forward-mode pass
    (``jvp`` with tangent ``w``) gives it for every example at once: the cost of about two forward passes.

    Args:
        model: the network at ``w``; not modified (evaluated in eval mode).
        data: ``(inputs [N, ...], targets [N])``, training images.
        chunk_size: examples per forward pass.

    Returns:
        ``||w||_fr^2`` as a Python float.
    """
    params = param_dict(model)
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def losses(p: dict[str, Tensor], batch: Data) -> Tensor:
        logits = functional_call(model, {**buffers, **p}, (batch[0],))
        return torch.nn.functional.cross_entropy(logits, batch[1], reduction="none")

    total = 0.0
    with eval_mode(model), torch.no_grad():
        for batch, weight in chunks(data, effective_chunk(chunk_size, data[0].device)):
            derivative = jvp(lambda p, batch=batch: losses(p, batch), (params,), (params,))[1]
            total += float(derivative.double().square().mean()) * weight
    return total
