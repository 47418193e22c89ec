"""The paper's A-versus-B question asked of a whole population: in how many pairs does the flatter model generalize
better?

The paper compares two minima (two seeds) and concludes that the flatter one generalizes better. Over a population of
n runs this is a question about all n (n - 1) / 2 pairs:

* :func:`pair_agreement`: the fraction of pairs in which the flatter model (smaller measure) has the lower target,
  with a confidence interval that treats runs, not pairs, as the independent units (each run is in n - 1 pairs);
* :func:`sign_error`: the sign-error view of Dziugaite et al. (2020, "In search of robust measures of
  generalization", NeurIPS): the measure's error in predicting which of two models generalizes better, per
  environment (pairs of runs that differ in exactly one hyperparameter), with its worst case over environments;
* :func:`claim_verdict` and :func:`claim_sentence`: what the fraction and its interval say about the paper's claim,
  in one word and in one sentence.

Conventions: the measure ``x`` is oriented like every sharpness measure of the report, larger = sharper, so "flatter"
is "smaller x"; the target ``y`` is a loss or error, smaller = better. Pure numpy/scipy; randomness is an argument
(``seed``); bad input raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from landscape_core.common import check, json_safe
from tracking.population_stats import (
    REPETITION_AXES,
    _as_labels_1d,
    _cells,
    _check_alpha,
    _check_pair,
    _check_resamples,
    _finite_mask,
    hyperparameter_codes,
)

__all__ = [
    "Environment",
    "PairAgreement",
    "SignError",
    "claim_sentence",
    "claim_verdict",
    "pair_agreement",
    "sign_error",
]

_NAN = float("nan")
#: The chance level of the A-versus-B question: a measure that knows nothing is right in half of the pairs.
CHANCE = 0.5


@dataclass(frozen=True)
class PairAgreement:
    """How often the flatter of two models has the lower target, over all pairs of runs of a population.

    Attributes:
        fraction: ``n_agree / n_pairs``: among pairs untied in both x and y, the fraction in which the run with the
            smaller x has the smaller y. On untied data it equals ``(1 + tau_a) / 2`` (Kendall's tau-a).
        ci_low: Lower end of its confidence interval at level ``1 - alpha`` (see ``ci_method``).
        ci_high: Upper end.
        ci_method: ``"cluster_bootstrap"`` (runs resampled, percentile interval), ``"disjoint_pairs"`` (the
            fallback when the bootstrap has no spread: a Clopper-Pearson interval on n // 2 independent pairs), or
            ``"undefined"`` (no untied pair: fraction and interval NaN).
        alpha: One minus the confidence level.
        n_runs: Runs used (finite x and y).
        n_dropped: Runs dropped for a NaN or infinite x or y.
        n_pairs: Pairs untied in both x and y: the pairs that count.
        n_agree: Of those, the pairs in which the flatter model has the lower target (concordant pairs).
        n_tied: Pairs left out because x or y is tied.
    """

    fraction: float
    ci_low: float
    ci_high: float
    ci_method: str
    alpha: float
    n_runs: int
    n_dropped: int
    n_pairs: int
    n_agree: int
    n_tied: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-safe dict (NaN as None)."""
        return {f.name: json_safe(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Environment:
    """One environment of :func:`sign_error`: the pairs of runs at two hyperparameter points that differ in one axis.

    Attributes:
        axis: The axis whose value differs; None for the single environment of all pairs (no axes given, or none
            varies).
        values: The two values of ``axis`` (empty for the single environment).
        fixed: The values of every other varying hyperparameter axis, shared by both points.
        sign_error: Mean sign-error over the environment's pairs of runs.
        n_pairs: Pairs of runs that count (untied in the target beyond ``tolerance``).
    """

    axis: str | None
    values: tuple[Any, ...]
    fixed: dict[str, Any]
    sign_error: float
    n_pairs: int


@dataclass(frozen=True)
class SignError:
    """Dziugaite et al.'s sign-error of a measure over the environments of a population.

    Attributes:
        mean: Mean of the environments' sign-errors (each environment weighs one).
        worst: Their maximum: the robust sign-error over this family of environments (Dziugaite et al.'s
            ``sup_e``); 0.5 is a coin flip, 1 means the measure ranks some environment's pairs backwards every time.
        quantile: Their ``quantile_level`` quantile (``numpy.quantile``, linear interpolation).
        quantile_level: The level of ``quantile``, e.g. 0.9.
        n_environments: Number of environments with at least one pair that counts.
        by_axis: Per varying axis, ``{"mean": ..., "worst": ..., "n_environments": ...}`` over its environments.
        environments: Every environment, axis-major.
    """

    mean: float
    worst: float
    quantile: float
    quantile_level: float
    n_environments: int
    by_axis: dict[str, dict[str, float]]
    environments: tuple[Environment, ...]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-safe dict (NaN as None; environments as dicts)."""
        return json_safe(dataclasses.asdict(self))


# --------------------------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------------------------


def _finite_runs(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x and y as float arrays, the mask of runs with both finite; ValueError when fewer than 2 such runs."""
    xa, ya = _check_pair(x, y)
    mask = _finite_mask(xa, ya)
    n = int(mask.sum())
    if n < 2:
        raise ValueError(f"Expected at least 2 runs with finite `x` and `y` (a pair), got {n}")
    return xa, ya, mask


def _signs(v: np.ndarray) -> np.ndarray:
    """``sign(v_i - v_j)`` as an (n, n) matrix."""
    return np.sign(v[:, None] - v[None, :])


# --------------------------------------------------------------------------------------------------------------
# The fraction of pairs
# --------------------------------------------------------------------------------------------------------------


def pair_agreement(
    x: ArrayLike, y: ArrayLike, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> PairAgreement:
    """The fraction of pairs of runs in which the flatter model (smaller x) has the lower target y, with a CI.

    Over the pairs ``i < j`` with ``x_i != x_j`` and ``y_i != y_j``::

        fraction = #{sign(x_i - x_j) = sign(y_i - y_j)} / #{pairs untied in x and y} = C / (C + D)

    with C and D the concordant and discordant pairs, so on untied data ``fraction = (1 + tau_a) / 2`` (Kendall's
    tau-a = tau-b there). Pairs tied in x (the measure cannot pick one) or in y (no model is better) are left out
    and counted in ``n_tied``.

    The interval: each run is in n - 1 pairs, so the pairs are not independent and a binomial interval over the
    n (n - 1) / 2 pairs would be far too narrow. The runs are the independent units, so this is a cluster
    bootstrap over runs: each of ``n_boot`` resamples draws n runs with replacement (``rng.integers(0, n,
    size=(n_boot, n))``, ``rng = numpy.random.default_rng(seed)``) and recomputes the fraction over all pairs of
    distinct positions of the resample; a run drawn twice is a pair tied in x and y, so it does not count, and a pair
    of runs drawn w_i and w_j times counts w_i w_j times (the bootstrap of a U-statistic). With the concordance
    indicators ``A_ij`` and ``D_ij`` and the draw counts w: ``C_b = w^T A w / 2``, ``D_b = w^T D w / 2``. The
    interval is the percentile interval ``[q_{alpha/2}, q_{1 - alpha/2}]`` of the finite resampled fractions.

    Fallback (``ci_method="disjoint_pairs"``): when every untied pair agrees (or every one disagrees) the resamples
    have no spread and the percentile interval has zero width. Then the interval is Clopper-Pearson's for
    ``fraction * k`` successes in ``k = n // 2`` trials: a degree-2 U-statistic is at least as precise as the mean of
    n // 2 disjoint, independent pairs (Hoeffding 1948: ``Var U <= 2 Var h / n``), so this is conservative. E.g. 10
    runs that agree in all 45 pairs give [48%, 100%]: not enough to tell.

    Args:
        x: Shape (n,), the measure, larger = sharper.
        y: Shape (n,), the target (e.g. test loss), smaller = better.
        n_boot: Bootstrap resamples.
        alpha: One minus the confidence level.
        seed: Seed of the bootstrap's numpy Generator.

    Returns:
        The fraction, its interval and the counts. When no pair is untied in both x and y (a constant column), the
        fraction and interval are NaN with ``ci_method="undefined"``.

    Raises:
        ValueError: On mismatched lengths or shapes, fewer than 2 runs with finite x and y, ``n_boot`` < 1 or alpha
            outside (0, 1).
    """
    _check_resamples("n_boot", n_boot)
    _check_alpha(alpha)
    xa, ya, mask = _finite_runs(x, y)
    xa, ya = xa[mask], ya[mask]
    n = xa.shape[0]
    s = _signs(xa) * _signs(ya)
    agree = (s > 0).astype(float)
    disagree = (s < 0).astype(float)
    n_agree, n_disagree = int(agree.sum()) // 2, int(disagree.sum()) // 2
    n_pairs = n_agree + n_disagree
    common = dict(alpha=alpha, n_runs=n, n_dropped=int(mask.size - n), n_agree=n_agree, n_pairs=n_pairs)
    common["n_tied"] = n * (n - 1) // 2 - n_pairs
    if n_pairs == 0:
        return PairAgreement(fraction=_NAN, ci_low=_NAN, ci_high=_NAN, ci_method="undefined", **common)
    fraction = n_agree / n_pairs

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    offsets = (np.arange(n_boot) * n)[:, None]
    w = np.bincount((draws + offsets).ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)
    c_b = np.einsum("bi,bi->b", w @ agree, w)
    d_b = np.einsum("bi,bi->b", w @ disagree, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = c_b / (c_b + d_b)
    fractions = fractions[np.isfinite(fractions)]
    if fractions.size:
        low, high = (float(v) for v in np.quantile(fractions, [alpha / 2.0, 1.0 - alpha / 2.0]))
        if high - low > 1e-12:
            return PairAgreement(fraction=fraction, ci_low=low, ci_high=high, ci_method="cluster_bootstrap", **common)
    low, high = _disjoint_pairs_interval(fraction, n // 2, alpha)
    return PairAgreement(fraction=fraction, ci_low=low, ci_high=high, ci_method="disjoint_pairs", **common)


def _disjoint_pairs_interval(fraction: float, k: int, alpha: float) -> tuple[float, float]:
    """Clopper-Pearson interval for ``fraction * k`` successes in k trials (a real number of successes)."""
    hits = fraction * k
    low = 0.0 if hits <= 0.0 else float(stats.beta.ppf(alpha / 2.0, hits, k - hits + 1.0))
    high = 1.0 if hits >= k else float(stats.beta.ppf(1.0 - alpha / 2.0, hits + 1.0, k - hits))
    return low, high


# --------------------------------------------------------------------------------------------------------------
# Sign-error (Dziugaite et al. 2020)
# --------------------------------------------------------------------------------------------------------------


def sign_error(
    x: ArrayLike,
    y: ArrayLike,
    axes: Mapping[str, ArrayLike] | None = None,
    *,
    repetitions: Collection[str] = REPETITION_AXES,
    quantile: float = 0.9,
    tolerance: float = 0.0,
) -> SignError:
    """Sign-error of the measure's prediction of which of two models generalizes better (Dziugaite et al. 2020).

    Per pair of runs (a, b), the sign-error loss of Dziugaite et al. (Sec. 3)::

        err(a, b) = (1 - sign(x_a - x_b) sign(y_a - y_b)) / 2

    i.e. 1 when the sharper model (larger x) has the lower target, 0 when it has the higher one, and 1/2 (a coin
    flip) when the measure ties. Pairs with ``|y_a - y_b| <= tolerance`` have no better model and do not count.

    Environments: Dziugaite et al.'s coupled networks are two training runs whose hyperparameters differ in exactly
    one coordinate; an environment is such a pair of hyperparameter points, its sign-error is the expectation over
    the training randomness, and the robust sign-error is the supremum over a family of environments. Here, with
    ``axes``, an environment is every pair of hyperparameter points of the population that differ in exactly one
    varying axis (axes in ``repetitions``, the seed by default, are not hyperparameters), and its sign-error is the
    mean of ``err(a, b)`` over all pairs of runs a at one point and b at the other (every seed of one with every
    seed of the other). Without axes, or when no hyperparameter varies (a seed sweep: the paper's own A-versus-B
    setting), all pairs of runs form one environment. Reported: the mean over environments, the worst (max), the
    ``quantile`` quantile, and the same per axis.

    Deviations from the paper, and why:

    * The target is whatever ``y`` is (the report passes test loss); the paper predicts the generalization gap.
    * The paper drops environments whose gap difference is within the Monte Carlo noise of its test-set estimate;
      here only pairs with ``|y_a - y_b| <= tolerance`` are dropped (default 0: exact ties).
    * The paper's expectation over training randomness uses many seeds per point; here it is the mean over the
      seeds the population has (often 1 or 2), so one environment's number is noisy and the worst case over many
      environments is biased upwards.
    * The family of environments is this grid's one-axis changes, not the paper's interventions on architecture,
      data and optimizer.

    Args:
        x: Shape (n,), the measure, larger = sharper.
        y: Shape (n,), the target, smaller = better.
        axes: Optional axis name -> shape (n,) values per run (any hashable labels).
        repetitions: Names in ``axes`` that label repetitions (seeds), not hyperparameters.
        quantile: Level of the reported quantile over environments, in [0, 1].
        tolerance: Pairs whose targets differ by at most this do not count; >= 0.

    Returns:
        The summary and every environment; NaN summaries and no environment when no pair counts.

    Raises:
        ValueError: On mismatched lengths or shapes, fewer than 2 runs with finite x and y, ``quantile`` outside
            [0, 1] or a negative ``tolerance``.
    """
    check(0.0 <= quantile <= 1.0, "quantile", "in [0, 1]", quantile)
    check(tolerance >= 0.0, "tolerance", ">= 0", tolerance)
    xa, ya, mask = _finite_runs(x, y)
    n_all = xa.shape[0]
    labels = {name: _as_labels_1d(f"axes[{name!r}]", v, n_all)[mask] for name, v in (axes or {}).items()}
    xa, ya = xa[mask], ya[mask]
    n = xa.shape[0]
    err = (1.0 - _signs(xa) * _signs(ya)) / 2.0
    counts = np.abs(ya[:, None] - ya[None, :]) > tolerance

    codes = hyperparameter_codes(labels, repetitions)
    values_of = {name: labels[name].tolist() for name in codes}  # plain Python labels for the environments
    environments: list[Environment] = []
    if not codes:
        upper = np.triu(counts, k=1)
        if upper.any():
            environments.append(Environment(None, (), {}, float(err[upper].mean()), int(upper.sum())))
    for name, axis_codes in codes.items():
        cells = _cells(codes, name, n)
        for cell in np.unique(cells):
            members = np.flatnonzero(cells == cell)
            first = members[0]
            fixed = {other: values_of[other][first] for other in codes if other != name}
            values = np.unique(axis_codes[members])
            for i, v in enumerate(values):
                runs_v = members[axis_codes[members] == v]
                for w in values[i + 1 :]:
                    runs_w = members[axis_codes[members] == w]
                    block, ok = err[np.ix_(runs_v, runs_w)], counts[np.ix_(runs_v, runs_w)]
                    if ok.any():
                        pair = (values_of[name][runs_v[0]], values_of[name][runs_w[0]])
                        environments.append(Environment(name, pair, fixed, float(block[ok].mean()), int(ok.sum())))

    errors = np.array([e.sign_error for e in environments])
    by_axis: dict[str, dict[str, float]] = {}
    for name in codes:
        mine = np.array([e.sign_error for e in environments if e.axis == name])
        by_axis[name] = {
            "mean": float(mine.mean()) if mine.size else _NAN,
            "worst": float(mine.max()) if mine.size else _NAN,
            "n_environments": int(mine.size),
        }
    return SignError(
        mean=float(errors.mean()) if errors.size else _NAN,
        worst=float(errors.max()) if errors.size else _NAN,
        quantile=float(np.quantile(errors, quantile)) if errors.size else _NAN,
        quantile_level=float(quantile),
        n_environments=int(errors.size),
        by_axis=by_axis,
        environments=tuple(environments),
    )


# --------------------------------------------------------------------------------------------------------------
# What it says about the paper's claim
# --------------------------------------------------------------------------------------------------------------


def claim_verdict(agreement: PairAgreement) -> str:
    """What the population says about "the flatter minimum generalizes better", in one word.

    ``"supports"`` when the interval lies above 50% (the flatter model has the lower target in most pairs),
    ``"refutes"`` when it lies below (the sharper one does), ``"cannot tell"`` when it contains 50% or is undefined.
    """
    if not (math.isfinite(agreement.ci_low) and math.isfinite(agreement.ci_high)):
        return "cannot tell"
    if agreement.ci_low > CHANCE:
        return "supports"
    if agreement.ci_high < CHANCE:
        return "refutes"
    return "cannot tell"


def _percent(value: float) -> str:
    """A percentage with no decimals, or one where rounding would put a value that is not 50% at 50%."""
    text = f"{100 * value:.0f}%"
    return f"{100 * value:.1f}%" if text == "50%" and value != CHANCE else text


def claim_sentence(agreement: PairAgreement, *, measure: str | None = None, target: str = "test loss") -> str:
    """One sentence on what the population says about the paper's A-versus-B claim.

    E.g. ``"In 71% [62%, 80%] of 190 pairs the flatter model (smaller lambda_max) has the lower test loss: the
    population supports the paper's A-versus-B claim."``; ``refutes`` when the interval is below 50%, ``cannot tell``
    when it contains 50% (:func:`claim_verdict`).

    Args:
        agreement: The result of :func:`pair_agreement`.
        measure: Name of the measure, for the sentence.
        target: Name of the target, for the sentence.
    """
    flatter = "the flatter model" + (f" (smaller {measure})" if measure else "")
    if not math.isfinite(agreement.fraction):
        return (
            f"No pair of runs differs in both {measure or 'the measure'} and {target}: the population cannot tell "
            "about the paper's A-versus-B claim."
        )
    head = (
        f"In {_percent(agreement.fraction)} [{_percent(agreement.ci_low)}, {_percent(agreement.ci_high)}] of "
        f"{agreement.n_pairs} pairs {flatter} has the lower {target}"
    )
    verdict = claim_verdict(agreement)
    if verdict == "supports":
        return f"{head}: the population supports the paper's A-versus-B claim."
    if verdict == "refutes":
        return (
            f"{head}: the population refutes the paper's A-versus-B claim (the sharper model does better more often)."
        )
    return f"{head}: the population cannot tell (the interval contains 50%)."
