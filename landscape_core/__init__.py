"""Pure numerics of the loss landscape: data, model, training and every geometry measure. No mlflow, no optuna."""

from __future__ import annotations

from landscape_core.config import PRESETS, AnalysisConfig, Preset, TrainConfig, get_preset
from landscape_core.data import DataMissingError, FashionMNIST, load_fashion_mnist
from landscape_core.models import SeedCNN, TinyCNN, build_model, count_parameters
from landscape_core.train import DivergenceError, EpochMetrics, TrainResult, train

__all__ = [
    "PRESETS",
    "AnalysisConfig",
    "DataMissingError",
    "DivergenceError",
    "EpochMetrics",
    "FashionMNIST",
    "Preset",
    "SeedCNN",
    "TinyCNN",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "count_parameters",
    "get_preset",
    "load_fashion_mnist",
    "train",
]
