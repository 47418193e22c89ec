"""Which device a run uses: ``auto`` means CUDA when available, else the CPU; any other name must be one this
machine has."""

from __future__ import annotations

import torch

from landscape_core.errors import UsageError

__all__ = ["DEVICES", "resolve_device"]

#: How a device may be named (``--device``).
DEVICES = "auto, cpu, cuda, cuda:N or mps"


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
