"""Which device a run uses: ``auto`` means CUDA when available, else the CPU; any other name must be one this
machine has."""

from __future__ import annotations

import torch

from landscape_core.errors import UsageError

__all__ = ["DEVICES", "FORWARD_DTYPES", "forward_dtype", "resolve_device"]

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
