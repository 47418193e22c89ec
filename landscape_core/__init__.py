"""Pure numerics of the loss landscape: data, model, training and every geometry measure. No mlflow, no optuna.

The public names below load their module on first use (PEP 562), so ``import landscape_core`` stays cheap and
``python -m landscape_core.data`` does not find its own module imported already by this package.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module of landscape_core that defines it.
_EXPORTS = {
    "AnalysisConfig": "config",
    "DataMissingError": "data",
    "DivergenceError": "train",
    "EpochMetrics": "train",
    "FashionMNIST": "data",
    "HessianOperator": "hessian",
    "LambdaMaxTracker": "measure",
    "Measurements": "measure",
    "PRESETS": "config",
    "Preset": "config",
    "SeedCNN": "models",
    "TinyCNN": "models",
    "TrainConfig": "config",
    "TrainResult": "train",
    "TrialData": "splits",
    "UsageError": "errors",
    "adaptive_sharpness": "sharpness",
    "audit_invariance": "measure",
    "align": "connectivity",
    "barrier": "connectivity",
    "build_model": "models",
    "count_parameters": "models",
    "directional_curvature": "slices",
    "distance_from_init": "flatness",
    "eps_sharpness": "sharpness",
    "finite_difference_curvature": "slices",
    "fisher_rao_norm": "invariant",
    "get_preset": "config",
    "hessian_trace": "hessian",
    "hvp": "hessian",
    "interpolate": "connectivity",
    "load_fashion_mnist": "data",
    "m_sharpness": "sharpness",
    "maximize": "ascent",
    "measure": "measure",
    "normalized_hessian": "invariant",
    "pac_bayes_sigma": "flatness",
    "population_barriers": "measure",
    "rescaled": "invariance",
    "slice_1d": "slices",
    "slice_2d": "slices",
    "spectral_density": "hessian",
    "top_eigenvalues": "hessian",
    "train": "train",
    "train_ensemble": "ensemble",
    "weight_noise_robustness": "sharpness",
    "weight_norm": "flatness",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'landscape_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"landscape_core.{_EXPORTS[name]}"), name)
    # Importing a submodule binds its name on this package (``train``, ``measure``): the function wins, as it would
    # with eager imports.
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
