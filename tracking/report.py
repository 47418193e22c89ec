"""The sweep report, ``report.html``: the seed paper's six figures over the whole population with 95% bands, a
table that answers each claim of the paper with the population's number, its CI and a verdict, the correlation
section as figures (the primary hypotheses raw and given train loss, a forest plot, a heatmap; the full tables
collapsed), and the protocol. One self-contained file (figures embedded, no network), logged on every sweep's parent run
when the sweep ends, which MLflow's artifact viewer renders.

``python -m tracking.report [--experiment E] [--study S | --parent-run ID] --out report.html`` writes it for any
finished population.

The claims and their criteria (the paper's Overall Summary; thresholds are this report's, stated in the table):

1. Seeds reach minima of different sharpness: the coefficient of variation of lambda_max across trials, with a
   bootstrap CI. Supported when the CI lies above 5% (a spread well beyond Lanczos' tolerance), refuted below.
2. Flatter minima generalize better: Spearman's rho of lambda_max with the test loss, the analysis plan's primary
   hypothesis (Holm over the plan's primary tests only, ``tracking.plan``; under ``--until-decided`` the
   group-sequential decision). Supported when significantly positive, refuted when significantly negative, no
   evidence otherwise, with the n that would decide it.
3. Minima from different seeds are separated by large barriers, raw and after weight matching: the mean test-loss
   barrier to the study's reference minimum (trained once from a seed outside the population), with a t-interval.
   Supported when the CI lies above 0.1 (nats), refuted below.
4. Minima are robust to small weight noise and collapse at sigma 0.1: the mean test-loss increase at the smallest
   sigma (supported when the CI lies below 0.05) and the mean test accuracy at sigma 0.1 (collapse: CI below 0.5).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from rich.console import Console
from scipy import stats

from landscape_core import keys
from landscape_core.cli import ArgumentParser, require_writable, run_command
from landscape_core.errors import UsageError
from landscape_core.plots import population as figures
from landscape_core.plots.correlation import ForestRow, correlation_heatmap, forest_plot, primary_scatter, scatter_grid
from landscape_core.plots.curves import barrier_population_figure, three_paths_figure
from tracking.correlate import analyze_population
from tracking.correlation import CorrelationReport
from tracking.population import Population, add_selection_options, select_population
from tracking.store import TrackingStore

# landscape_core.config and the modules that import MLflow (logging, the tables) are imported where they are used:
# they import torch, and ``python -m tracking.report`` refuses bad input without it.

__all__ = [
    "CSS",
    "Claim",
    "PopulationArrays",
    "claims",
    "claims_table",
    "figure_html",
    "gather",
    "log_html_report",
    "main",
    "print_answers",
    "report_html",
    "t_interval",
    "threshold_verdict",
]

#: The arrays each trial's run holds under ``data/`` that the figures read.
ARRAYS = ("history", "slice_1d", "slice_2d", "interpolation", "noise", "curve")
SHARPNESS_SPREAD, LARGE_BARRIER, SMALL_NOISE_EFFECT, COLLAPSED_ACCURACY = 0.05, 0.1, 0.05, 0.5


@dataclass(frozen=True)
class PopulationArrays:
    """The raw arrays of every trial of a population, by run id: ``arrays[run_id][name]`` as logged."""

    population: Population
    arrays: dict[str, dict[str, Any]]

    def stack(self, get: Callable[[dict[str, Any]], Any]) -> np.ndarray:
        """``[trials, points]``: ``get(arrays)`` of every trial that has the arrays it reads (others left out)."""
        rows = []
        for run in self.population.runs:
            try:
                rows.append(np.asarray(get(self.arrays[run.run_id]), dtype=float))
            except (KeyError, TypeError):
                continue
        return np.array(rows) if rows and len({r.shape for r in rows}) == 1 else np.empty((0, 0))


def gather(store: TrackingStore, population: Population) -> PopulationArrays:
    """Download the ``ARRAYS`` of every run of the population (a run may lack some: e.g. the reference minimum has
    no interpolation path)."""
    client = store.client()
    arrays: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in population.runs:
            found = {}
            for name in ARRAYS:
                try:
                    path = client.download_artifacts(run.run_id, f"data/{name}.json", tmp)
                except Exception:  # noqa: BLE001 - a run without this analysis: the figure leaves it out
                    continue
                found[name] = json.loads(Path(path).read_text())
            arrays[run.run_id] = found
    return PopulationArrays(population, arrays)


# --------------------------------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, answered by the population.

    Attributes:
        claim: the paper's claim, in its words.
        quantity: what the population number is.
        value, low, high: the number and its 95% CI (NaN when the population cannot say).
        criterion: when the claim counts as supported or refuted.
        verdict: ``supported``, ``refuted`` or ``no evidence``.
        note: n, and what the population could detect.
    """

    claim: str
    quantity: str
    value: float
    low: float
    high: float
    criterion: str
    verdict: str
    note: str

    @property
    def style(self) -> str:
        """The rich style of the verdict: green supported, red refuted, yellow no evidence."""
        return {"supported": "green", "refuted": "red"}.get(self.verdict, "yellow")


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """The mean of the finite values and its ``level`` t-interval (NaN where too few)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan, math.nan
    if np.all(v == v[0]):  # no spread: the interval is the point (scipy would return NaN, with a warning)
        return float(v[0]), float(v[0]), float(v[0])
    low, high = stats.t.interval(level, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    return float(v.mean()), float(low), float(high)


def threshold_verdict(low: float, high: float, threshold: float, above_supports: bool) -> str:
    """``supported`` / ``refuted`` when the CI [low, high] lies wholly on one side of ``threshold``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no evidence"
    if low > threshold:
        return "supported" if above_supports else "refuted"
    if high < threshold:
        return "refuted" if above_supports else "supported"
    return "no evidence"


def _mean_claim(
    claim: str, quantity: str, values: np.ndarray, threshold: float, above_supports: bool, criterion: str
) -> Claim:
    value, low, high = t_interval(values)
    n = int(np.isfinite(values).sum())
    verdict = threshold_verdict(low, high, threshold, above_supports)
    return Claim(claim, quantity, value, low, high, criterion, verdict, f"n = {n}")


def _spread_claim(lam: np.ndarray) -> Claim:
    v = lam[np.isfinite(lam)]
    claim = "Different seeds reach minima of different sharpness"
    criterion = f"supported when the CI lies above {SHARPNESS_SPREAD:.0%}, refuted below"
    if v.size < 3:
        return Claim(claim, "CV of lambda_max", math.nan, math.nan, math.nan, criterion, "no evidence", f"n = {v.size}")
    cv = float(v.std(ddof=1) / v.mean())
    boot = stats.bootstrap(
        (v,), lambda x, axis: x.std(ddof=1, axis=axis) / x.mean(axis=axis), method="percentile", random_state=0
    )
    low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    verdict = threshold_verdict(low, high, SHARPNESS_SPREAD, above_supports=True)
    note = f"n = {v.size}; lambda_max from {v.min():.3g} to {v.max():.3g}"
    return Claim(claim, "coefficient of variation of lambda_max", cv, low, high, criterion, verdict, note)


def _generalization_claim(correlation: CorrelationReport | None) -> Claim:
    """The paper's claim as the analysis plan's primary hypothesis on lambda_max and the test loss."""
    claim = "Flatter minima generalize better"
    quantity = "Spearman rho(lambda_max, test loss)"
    criterion = (
        "the plan's primary test: supported when significantly > 0 (Holm over the primary tests), refuted when < 0"
    )
    result = None
    if correlation is not None:
        result = next(
            (
                p
                for p in correlation.primary
                if (p.hypothesis.measure, p.hypothesis.target) == (keys.LAMBDA_MAX, "test_loss")
            ),
            None,
        )
    if result is None or not math.isfinite(result.rho):
        why = "no correlation report" if correlation is None else "lambda_max vs test loss is not a primary hypothesis"
        return Claim(claim, quantity, math.nan, math.nan, math.nan, criterion, "no evidence", why)
    # raw rho significant but not beyond train loss is no evidence for the paper (tracking.plan: only restating fit)
    verdict = {
        "supported": "supported",
        "only given train loss": "supported",  # at equal train loss, the fair comparison; the note says so
        "contradicted": "refuted",
        "contradicted given train loss": "refuted",
    }
    row = result.entry.row
    note = (
        f"n = {row.n}, Holm p = {result.adjusted_raw:.2g} ({len(correlation.plan.tests)} primary tests); "
        f"given train loss rho = {result.partial_rho:+.2f}, Holm p = {result.adjusted_partial:.2g}"
    )
    if result.verdict == "only given train loss":
        note += "; supported only given train loss (the raw rho is not significant)"
    if result.verdict == "not beyond train loss":
        note += "; the raw rho is significant, but not beyond train loss: no evidence for the paper"
    if result.n_to_decide and correlation.plan.sequential is not None:
        note += f"; decided at the look of n = {result.n_to_decide}"
    elif result.n_to_decide:
        note += f"; about {result.n_to_decide} runs would decide it"
    if not correlation.plan.declared_in_advance:
        note += "; the plan was NOT declared in advance"
    return Claim(
        claim,
        quantity,
        row.spearman,
        row.ci_low,
        row.ci_high,
        criterion,
        verdict.get(result.verdict, "no evidence"),
        note,
    )


def _sgd_only(population: Population, key: str) -> np.ndarray:
    """``key``'s column with every run that did not train with SGD set to NaN: SAM's own sharpness penalty and GD's
    zero noise would otherwise count as effects of the noise scale."""
    from landscape_core.config import OPTIMIZERS

    optimizer = population.hyperparameter("optimizer")
    sgd = np.isnan(optimizer) | (optimizer == OPTIMIZERS.index("sgd"))  # no param: a run from before the optimizer
    return np.where(sgd, population.column(key), np.nan)


def _noise_scale_claim(noise_scale: np.ndarray, lam: np.ndarray) -> Claim:
    """Jastrzebski et al. 2017: a larger SGD noise scale lr / (B (1 - momentum)) ends in flatter minima. Spearman's rho
    of lambda_max with the noise scale over the population, with a Fisher-z CI (variance 1.06 / (n - 3)); supported
    when significantly negative. Only a population whose lr, batch size or momentum varies can say."""
    claim = "Sharpness follows the SGD noise scale (larger lr / B, flatter minimum)"
    quantity = "Spearman rho(lambda_max, noise scale), SGD runs"
    criterion = "supported when significantly < 0 (alpha 0.05, one exploratory test), refuted when > 0"
    keep = np.isfinite(noise_scale) & np.isfinite(lam)
    n = int(keep.sum())
    if n < 4 or len(set(np.round(noise_scale[keep], 15))) < 2:
        why = f"n = {n}; the noise scale does not vary here (vary --lr, --batch-size or --momentum)"
        return Claim(claim, quantity, math.nan, math.nan, math.nan, criterion, "no evidence", why)
    result = stats.spearmanr(noise_scale[keep], lam[keep])
    rho, p = float(result.statistic), float(result.pvalue)
    half = 1.959964 * math.sqrt(1.06 / (n - 3)) if n > 3 else math.inf
    low, high = (math.tanh(math.atanh(max(min(rho, 0.999999), -0.999999)) + s * half) for s in (-1, 1))
    verdict = "no evidence" if not p < 0.05 else ("supported" if rho < 0 else "refuted")
    return Claim(claim, quantity, rho, low, high, criterion, verdict, f"n = {n}, p = {p:.2g}")


#: The paths between a trial's minimum and the study's reference minimum: (label, key of the test-loss barrier).
PATHS = (
    ("line", keys.barrier("test", "loss")),
    ("line, weight-matched", keys.barrier("test", "loss", aligned=True)),
    ("trained curve", keys.curve_barrier("test", "loss")),
    ("trained curve, weight-matched", keys.curve_barrier("test", "loss", aligned=True)),
)


def _barrier_claims(population: Population) -> list[Claim]:
    """ "Minima from different seeds are separated by large barriers", asked of every path the population measured
    (line, weight-matched line, trained Bezier curve, raw and weight-matched), then which reading they support: the
    paper's "isolated minima" holds only if even the lowest path crosses a large barrier (Garipov et al. 2018 and
    Draxler et al. 2018 found curves without one). The reading compares the paths on the runs that measured all of
    them, and tests the lowest at a Bonferroni level over the paths (it was picked for being lowest)."""
    columns = {label: population.column(key) for label, key in PATHS}
    columns = {label: v for label, v in columns.items() if np.isfinite(v).any()}
    rows = [
        _mean_claim(
            f"Minima from different seeds are separated by large barriers ({label})",
            f"mean {key} to the reference minimum",
            columns[label],
            LARGE_BARRIER,
            True,
            f"supported when the CI lies above {LARGE_BARRIER:g}, refuted below",
        )
        for label, key in PATHS
        if label in columns
    ]
    if len(columns) < 2:
        return rows
    common = np.all([np.isfinite(v) for v in columns.values()], axis=0)
    level = 1 - 0.05 / len(columns)
    tested = {label: t_interval(v[common], level) for label, v in columns.items()}
    lowest = min(tested, key=lambda label: tested[label][0] if math.isfinite(tested[label][0]) else math.inf)
    value, low, high = tested[lowest]
    verdicts = {label: threshold_verdict(t[1], t[2], LARGE_BARRIER, True) for label, t in tested.items()}
    if all(v == "supported" for v in verdicts.values()):
        verdict, reading = "supported", "every path measured crosses a large barrier: isolated minima"
    elif verdicts[lowest] == "refuted":
        verdict, reading = "refuted", f"the {lowest} has no large barrier: the minima are connected"
    else:
        verdict, reading = "no evidence", "the lowest path's barrier is not decided against the threshold"
    numbers = "; ".join(f"{label} {t[0]:.3g}" for label, t in tested.items())
    rows.append(
        Claim(
            "The paper's reading: minima are isolated (no low path between them)",
            f"the lowest path's mean test-loss barrier ({lowest})",
            value,
            low,
            high,
            f"supported when every path's CI lies above {LARGE_BARRIER:g}; refuted when the lowest path's lies below "
            f"(CIs at {level:.1%}: Bonferroni over the {len(columns)} paths)",
            verdict,
            f"{reading} (n = {int(common.sum())} runs with every path: {numbers})",
        )
    )
    return rows


#: Params that may differ between the two runs of an SGD-versus-GD pair: the update rule and its own settings.
OPTIMIZER_PARAMS = ("optimizer", "sam_rho", "adam_betas", "batch_size")


def _sgd_versus_gd_claim(population: Population) -> Claim:
    """The paper's conclusion 3, "SGD converges to flatter minima": the paired difference lambda_max(GD) -
    lambda_max(SGD) between a full-batch GD run and the SGD run of the same study and the same config but for the
    optimizer (``OPTIMIZER_PARAMS``): same seed, so same initialization and data. A t-interval over the pairs; the
    invariant sharpness's difference in the note. Supported when the CI lies above 0, refuted below. Only pairs that
    both reached the sweep's ``--stop-at-train-loss`` count: without one, or with no such pair, no evidence."""
    claim = "SGD reaches flatter minima than full-batch GD at equal train loss"
    quantity = "mean paired lambda_max(GD) - lambda_max(SGD), same seed and config"
    criterion = (
        "supported when the CI lies above 0 and the invariant sharpness's does too, refuted when both lie below "
        "(paired t-intervals over seeds)"
    )
    by_point: dict[tuple, dict[str, int]] = {}
    for i, run in enumerate(population.runs):
        rest = tuple(sorted((k, v) for k, v in run.params.items() if k not in OPTIMIZER_PARAMS))
        by_point.setdefault((run.study, rest), {})[run.params.get("optimizer", "sgd")] = i
    candidates = [(p["gd"], p["sgd"]) for p in by_point.values() if "gd" in p and "sgd" in p]
    reached = population.column(keys.REACHED_STOP_LOSS)
    pairs = [(g, s) for g, s in candidates if reached[g] == 1 and reached[s] == 1]
    if len(pairs) < 2:
        why = (
            f"{len(candidates)} seed(s) with an sgd and a gd run of one config, {len(pairs)} of them both at the "
            "stop loss: run --optimizer sgd,gd with --stop-at-train-loss (make optimizers)"
        )
        return Claim(claim, quantity, math.nan, math.nan, math.nan, criterion, "no evidence", why)
    gd, sgd = (np.array(index) for index in zip(*pairs))

    def difference(key: str) -> np.ndarray:
        column = population.column(key)
        return column[gd] - column[sgd]

    value, low, high = t_interval(difference(keys.LAMBDA_MAX))
    invariant, inv_low, inv_high = t_interval(difference(keys.ADAPTIVE_SHARPNESS_LINF))
    train_gap = float(np.nanmean(difference(keys.FINAL_TRAIN_LOSS)))
    raw, rescaled = threshold_verdict(low, high, 0.0, True), threshold_verdict(inv_low, inv_high, 0.0, True)
    note = (
        f"n = {len(pairs)} seeds (of {len(candidates)}: both at the stop loss); rescaling-invariant adaptive L-inf "
        f"sharpness GD - SGD {invariant:.3g} [{inv_low:.3g}, {inv_high:.3g}]; train loss GD - SGD {train_gap:+.3g}"
    )
    if raw != rescaled:  # lambda_max changes under rescalings that keep the function: both must agree
        note += f"; lambda_max says {raw}, the invariant sharpness {rescaled}: not decided beyond parametrization"
    return Claim(claim, quantity, value, low, high, criterion, raw if raw == rescaled else "no evidence", note)


#: The claims a sweep prints at its end, when its population can say anything about them: the answers to the
#: paper's questions 1 and 4 (question 3 is the correlation summary above them; question 2: ``sweeps.spawn``).
ANSWERED_AT_THE_END = (
    "SGD reaches flatter minima than full-batch GD at equal train loss",
    "The paper's reading: minima are isolated (no low path between them)",
)


def print_answers(population: Population, console: Console) -> None:
    """One line per ``ANSWERED_AT_THE_END`` claim the population has a number for: verdict, number, CI, note."""
    for c in claims(population, None):
        if c.claim in ANSWERED_AT_THE_END and math.isfinite(c.value):
            console.print(
                f"[bold]{c.claim}[/]: [{c.style}]{c.verdict}[/] ({c.quantity} {c.value:.3g} [{c.low:.3g}, "
                f"{c.high:.3g}]; {c.note})",
                highlight=False,
            )


def claims(population: Population, correlation: CorrelationReport | None) -> list[Claim]:
    """Each claim of the paper's Overall Summary, answered by the population (criteria in the module docstring)."""
    noise_keys = sorted(
        {k for run in population.runs for k in run.metrics if k.startswith("perturb/test_loss_delta/")},
        key=lambda k: float(k.rsplit("_", 1)[-1]),
    )
    out = [
        _spread_claim(population.column(keys.LAMBDA_MAX)),
        _generalization_claim(correlation),
        _noise_scale_claim(_sgd_only(population, keys.NOISE_SCALE), population.column(keys.LAMBDA_MAX)),
    ]
    out += _barrier_claims(population)
    out.append(_sgd_versus_gd_claim(population))
    if noise_keys:
        smallest = noise_keys[0]
        out.append(
            _mean_claim(
                "Minima are robust to small weight noise",
                f"mean {smallest}",
                population.column(smallest),
                SMALL_NOISE_EFFECT,
                False,
                f"supported when the CI lies below {SMALL_NOISE_EFFECT:g}, refuted above",
            )
        )
    collapse = keys.perturb("test_acc", 0.10)
    out.append(
        _mean_claim(
            "Minima collapse under weight noise of sigma 0.1",
            f"mean {collapse}",
            population.column(collapse),
            COLLAPSED_ACCURACY,
            False,
            f"supported when the CI lies below {COLLAPSED_ACCURACY:g}, refuted above (paper: 0.39)",
        )
    )
    return out


# ----------------------------------------------------------------------------------------------------- figures


def _figures(data: PopulationArrays) -> dict[str, Figure]:
    """The paper's six figures, those the population's arrays support."""
    from landscape_core.config import OPTIMIZERS

    out: dict[str, Figure] = {}
    history = {
        name: data.stack(lambda a, name=name: [e[name] for e in a["history"]])
        for name in ("train_loss", "test_loss", "train_acc", "test_acc")
    }
    if history["train_loss"].size:
        epochs = list(range(1, history["train_loss"].shape[1] + 1))
        out["Figure 1: loss and accuracy per epoch, mean over trials with a 95% band"] = figures.curves_figure(
            epochs, history
        )
    lam = data.population.column(keys.LAMBDA_MAX)
    noise_scale = data.population.column(keys.NOISE_SCALE)
    if np.isfinite(lam).any() and len(set(noise_scale[np.isfinite(noise_scale)].round(15))) > 1:
        sharpness = {"lambda_max": lam, "adaptive_linf": data.population.column(keys.ADAPTIVE_SHARPNESS_LINF)}
        out[
            "Sharpness against the SGD noise scale lr / (B (1 - momentum)) (Jastrzebski et al. 2017), coloured by lr"
        ] = scatter_grid({"noise scale": noise_scale}, sharpness, color_by=data.population.lrs, color_label="lr")
    optimizer = data.population.hyperparameter("optimizer")
    labels = [o for i, o in enumerate(OPTIMIZERS) if (optimizer == i).any()]
    if len(labels) > 1 and np.isfinite(lam).any():
        sharpness = {o: lam[optimizer == OPTIMIZERS.index(o)] for o in labels}
        out["Sharpness by optimizer (each trial a dot; mean and 95% CI): does SGD end flatter than GD?"] = (
            barrier_population_figure(
                sharpness, ylabel="lambda_max", xlabel="optimizer", title="lambda_max of the minimum, by optimizer"
            )
        )
    if np.isfinite(lam).any():
        out["Figure 2: lambda_max of every trial, with the paper's models A (13) and B (15.6)"] = (
            figures.lambda_max_figure(lam)
        )
    first = next((a for a in data.arrays.values() if "slice_1d" in a), None)
    if first is not None:
        losses = {name: data.stack(lambda a, name=name: a["slice_1d"][name]["loss"]) for name in first["slice_1d"]}
        caption = "Figure 3: train loss along a filter-normalized random direction and the top eigenvector"
        out[caption + ", mean with a 95% band"] = figures.slice_1d_figure(first["slice_1d"]["random"]["alphas"], losses)
    planes = data.stack(lambda a: a["slice_2d"]["loss"])
    if planes.size:
        _add_slice_2d(data, planes, out)
    _add_paths_between_minima(data, out)
    paths = {
        name: data.stack(lambda a, split=split: a["interpolation"][split]["loss"])
        for name, split in (("raw", "test"), ("aligned", "test_aligned"))
    }
    paths = {name: v for name, v in paths.items() if v.size}
    if paths:
        alphas = next(a["interpolation"]["test"]["alphas"] for a in data.arrays.values() if "interpolation" in a)
        out[
            "Figure 5: test loss on the linear path to the reference minimum, raw and aligned, mean with a 95% band"
        ] = figures.interpolation_figure(alphas, paths)
    noise_loss = data.stack(lambda a: a["noise"]["loss_mean"])
    if noise_loss.size:
        sigmas = next(a["noise"]["sigmas"] for a in data.arrays.values() if "noise" in a)
        caption = "Figure 6: test loss and accuracy under Gaussian weight noise, mean with a 95% band"
        noise_acc = data.stack(lambda a: a["noise"]["acc_mean"])
        out[caption + "; the paper's sigma 0.1 point"] = figures.noise_figure(sigmas, noise_loss, noise_acc)
    return out


def _add_paths_between_minima(data: PopulationArrays, out: dict[str, Figure]) -> None:
    """Question 4, what lies between minima: each path's barrier per trial, and the mean loss along the line and the
    trained curve (raw and weight-matched) over the population."""
    barriers = {label: data.population.column(key) for label, key in PATHS}
    barriers = {label: v for label, v in barriers.items() if np.isfinite(v).any()}
    if len(barriers) > 2:
        out["Test-loss barrier to the reference minimum along each path, each trial a dot (mean, 95% CI)"] = (
            barrier_population_figure(barriers, title="Isolated or connected? The barrier along each path")
        )
    panels: dict[str, dict[str, np.ndarray]] = {}
    for split in ("train", "test"):
        for source, name in (("interpolation", "line"), ("curve", "curve")):
            for suffix, extra in (("", ""), ("_aligned", ", weight-matched")):
                stack = data.stack(lambda a, key=split + suffix, source=source: a[source][key]["loss"])
                if stack.size:
                    panels.setdefault(f"{split} loss", {})[name + extra] = stack
    alphas = next((a["curve"]["train"]["alphas"] for a in data.arrays.values() if "curve" in a), None)
    if alphas is not None and panels and all(v.shape[1] == len(alphas) for p in panels.values() for v in p.values()):
        out[
            "Loss along the line and the trained curve from the reference minimum (t = 0) to each minimum, mean "
            "with a 95% band"
        ] = three_paths_figure(alphas, panels)


def _add_slice_2d(data: PopulationArrays, planes: np.ndarray, out: dict[str, Figure]) -> None:
    """Figure 4 from the trial of median test loss among those with a 2D slice."""
    runs = [r for r in data.population.runs if "slice_2d" in data.arrays[r.run_id]]
    test_loss = np.array([r.metrics.get(keys.FINAL_TEST_LOSS, math.nan) for r in runs])
    median = (
        runs[int(np.nanargmin(np.abs(test_loss - np.nanmedian(test_loss))))]
        if np.isfinite(test_loss).any()
        else runs[0]
    )
    plane = data.arrays[median.run_id]["slice_2d"]
    spread = planes.std(axis=0, ddof=1) if planes.shape[0] > 1 else np.zeros_like(planes[0])
    label = f"seed {median.seed}"
    out["Figure 4: the 2D slice of the trial of median test loss, and the loss's spread across trials"] = (
        figures.slice_2d_figure(plane["alphas"], plane["betas"], plane["loss"], spread, label)
    )


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -------------------------------------------------------------------------------------------------------- html

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3} .supported{color:#0a7d22;font-weight:bold} .refuted{color:#b00020;font-weight:bold}
.no-evidence{color:#8a6d00} figure{margin:12px 0} figcaption{font-size:13px;color:#555} .mono{font-family:monospace}
"""


def _fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "–"


def claims_table(rows: list[Claim]) -> str:
    columns = ("claim of the paper", "population number", "95% CI", "verdict", "criterion", "n, power")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(c.claim)}</td><td>{html.escape(c.quantity)}: <b>{_fmt(c.value)}</b></td>"
        f'<td>[{_fmt(c.low)}, {_fmt(c.high)}]</td><td class="{c.verdict.replace(" ", "-")}">{c.verdict}</td>'
        f"<td>{html.escape(c.criterion)}</td><td>{html.escape(c.note)}</td></tr>"
        for c in rows
    )
    return f"<table>{head}{body}</table>"


def _kv_table(items: dict[str, Any]) -> str:
    body = "".join(
        f'<tr><th>{html.escape(str(k))}</th><td class="mono">{html.escape(str(v))}</td></tr>' for k, v in items.items()
    )
    return f"<table>{body}</table>"


def report_html(
    data: PopulationArrays,
    correlation: CorrelationReport | None,
    *,
    title: str,
    protocol: dict[str, Any],
) -> str:
    """The whole report as one self-contained HTML page."""
    population = data.population
    counts = population.counts()
    parts = [
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>{len(population.runs)} finished trials ({html.escape(population.source)}); not finished: "
        f"{html.escape(json.dumps(counts.get('n_not_finished') or {}))}; duplicate retries dropped: "
        f"{counts.get('n_duplicates', 0)}.</p>",
        "<h2>The paper's claims, asked of the population</h2>",
        claims_table(claims(population, correlation)),
        "<h2>The paper's figures, over the population</h2>",
    ]
    parts += [figure_html(caption, figure) for caption, figure in _figures(data).items()]
    parts.append("<h2>Does sharpness predict generalization? (correlation report)</h2>")
    if correlation is not None and correlation.entries:
        parts += _correlation_section(correlation, population)
    else:
        parts.append(f"<p>{html.escape(correlation.message if correlation else 'no correlation report')}</p>")
    parts.append("<h2>Protocol</h2>")
    parts.append(_kv_table(protocol))
    parts.append("</body></html>")
    return "\n".join(parts)


def figure_html(caption: str, figure: Figure) -> str:
    alt = html.escape(caption)
    return (
        f'<figure><img alt="{alt}" src="data:image/png;base64,{_png(figure)}"><figcaption>{alt}</figcaption></figure>'
    )


#: The CSS class of a primary verdict in report.html (every other verdict: ``no-evidence``).
_VERDICT_CLASS = {
    "supported": "supported",
    "contradicted": "refuted",
    "contradicted given train loss": "refuted",
    "not supported": "refuted",
}


def _primary_html(correlation: CorrelationReport) -> str:
    """The primary hypotheses' verdicts as a table (the summary's, in HTML)."""
    columns = (
        "primary hypothesis",
        "rho [95% CI]",
        "rho given train loss",
        "Holm p raw / given TL",
        "reliability r",
        "rho / sqrt(r)",
        "verdict",
        "decided at / n to decide",
    )
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    body = []
    for p in correlation.primary:
        row = p.entry.row
        css = _VERDICT_CLASS.get(p.verdict, "no-evidence")
        n = "–" if p.n_to_decide is None else ("decided" if p.n_to_decide == 0 else str(p.n_to_decide))
        body.append(
            f"<tr><td>{html.escape(p.hypothesis.claim)}</td><td>{_fmt(row.spearman)} [{_fmt(row.ci_low)}, "
            f"{_fmt(row.ci_high)}]</td><td>{_fmt(p.partial_rho)}</td><td>{_fmt(p.adjusted_raw)} / "
            f"{_fmt(p.adjusted_partial)}</td><td>{_fmt(p.entry.reliability)}</td><td>{_fmt(p.entry.disattenuated)}</td>"
            f'<td class="{css}">{html.escape(p.verdict)}</td><td>{n}</td></tr>'
        )
    return f"<table>{head}{''.join(body)}</table>"


def _looks_html(sequential: dict[str, Any]) -> str:
    """The group-sequential design, each look's statistics against its boundaries with the repeated CI, and why the
    sweep stopped."""
    design = sequential.get("design", {})
    reason = sequential.get("stopped") or "the sweep goes on"
    head = (
        f"<p><b>Until decided</b>: looks at n = {', '.join(map(str, design.get('looks', [])))}; Lan-DeMets "
        f"O'Brien-Fleming alpha spending (one-sided {design.get('alpha', 0.05) / 2:g} in the declared direction), a "
        f"non-binding futility bound planned at rho {design.get('planned_rho', 0.3):g}, Holm across the primary tests "
        f"by alpha recycling. <b>{html.escape(str(reason))}</b>.</p>"
    )
    columns = ("look", "n", "test", "rho", "z", "futility bound", "efficacy bound", "level", "repeated CI", "decision")
    rows = []
    for look in sequential.get("looks", []):
        for h in look["hypotheses"]:
            low, high = h["rci"]
            cells = (
                look["index"] + 1,
                look["n"],
                h["name"],
                _fmt(h["rho"]),
                _fmt(h["z"]),
                _fmt(_num(h["futility"])),
                _fmt(_num(h["efficacy"])),
                f"{h['level']:.3g}",
                f"[{_fmt(_num(low))}, {_fmt(_num(high))}]",
                h["decision"],
            )
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    table = "<table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>" + "".join(rows) + "</table>"
    return head + table


def _reliability_html(correlation: CorrelationReport) -> str:
    """Each re-measured measure's reliability: test-retest Spearman with its bootstrap CI, within/between variance."""
    n = max(r.n for r in correlation.reliability.values())
    head = "<tr><th>measure</th><th>test-retest rho [95% CI]</th><th>within / between variance</th></tr>"
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(r.spearman)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
        f"{' (low)' if r.low else ''}</td><td>{_fmt(r.variance_ratio)}</td></tr>"
        for k, r in sorted(correlation.reliability.items())
    )
    return (
        f"<details><summary>Reliability of each measure: re-measured on independent images, {n} minima</summary>"
        f"<table>{head}{rows}</table></details>"
    )


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _correlation_section(correlation: CorrelationReport, population: Population) -> list[str]:
    """The plan and the primary verdicts, then figures (each primary hypothesis raw and given train loss, a forest
    plot of every row, a heatmap of measure by target), then the full tables collapsed."""
    from tracking.render import render

    plan = correlation.plan
    parts = [f"<p><b>Analysis plan</b>: {html.escape(plan.summary())}.</p>", _primary_html(correlation)]
    if correlation.sequential:
        parts.append(_looks_html(correlation.sequential))
    parts.append(f"<p>{html.escape(correlation.power_note)}.</p>")
    if correlation.reliability:
        parts.append(_reliability_html(correlation))
    train_loss = population.column(keys.CONTROL)
    for p in correlation.primary:
        x = population.column(p.hypothesis.measure)
        if np.isfinite(x).sum() < 4:
            continue
        y = population.column(keys.TARGETS[p.hypothesis.target])
        figure = primary_scatter(x, y, train_loss, measure=p.hypothesis.measure, target=p.hypothesis.target)
        caption = f"Primary: {p.hypothesis.name}, raw (left) and given train loss (right): {p.verdict}"
        parts.append(figure_html(caption, figure))
    rows = [
        ForestRow(
            measure=e.measure,
            target=e.target,
            rho=e.row.spearman,
            ci_low=e.row.ci_low,
            ci_high=e.row.ci_high,
            invariant=e.invariant,
            primary=e.primary,
            disattenuated=e.disattenuated,
            reliability=e.reliability,
            significant=e.significant,
        )
        for e in correlation.entries
        if e.measure != keys.CONTROL
    ]
    if rows:
        caption = (
            "Forest plot: Spearman rho with its CI per measure and target; colour: audited rescaling invariance; "
            "star: primary; hollow diamond: rho disattenuated for the measure's reliability; filled: significant in "
            "its family (Holm over the primary tests, Benjamini-Hochberg q for exploratory rows)"
        )
        parts.append(figure_html(caption, forest_plot(rows)))
        measures = [m for m in correlation.measures if m != keys.CONTROL]
        targets = list(correlation.targets)
        by = {(e.measure, e.target): e for e in correlation.entries}
        rho = [[by[(m, t)].row.spearman for t in targets] for m in measures]
        significant = [[by[(m, t)].significant for t in targets] for m in measures]
        primary = [[by[(m, t)].primary for t in targets] for m in measures]
        caption = "Heatmap: Spearman rho of each measure (rows) with each target (columns); * significant in its family"
        parts.append(figure_html(caption, correlation_heatmap(measures, targets, rho, significant, primary)))
    console = Console(record=True, width=170, file=io.StringIO())
    render(correlation, console, full=True)
    tables = console.export_html(inline_styles=True, code_format='<pre style="font-size:11px">{code}</pre>')
    parts.append(
        f"<details><summary>Full tables: every measure and target, verdicts, A-versus-B</summary>{tables}</details>"
    )
    return parts


def _protocol(store: TrackingStore, parent_run_id: str | None) -> dict[str, Any]:
    if parent_run_id is None:
        return {}
    run = store.client().get_run(parent_run_id)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(("versions.", "git_commit", "host", "device"))}
    return {**dict(sorted(run.data.params.items())), **dict(sorted(tags.items()))}


def log_html_report(
    store: TrackingStore, parent_run_id: str, population: Population, correlation: CorrelationReport | None
) -> str:
    """Write ``report.html`` on the parent run; returns the HTML."""
    from tracking.runs import RunLogger

    page = _page(store, population, correlation, parent_run_id)
    RunLogger(store.client(), parent_run_id).text(page, "report.html")
    return page


def _page(
    store: TrackingStore, population: Population, correlation: CorrelationReport | None, parent_run_id: str | None
) -> str:
    title = f"Sweep report: {population.source}"
    return report_html(gather(store, population), correlation, title=title, protocol=_protocol(store, parent_run_id))


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m tracking.report", description="Write the sweep report of a population.")
    add_selection_options(p)
    p.add_argument("--out", type=Path, help="the HTML file to write, e.g. report.html (required)")
    return p


def _report(args: argparse.Namespace, console: Console) -> int:
    if args.out is None or args.out.suffix not in (".html", ".htm"):
        raise UsageError(f"Expected `--out` ending in .html, got {args.out and str(args.out)!r}")
    require_writable("--out", args.out)
    store, population = select_population(args)
    parents = {run.parent_run_id for run in population.runs if run.parent_run_id}
    parent = parents.pop() if len(parents) == 1 else None
    correlation = analyze_population(store, population, parent)
    page = _page(store, population, correlation, parent)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    console.print(f"wrote the report of {len(population.runs)} trials to {args.out}", highlight=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(parser(), argv, _report)


if __name__ == "__main__":
    sys.exit(main())
