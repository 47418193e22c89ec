"""Which device a run uses: ``auto`` means CUDA when available, else the CPU; any other name must be one this
machine has."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from landscape_core.errors import UsageError

__all__ = ["DEVICES", "FORWARD_DTYPES", "cpu_threads_for_load", "forward_dtype", "resolve_device", "threads_for_load"]

#: How a device may be named (``--device``).
DEVICES = "auto, cpu, cuda, cuda:N or mps"

#: The arithmetic of forward-only evaluations (``AnalysisConfig.forward_dtype``).
FORWARD_DTYPES = ("auto", "float32", "bfloat16")


def forward_dtype(name: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype forward-only evaluations run in on ``device`` (None: the model's own, float32).

    ``auto`` is bfloat16 where the hardware computes it natively: a CUDA GPU that supports it, or a CPU whose oneDNN
    has bf16 kernels (AVX512-BF16 or AMX; there SeedCNN's forward pass runs ~3.5x faster than in float32, measured
    on this project's 2-core reference machine); float32 elsewhere, where bf16 is emulated and slower.
    """
    if name not in FORWARD_DTYPES:
        raise UsageError(f"Expected `forward_dtype` in {FORWARD_DTYPES}, got {name!r}")
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if _native_cpu_bf16() else None
    return None


def _native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX), as torch's own CPU probes say."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` means CUDA when available, else CPU; any other name is taken as torch spells it.

    Raises:
        UsageError: a name torch does not know or this project does not run on (``gpu``, ``meta``), or a device
            this machine does not have (``cuda`` without a GPU, ``cuda:3`` with two).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"Expected `--device` one of {DEVICES}, got {str(device)!r}") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(
                f"device {str(device)!r} is not available: this machine has no CUDA GPU (use --device cpu)"
            )
        if parsed.index is not None and parsed.index >= count:
            raise UsageError(
                f"device {str(device)!r} is not available: this machine has {count} CUDA GPU(s), "
                f"cuda:0..cuda:{count - 1}"
            )
        return parsed
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"device {str(device)!r} is not available on this machine (use --device cpu)")
        return parsed
    raise UsageError(f"Expected `--device` one of {DEVICES}, got {str(device)!r}")


def cpu_threads_for_load(requested: int, *, load: float | None = None, cores: int | None = None) -> int:
    """The CPU threads torch should use now: ``requested``, less the cores that other programs keep busy (the
    1-minute load average ``load`` less this process's own ``requested`` threads), at least 1. ``load`` and ``cores``
    default to this machine's (its load average, the CPUs this process may run on).

    On a busy machine every one of the many small parallel regions of an HVP waits for all its threads, and a thread
    the scheduler has parked stalls the others (issue 24: on 2 cores beside 4 busy processes, an HVP over 2,048 images
    in passes of 128 took 15.1 s on 2 threads and 4.9 s on 1; 1.0 s on 2 threads when idle). So a process that shares
    its cores runs on the cores it has. The load average lags by about a minute; an idle machine keeps ``requested``.
    """
    try:
        cores = len(os.sched_getaffinity(0)) if cores is None else cores
        load = os.getloadavg()[0] if load is None else load
    except (AttributeError, OSError):  # no affinity or load average on this platform: change nothing
        return requested
    others = max(0.0, load - requested)
    return max(1, min(requested, round(cores - others)))


@contextmanager
def threads_for_load(device: torch.device | str) -> Iterator[None]:
    """On a CPU device, run the block on ``cpu_threads_for_load(torch.get_num_threads())`` threads, then restore
    torch's setting; elsewhere nothing changes."""
    if torch.device(device).type != "cpu":
        yield
        return
    requested = torch.get_num_threads()
    adapted = cpu_threads_for_load(requested)
    if adapted != requested:
        torch.set_num_threads(adapted)
    try:
        yield
    finally:
        if adapted != requested:
            torch.set_num_threads(requested)
