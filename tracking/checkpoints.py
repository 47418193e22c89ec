"""Load a trial's checkpoint back from its run (``torch.load(weights_only=True)``: never unpickles code)."""

from __future__ import annotations

import tempfile

import torch
from mlflow.tracking import MlflowClient
from torch import nn

from landscape_core.models import build_model

__all__ = ["CheckpointError", "load_checkpoint", "load_run_model"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or does not fit the model."""


def load_checkpoint(path: str, model_name: str = "seed_cnn") -> nn.Module:
    """A model of ``model_name`` with the weights in ``path``, in eval mode."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        model = build_model(model_name)
        model.load_state_dict(state)
    except Exception as error:  # torch raises RuntimeError/UnpicklingError/EOFError/KeyError for bad files
        raise CheckpointError(
            f"cannot load checkpoint {path}: {type(error).__name__}: {error}".splitlines()[0]
        ) from None
    return model.eval()


def load_run_model(client: MlflowClient, run_id: str, model_name: str = "seed_cnn") -> nn.Module:
    """Download ``checkpoint/model.pt`` of a run and load it."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "checkpoint/model.pt", tmp)
        except Exception as error:
            raise CheckpointError(f"run {run_id} has no readable checkpoint: {error}".splitlines()[0]) from None
        return load_checkpoint(path, model_name)
