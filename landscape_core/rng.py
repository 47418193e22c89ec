"""The one rule for seeded randomness in landscape_core: a CPU generator, float64 draws, then cast and move.

Every function that draws random numbers (Hessian probes and start vectors, random directions, sharpness starts,
weight noise, PAC-Bayes noise) takes a ``seed``, builds ``generator(seed)`` (a CPU ``torch.Generator``) and draws
through :func:`randn`, :func:`rand` or :func:`rademacher`: the numbers are drawn in float64 on the CPU, then cast to
the requested dtype and moved to the requested device. So a seed gives the same numbers, up to that final cast, for a
float64 and a float32 model and on every device: ``randn(shape, generator(s), dtype=torch.float32)`` equals
``torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64).to(torch.float32)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Device", "Shape", "generator", "rademacher", "rand", "randn"]

Shape = int | Sequence[int] | torch.Size
Device = torch.device | str | None
Generator = torch.Generator
FLOAT64 = torch.float64


def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``: the source of every draw below."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _shape(shape: Shape) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int) else tuple(int(n) for n in shape)


def _cast(draws: Tensor, dtype: torch.dtype, device: Device) -> Tensor:
    return draws.to(device=device if device is not None else draws.device, dtype=dtype)


def randn(shape: Shape, generator: Generator, *, dtype: torch.dtype = FLOAT64, device: Device = None) -> Tensor:
    """Standard normal draws of ``shape``: float64 on the CPU from ``generator``, then cast to ``dtype`` and moved to
    ``device`` (the CPU when None)."""
    return _cast(torch.randn(_shape(shape), generator=generator, dtype=torch.float64), dtype, device)


def rand(shape: Shape, generator: Generator, *, dtype: torch.dtype = FLOAT64, device: Device = None) -> Tensor:
    """Uniform draws in ``[0, 1)`` of ``shape``: float64 on the CPU from ``generator``, then cast and moved."""
    return _cast(torch.rand(_shape(shape), generator=generator, dtype=torch.float64), dtype, device)


def rademacher(shape: Shape, generator: Generator, *, dtype: torch.dtype = FLOAT64, device: Device = None) -> Tensor:
    """Random signs (+1 or -1, each with probability 1/2) of ``shape``: ``randint(0, 2)`` as int8 on the CPU from
    ``generator``, mapped to ``2 b - 1`` in float64, then cast and moved."""
    bits = torch.randint(0, 2, _shape(shape), generator=generator, dtype=torch.int8)
    return _cast(bits.double() * 2 - 1, dtype, device)
