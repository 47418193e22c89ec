"""Load a trial's checkpoint back from its run (``torch.load(weights_only=True)``: never unpickles code)."""

from __future__ import annotations

import pickle
import re
import tempfile
from collections.abc import Mapping

import torch
from mlflow.tracking import MlflowClient
from torch import nn

from landscape_core.models import build_model

__all__ = ["CheckpointError", "load_checkpoint", "load_run_model"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or does not fit the model."""


def load_checkpoint(
    path: str, model_name: str = "seed_cnn", device: torch.device | str = "cpu", *, width: float = 1.0
) -> nn.Module:
    """A model of ``model_name`` at ``width`` on ``device`` (in that device's layout, see ``build_model``) with the
    weights in ``path``, in eval mode.

    Raises:
        CheckpointError: one line saying why: a missing file, a file that is not a weights-only checkpoint, or
            weights that do not fit the model.
    """
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"cannot load checkpoint {path}: no such file") from None
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False, which would run whatever code the file holds.
        raise CheckpointError(
            f"cannot load checkpoint {path}: not a weights-only checkpoint (corrupted, or it holds Python objects, "
            "which are never unpickled)"
        ) from None
    except Exception as error:  # torch raises RuntimeError/EOFError/... for truncated or foreign files
        raise CheckpointError(f"cannot load checkpoint {path}: corrupted ({_first_line(error)})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"cannot load checkpoint {path}: not a state dict of tensors")
    model = build_model(model_name, device, width=width)
    try:
        model.load_state_dict(state)
    except Exception as error:
        reason = _first_line(error)
        raise CheckpointError(f"cannot load checkpoint {path}: does not fit {model_name} ({reason})") from None
    return model.eval()


def _first_line(error: Exception, limit: int = 300) -> str:
    """The error on one line (its lines joined, torch's colour codes dropped), at most ``limit`` characters."""
    text = " ".join(line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load_run_model(
    client: MlflowClient,
    run_id: str,
    model_name: str = "seed_cnn",
    device: torch.device | str = "cpu",
    *,
    width: float = 1.0,
) -> nn.Module:
    """Download ``checkpoint/model.pt`` of a run and load it onto ``device`` as ``model_name`` at ``width``."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "checkpoint/model.pt", tmp)
        except Exception as error:
            raise CheckpointError(f"run {run_id} has no readable checkpoint: {error}".splitlines()[0]) from None
        return load_checkpoint(path, model_name, device, width=width)
