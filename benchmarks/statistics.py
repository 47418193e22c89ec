"""The correlation report's cluster bootstrap: one vectorized ranking per resample length against one scipy call per
resample (the report's code until 2026-12-06).

An lr or grid sweep's report resamples whole groups (the seeds of one learning rate or grid point), 2,000 times for
each of its rows (measures x targets). Ranking each resample on its own cost about 30 s of a 4-run smoke lr sweep's
report, more than its four trials' training and analysis together.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import Context, Result, best_of
from tracking.population_stats import _cluster_rhos, spearman_along

__all__ = ["cluster_bootstrap_vs_per_resample"]

N_BOOT = 2000  # the report's resamples per row (tracking.correlation)
ROWS = 24  # rows timed: a fraction of a report's (about 100)


def _per_resample(x: np.ndarray, y: np.ndarray, members: list[np.ndarray], draws: np.ndarray) -> np.ndarray:
    """The baseline: one Spearman rho (scipy's ranking) per resample, in a Python loop."""
    rhos = np.empty(draws.shape[0])
    for b in range(draws.shape[0]):
        idx = np.concatenate([members[g] for g in draws[b]])
        rhos[b] = spearman_along(x[idx], y[idx])
    return rhos


def cluster_bootstrap_vs_per_resample(ctx: Context) -> list[Result]:
    """Seconds for the cluster bootstrap of ``ROWS`` rows, on an lr sweep of 8 learning rates x 3 seeds."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(8), 3)
    members = [np.flatnonzero(groups == g) for g in range(8)]
    columns = [(rng.normal(size=groups.size), rng.normal(size=groups.size)) for _ in range(ROWS)]
    draws = [rng.integers(0, 8, size=(N_BOOT, 8)) for _ in range(ROWS)]

    def run(kernel):  # type: ignore[no-untyped-def]
        return lambda: [kernel(x, y, members, d) for (x, y), d in zip(columns, draws, strict=True)]

    best = best_of({"ours": run(_cluster_rhos), "baseline": run(_per_resample)}, ctx)
    (ours, ours_rhos), (base, base_rhos) = best["ours"], best["baseline"]
    same = all(np.allclose(a, b, atol=1e-12, equal_nan=True) for a, b in zip(ours_rhos, base_rhos, strict=True))
    return [
        Result(
            "cluster_bootstrap_vs_per_resample",
            ours,
            base,
            base / ours,
            "s",
            f"{ROWS} rows x {N_BOOT} resamples, ranked per resample length ({'same' if same else 'DIFFERENT'} rhos)",
            "one scipy rankdata per resample (the report's code until 2026-12-06)",
            note="24 runs: 8 lrs x 3 seeds",
        )
    ]
