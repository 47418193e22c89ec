"""Shared fixtures: the real Fashion-MNIST (never downloaded here) and a finished smoke sweep in a temporary store."""

from __future__ import annotations

import pytest

from landscape_core.data import load_fashion_mnist


@pytest.fixture(scope="session")
def fashion():
    """The full dataset, parsed once per session (a clear failure, not a skip, when it is missing)."""
    return load_fashion_mnist()
