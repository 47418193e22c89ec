"""The stable metric keys: what trials log and what the correlation analysis reads back."""

from __future__ import annotations

__all__ = ["CONTROL", "MEASURE_PREFIXES", "MEASURES", "NORM_BASELINES", "TARGETS", "is_measure"]

# Generalization targets (per child run, final values).
TARGETS = {
    "test_loss": "final/test_loss",
    "test_error": "gen/test_error",
    "gap_loss": "gen/gap_loss",
    "gap_acc": "gen/gap_acc",
}

# Sharpness measures with fixed names; per-sigma noise deltas and barriers are discovered by prefix.
MEASURES = (
    "hessian/lambda_max",
    "hessian/trace",
    "sharpness/eps",
    "sharpness/adaptive",
    "flatness/pac_bayes",
    "flatness/pac_bayes_mag",
    "curvature/random_mean",
)
MEASURE_PREFIXES = ("perturb/test_loss_delta/", "barrier/")
NORM_BASELINES = ("norm/weights", "norm/dist_init")
CONTROL = "final/train_loss"


def is_measure(key: str) -> bool:
    """True for keys the correlation analysis treats as measures (sharpness, norms, train loss as a control)."""
    return key in MEASURES or key in NORM_BASELINES or key == CONTROL or key.startswith(MEASURE_PREFIXES)
