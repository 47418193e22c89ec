"""How noisy each measure is: test-retest reliability from the sweep's reliability audit, and disattenuation.

The audit (``sweeps.pipeline``, ``landscape_core.measure.retest``) measures the first ``AnalysisConfig.retest_trials``
minima of a sweep a second time, on an independent draw of images of the same size and with independent probe seeds,
and logs the second value of every measure of the table as ``retest/<key>`` on the trial's own run. Here, per
measure, over the minima that have both values:

* ``spearman``: the test-retest Spearman rho (the reliability r that the report shows);
* ``variance_ratio``: the within-minimum variance (half the mean squared difference of the two measurements) over
  the between-minima variance of their means; 0 for a perfect measurement, >= 1 when re-measuring one minimum moves
  it as much as changing the minimum does;
* the disattenuated correlation with a target, Spearman (1904): ``rho / sqrt(r)``. A measure with reliability r can
  show at most about ``sqrt(r)`` of its true correlation with an error-free target; the disattenuated value
  estimates the correlation the minima would show if the measure were exact. It is shown beside the observed rho,
  never instead of it (it is undefined for r < ``MIN_CORRECTABLE`` = 0.3, and only as good as r's estimate from K
  minima).

A measure whose reliability is below ``LOW_RELIABILITY`` (0.7) is flagged in its verdicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from tracking.population import Population
from tracking.population_stats import spearman_along

__all__ = [
    "RETEST_SECONDS",
    "LOW_RELIABILITY",
    "MIN_CORRECTABLE",
    "RETEST_PREFIX",
    "Reliability",
    "disattenuate",
    "reliabilities",
    "retest_key",
    "retest_reliability",
]

#: A measure whose test-retest Spearman is below this is flagged in its verdicts.
LOW_RELIABILITY = 0.7
#: Below this reliability no disattenuated rho is given: dividing by sqrt(r) would amplify the noise of r.
MIN_CORRECTABLE = 0.3
#: The metric prefix of a measure's second measurement.
RETEST_PREFIX = "retest/"
#: The seconds the reliability audit's second measurement of a minimum took (a metric of the audited trial's run).
RETEST_SECONDS = "time/retest_s"
#: Fewer minima with both measurements than this give no reliability (NaN).
MIN_PAIRS = 4


def retest_key(measure: str) -> str:
    return RETEST_PREFIX + measure


@dataclass(frozen=True)
class Reliability:
    """Test-retest reliability of one measure over the audited minima."""

    measure: str
    spearman: float
    variance_ratio: float
    n: int
    ci_low: float = math.nan
    ci_high: float = math.nan

    @property
    def low(self) -> bool:
        return math.isfinite(self.spearman) and self.spearman < LOW_RELIABILITY

    def to_dict(self) -> dict[str, Any]:
        finite = lambda v: float(v) if math.isfinite(v) else None  # noqa: E731
        return {
            "spearman": finite(self.spearman),
            "ci": [finite(self.ci_low), finite(self.ci_high)],
            "variance_ratio": finite(self.variance_ratio),
            "n": self.n,
            "low": self.low,
        }


def retest_reliability(measure: str, first: np.ndarray, second: np.ndarray, *, n_boot: int = 2000) -> Reliability:
    """Reliability of one measure from its two measurements per minimum (NaN-paired entries are left out), with a
    95% percentile bootstrap interval over the minima (seed 0): from 10 minima it is wide, and says so."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < MIN_PAIRS or np.ptp(a) == 0 or np.ptp(b) == 0:
        return Reliability(measure, math.nan, math.nan, n)
    rho = float(stats.spearmanr(a, b).statistic)
    within = float(np.mean((a - b) ** 2) / 2)
    between = float(np.var((a + b) / 2, ddof=1))
    ratio = within / between if between > 0 else math.inf
    index = np.random.default_rng(0).integers(0, n, size=(n_boot, n))
    boot = spearman_along(a[index], b[index], axis=1)
    boot = boot[np.isfinite(boot)]
    low, high = np.percentile(boot, [2.5, 97.5]) if boot.size else (math.nan, math.nan)
    return Reliability(measure, rho, ratio, n, float(low), float(high))


def disattenuate(rho: float, reliability: float) -> float:
    """Spearman's correction for attenuation of the measure's side: ``rho / sqrt(reliability)``, clipped to
    [-1, 1]; NaN when the reliability is unknown or below ``MIN_CORRECTABLE`` (there the correction would be
    dominated by the noise of r itself: from 10 minima its CI spans about +-0.5)."""
    if not (math.isfinite(rho) and math.isfinite(reliability)) or reliability < MIN_CORRECTABLE:
        return math.nan
    return float(np.clip(rho / math.sqrt(reliability), -1.0, 1.0))


def reliabilities(population: Population, measures: list[str]) -> dict[str, Reliability]:
    """The reliability of every measure that the population's audited minima re-measured."""
    out = {}
    for measure in measures:
        second = population.column(retest_key(measure))
        if np.isfinite(second).any():
            out[measure] = retest_reliability(measure, population.column(measure), second)
    return out
