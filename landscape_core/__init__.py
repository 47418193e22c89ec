"""Pure numerics of the loss landscape: data, model, training and every geometry measure. No mlflow, no optuna."""

from __future__ import annotations

from landscape_core.config import PRESETS, AnalysisConfig, Preset, TrainConfig, get_preset
from landscape_core.connectivity import align, barrier, interpolate
from landscape_core.data import DataMissingError, FashionMNIST, load_fashion_mnist
from landscape_core.ensemble import train_ensemble
from landscape_core.flatness import distance_from_init, pac_bayes_sigma, weight_norm
from landscape_core.hessian import HessianOperator, hessian_trace, hvp, spectral_density, top_eigenvalues
from landscape_core.measure import LambdaMaxTracker, Measurements, measure, population_barriers
from landscape_core.models import SeedCNN, TinyCNN, build_model, count_parameters
from landscape_core.sharpness import adaptive_sharpness, eps_sharpness, weight_noise_robustness
from landscape_core.slices import directional_curvature, slice_1d, slice_2d
from landscape_core.train import DivergenceError, EpochMetrics, TrainResult, train

__all__ = [
    "PRESETS",
    "AnalysisConfig",
    "DataMissingError",
    "DivergenceError",
    "EpochMetrics",
    "FashionMNIST",
    "HessianOperator",
    "LambdaMaxTracker",
    "Measurements",
    "Preset",
    "SeedCNN",
    "TinyCNN",
    "TrainConfig",
    "TrainResult",
    "adaptive_sharpness",
    "align",
    "barrier",
    "build_model",
    "count_parameters",
    "directional_curvature",
    "distance_from_init",
    "eps_sharpness",
    "get_preset",
    "hessian_trace",
    "hvp",
    "interpolate",
    "load_fashion_mnist",
    "measure",
    "pac_bayes_sigma",
    "population_barriers",
    "slice_1d",
    "slice_2d",
    "spectral_density",
    "top_eigenvalues",
    "train",
    "train_ensemble",
    "weight_noise_robustness",
    "weight_norm",
]
