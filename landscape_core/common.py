"""Helpers every module of the project shares: argument checks with one message format, and JSON-safe values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["check", "check_count", "check_positive", "json_safe"]


def check(condition: bool, name: str, expectation: str, value: Any, error: type[Exception] = ValueError) -> None:
    """Raise ``error("Expected `name` expectation, got value")`` unless ``condition``."""
    if not condition:
        raise error(f"Expected `{name}` {expectation}, got {value!r}")


def check_count(name: str, value: int, minimum: int = 1) -> None:
    """``value >= minimum`` (a count: steps, draws, probes)."""
    check(value >= minimum, name, f">= {minimum}", value)


def check_positive(name: str, value: float) -> None:
    """``value > 0`` (a radius, a tolerance, a step size); NaN fails."""
    check(value > 0, name, "> 0", value)


def json_safe(value: Any) -> Any:
    """``value`` with tensors and arrays as lists, tuples as lists, dict keys as strings and non-finite floats as
    None, so ``json.dumps`` accepts it and the file stays valid JSON (NaN is not)."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
