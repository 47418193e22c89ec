"""landscape_core.measure: the warm start a trial hands to the final top eigenvalues."""

from __future__ import annotations

import pytest
import torch

from landscape_core.config import ANALYSES, AnalysisConfig, HessianConfig
from landscape_core.hessian import top_eigenvalues
from landscape_core.measure import measure
from landscape_core.splits import TrialData

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_warm_start_gives_the_same_top_eigenvalue_in_fewer_hvps(trained_tiny, learnable_data) -> None:
    n = learnable_data[0].shape[0]
    config = AnalysisConfig(
        hessian=HessianConfig(subset=n, chunk_size=n, top_k=1, max_iter=60, tol=1e-6),
        skip=frozenset(ANALYSES) - {"hessian"},
    )

    def run(v0=None):
        return measure(
            trained_tiny,
            init_params=None,
            data=TrialData(train=learnable_data, test=learnable_data),
            config=config,
            v0=v0,
        ).scalars

    cold = run()
    # What LambdaMaxTracker hands over: an approximate top eigenvector (here: the exact one, perturbed by 1%).
    exact = top_eigenvalues(trained_tiny, learnable_data, k=1, tol=1e-8, max_iter=60).eigenvectors[0]
    noise = torch.randn(exact.shape, generator=torch.Generator().manual_seed(0), dtype=exact.dtype)
    warm = run(exact + 0.01 * noise / noise.norm())
    assert cold["hessian/converged"] == warm["hessian/converged"] == 1.0
    assert warm["hessian/lambda_max"] == pytest.approx(cold["hessian/lambda_max"], rel=1e-5)
    assert warm["hessian/n_hvp"] < cold["hessian/n_hvp"], (warm["hessian/n_hvp"], cold["hessian/n_hvp"])
