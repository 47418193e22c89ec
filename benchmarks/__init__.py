"""Reproducible speed and memory measurements, each a ratio against a baseline timed in the same run.

``python -m benchmarks.run [--quick] [--json PATH] [--only NAME]`` runs them and prints one table; see
:mod:`benchmarks.run`. Each benchmark is a function ``(Context) -> list[Result]`` registered in ``BENCHMARKS``.
"""

from __future__ import annotations

from benchmarks.common import Context, Result

__all__ = ["BENCHMARKS", "Context", "Result"]


def __getattr__(name: str):  # the registry imports every benchmark module: load it only when asked for
    if name == "BENCHMARKS":
        from benchmarks.run import BENCHMARKS

        return BENCHMARKS
    raise AttributeError(name)
