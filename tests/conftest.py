"""Shared fixtures: the real Fashion-MNIST (never downloaded here) and a finished smoke sweep in a temporary store."""

from __future__ import annotations

import pytest

from landscape_core.data import load_fashion_mnist
from tests.sweeps.conftest import SMOKE, run_cli


@pytest.fixture(scope="session")
def fashion():
    """The full dataset, parsed once per session (a clear failure, not a skip, when it is missing)."""
    return load_fashion_mnist()


@pytest.fixture(scope="session")
def seed_sweep(tmp_path_factory):
    """``python -m sweeps.seeds --n 3 --preset smoke`` into a temporary root; returns (root, completed process)."""
    root = tmp_path_factory.mktemp("seed-sweep") / "mlruns"
    result = run_cli("sweeps.seeds", "--n", "3", *SMOKE, "--root", str(root))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, result
