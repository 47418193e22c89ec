"""Every metric key, defined once: what trials write (training, measure, trial_log) and what is read back (plots,
the population, the correlation analysis, the sweep report). Import a key from here; never spell it twice.

Keys are stable, grouped names: ``train/loss`` per epoch, ``final/test_loss``, ``hessian/lambda_max``,
``perturb/test_loss/sigma_0.05``, ``barrier/test_loss_aligned``, ... Functions build the families of keys.
"""

from __future__ import annotations

__all__ = [
    "CONTROL",
    "EOS_THRESHOLD",
    "LAMBDA_MAX",
    "LAMBDA_MAX_EPOCH",
    "MEASURES",
    "MEASURE_PREFIXES",
    "NORM_BASELINES",
    "NOT_IN_TABLE",
    "TARGETS",
    "analysis_of",
    "barrier",
    "curve_barrier",
    "instability",
    "LAMBDA_MAX_STEP",
    "TRAJECTORY_EXPLAINED",
    "is_measure",
    "perturb",
    "sigma_label",
]

# ---------------------------------------------------------------------------------------------- per epoch (step)
TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC = "train/loss", "train/acc", "test/loss", "test/acc"
EPOCH_SECONDS = "time/epoch_s"
#: lambda_max on the tracking subset after each epoch, and the edge-of-stability threshold (2 + 2 beta) / lr.
LAMBDA_MAX_EPOCH, EOS_THRESHOLD = "hessian/lambda_max_epoch", "hessian/eos_threshold"
#: lambda_max on the tracking subset every ``HessianConfig.track_every`` optimizer steps (MLflow step = that step).
LAMBDA_MAX_STEP = "hessian/lambda_max_step"
#: The share of the trajectory's variance along its first two principal directions (Li et al. 2018).
TRAJECTORY_EXPLAINED = ("trajectory/explained_pc1", "trajectory/explained_pc2")

# ---------------------------------------------------------------------------------------------- final (step 0)
FINAL_TRAIN_LOSS, FINAL_TRAIN_ACC = "final/train_loss", "final/train_acc"
FINAL_TEST_LOSS, FINAL_TEST_ACC = "final/test_loss", "final/test_acc"
TEST_ERROR, GAP_LOSS, GAP_ACC = "gen/test_error", "gen/gap_loss", "gen/gap_acc"
TRAIN_SECONDS = "time/train_s"
#: Epochs trained, and (with ``--stop-at-train-loss``) 1 when training stopped at that train loss, 0 when the epoch
#: cap came first: a result, not a failure.
EPOCHS_RUN, REACHED_STOP_LOSS = "train/epochs_run", "train/reached_stop_loss"
#: lr / (B (1 - momentum)) of the trial's protocol (``TrainConfig.noise_scale``).
NOISE_SCALE = "train/noise_scale"

# Geometry of the minimum (landscape_core.measure).
LAMBDA_MAX, RESIDUAL_MAX, CONVERGED, N_HVP = (
    "hessian/lambda_max",
    "hessian/residual_max",
    "hessian/converged",
    "hessian/n_hvp",
)
TRACE, TRACE_STDERR = "hessian/trace", "hessian/trace_stderr"
EPS_SHARPNESS, EPS_SHARPNESS_L2 = "sharpness/eps", "sharpness/eps_l2"
ADAPTIVE_SHARPNESS, ADAPTIVE_SHARPNESS_LINF = "sharpness/adaptive", "sharpness/adaptive_linf"
M_SHARPNESS = "sharpness/adaptive_m"
#: Rescaling-invariant measures (landscape_core.invariant): lambda_max and the trace of diag|w| H diag|w|, and the
#: Fisher-Rao norm.
LAMBDA_MAX_NORMALIZED, TRACE_NORMALIZED = "hessian/lambda_max_normalized", "hessian/trace_normalized"
NORMALIZED_CONVERGED, TRACE_NORMALIZED_STDERR = "hessian/normalized_converged", "hessian/trace_normalized_stderr"
FISHER_RAO = "norm/fisher_rao"
PAC_BAYES, PAC_BAYES_MAG = "flatness/pac_bayes", "flatness/pac_bayes_mag"
#: 1 when the bisection bracketed sigma* inside its search interval, 0 when sigma* sits on an end of it.
PAC_BAYES_BRACKETED, PAC_BAYES_MAG_BRACKETED = "flatness/pac_bayes_bracketed", "flatness/pac_bayes_mag_bracketed"
#: v^T H v along unit directions (one HVP each), and the largest relative difference of the float64 Richardson
#: finite-difference check from it (a diagnostic, not a measure).
CURVATURE_RANDOM, CURVATURE_TOP = "curvature/random_mean", "curvature/top_eigenvector"
CURVATURE_FD_REL_DIFF = "curvature/fd_rel_diff_max"
WEIGHT_NORM, DIST_INIT = "norm/weights", "norm/dist_init"


def lambda_k(k: int) -> str:
    """The k-th largest Hessian eigenvalue (1-based)."""
    return f"hessian/lambda_{k}"


def sigma_label(sigma: float) -> str:
    """``sigma_0.05`` (two decimals from 0.01 up, ``%g`` below)."""
    return f"sigma_{sigma:.2f}" if sigma >= 0.01 else f"sigma_{sigma:g}"


def perturb(quantity: str, sigma: float) -> str:
    """Weight-noise robustness at ``sigma``: ``quantity`` is ``{split}_{what}`` with split ``train`` (the predictor,
    on training images) or ``test`` (the paper's Figure 6, never a predictor) and what in loss, loss_stderr, acc,
    acc_stderr, loss_delta."""
    return f"perturb/{quantity}/{sigma_label(sigma)}"


def barrier(split: str, quantity: str, aligned: bool = False) -> str:
    """A barrier on the linear path: ``split`` train or test, ``quantity`` loss, error or peak_loss."""
    return f"barrier/{split}_{quantity}{'_aligned' if aligned else ''}"


def curve_barrier(split: str, quantity: str, aligned: bool = False) -> str:
    """A barrier on the trained Bezier curve to the reference minimum (``barrier/curve_test_loss_aligned``)."""
    return f"barrier/curve_{split}_{quantity}{'_aligned' if aligned else ''}"


def instability(split: str, quantity: str, aligned: bool = False) -> str:
    """A barrier between the two branches of an instability pair (``instability/test_error``)."""
    return f"instability/{split}_{quantity}{'_aligned' if aligned else ''}"


def slice_at_span(direction: str) -> str:
    """The 1D slice's mean loss at both ends of its span, along ``direction`` (random or top_eigenvector)."""
    return f"slice/{direction}_loss_at_span"


def invariance(measure: str) -> str:
    """The parent run's audit metric: max/min of ``measure`` over function-preserving rescalings of one minimum."""
    return f"invariance/{measure}"


def seconds(analysis: str) -> str:
    """Wall time of one analysis of ``measure``."""
    return f"time/{analysis}_s"


# ---------------------------------------------------------------------------------------------- what is read back
#: Generalization targets (per child run, final values).
TARGETS = {"test_loss": FINAL_TEST_LOSS, "test_error": TEST_ERROR, "gap_loss": GAP_LOSS, "gap_acc": GAP_ACC}
#: Sharpness measures with fixed names; per-sigma noise deltas and barriers are discovered by prefix.
#: Every one is computed on training images only (``splits.SUBSETS``): nothing in the correlation table reads the
#: test images its targets are computed on.
MEASURES = (
    LAMBDA_MAX,
    TRACE,
    LAMBDA_MAX_NORMALIZED,
    TRACE_NORMALIZED,
    EPS_SHARPNESS,
    EPS_SHARPNESS_L2,
    ADAPTIVE_SHARPNESS,
    ADAPTIVE_SHARPNESS_LINF,
    M_SHARPNESS,
    FISHER_RAO,
    CURVATURE_RANDOM,
)
#: Logged on every trial but kept out of the correlation table, with the reason (issue 21). PAC-Bayes sigma*
#: measured no test-retest reliability at all: Spearman -0.13 (quick preset) and -0.21 (paper preset, 2,048 images)
#: between two image subsets of the same 20 minima, and only -0.16 to 0.11 under another seed on the same images.
#: Every trial draws its weight noise from the same seed, so its ranking follows those fixed draws, not the minima;
#: a verdict on it would be a verdict on the draws.
NOT_IN_TABLE = {
    PAC_BAYES: "unreliable: test-retest Spearman -0.13 (quick) and -0.21 (paper); its ranking follows the noise draws",
    PAC_BAYES_MAG: "unreliable: test-retest Spearman -0.06 (quick); its ranking follows the noise draws",
}
#: Train-set weight-noise deltas and train-set barriers to the study's reference minimum. The test-set noise and
#: test barriers are the paper's figures, not predictors.
MEASURE_PREFIXES = ("perturb/train_loss_delta/", "barrier/train_")
NORM_BASELINES = (WEIGHT_NORM, DIST_INIT)
#: Measures whose estimate can fail to converge, with the 0/1 metric that says it did: a run whose flag is 0 is
#: counted (and can be excluded) by the correlation report.
RELIABILITY = {
    LAMBDA_MAX: CONVERGED,
    LAMBDA_MAX_NORMALIZED: NORMALIZED_CONVERGED,
    PAC_BAYES: PAC_BAYES_BRACKETED,
    PAC_BAYES_MAG: PAC_BAYES_MAG_BRACKETED,
}
#: The covariate of the partial correlations: the final train loss.
CONTROL = FINAL_TRAIN_LOSS


#: Which analysis (``config.ANALYSES``) computes the keys under each prefix, most specific first; keys under none of
#: them (the norms, the train loss) are always measured.
ANALYSIS_PREFIXES = (
    ("hessian/trace", "trace"),
    ("hessian/", "hessian"),
    ("sharpness/", "sharpness"),
    ("flatness/", "flatness"),
    ("perturb/train", "noise"),
    ("perturb/test", "noise_test"),
    ("curvature/", "curvature"),
    ("barrier/curve_", "curve"),
    ("barrier/", "connectivity"),
    ("trajectory/", "trajectory"),
)


def analysis_of(key: str) -> str | None:
    """The analysis that computes metric ``key`` (``hessian/trace_normalized`` -> ``trace``); None when every trial
    measures it (the norms, the train loss)."""
    return next((analysis for prefix, analysis in ANALYSIS_PREFIXES if key.startswith(prefix)), None)


def is_measure(key: str) -> bool:
    """True for keys the correlation analysis treats as measures (sharpness, norms, train loss as a control)."""
    return key in MEASURES or key in NORM_BASELINES or key == CONTROL or key.startswith(MEASURE_PREFIXES)
