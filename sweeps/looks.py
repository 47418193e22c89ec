"""``--until-decided``: the looks of a group-sequential sweep, one decision per look, recorded on its study.

A sweep with a sequential plan (``tracking.plan.SequentialPlan``) enqueues its points up to the cap (``--max-n``)
and, each time its count of finished trials reaches the next planned look size n_k, takes that look: the plan's
primary tests (each hypothesis raw and given train loss) on the first n_k finished trials by trial number, decided by
``tracking.sequential.monitor`` (O'Brien-Fleming alpha spending, a futility bound at the planned rho, Holm across the
primary tests). The look's statistics are recorded on the study (``sequential_look_<k>``) the first time any worker
takes it, and never recomputed: every later replay (a resumed command, another worker, a PostgreSQL worker on
another machine) reads the same numbers and reaches the same decision. When a look stops the sweep, the study gets
``sequential_stop`` (the reason); every worker checks it before claiming a trial, so the sweep ends as soon as the
trials already running finish. The design and the looks also go to the parent run as ``data/sequential.json``,
which the report reads.
"""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
from optuna.trial import TrialState
from scipy import stats

from landscape_core import keys
from sweeps.space import point_key
from sweeps.study import OpenSweep, tally
from tracking.plan import AnalysisPlan, PrimaryTest
from tracking.population import Population, load_population
from tracking.population_stats import partial_spearman
from tracking.sequential import Look, SequentialDesign, crossing_probabilities, monitor

__all__ = ["LOOK_PREFIX", "SEQUENTIAL_ARTIFACT", "STOP_ATTR", "design_of", "statistics_of", "stopped", "take_looks"]

STOP_ATTR = "sequential_stop"
LOOK_PREFIX = "sequential_look_"
SEQUENTIAL_ARTIFACT = "sequential"


def design_of(plan: AnalysisPlan) -> SequentialDesign:
    """The group-sequential design of a plan with ``sequential`` set."""
    s = plan.sequential
    if s is None:
        raise ValueError("Expected a plan with a sequential design, got None")
    return SequentialDesign(looks=s.looks, alpha=plan.alpha, planned_rho=s.planned_rho, power=s.power)


def stopped(study: optuna.Study) -> str | None:
    """Why the sweep stopped at a look (None while it goes on, or without a sequential plan)."""
    return study.user_attrs.get(STOP_ATTR)


def _statistic(population: Population, test: PrimaryTest) -> tuple[float, int, int]:
    """(rho signed in the declared direction, runs with finite values, covariates) of one primary test."""
    h = test.hypothesis
    x, y = population.column(h.measure), population.column(keys.TARGETS[h.target])
    if test.adjustment == "raw":
        keep = np.isfinite(x) & np.isfinite(y)
        rho = float(stats.spearmanr(x[keep], y[keep]).statistic) if keep.sum() >= 3 else math.nan
    else:
        covariate = population.column(keys.CONTROL)
        keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(covariate)
        rho = partial_spearman(x, y, {"train_loss": covariate})[0]
    rho = 0.0 if not math.isfinite(rho) else rho  # a constant column carries no evidence either way
    return h.direction * rho, int(keep.sum()), test.covariates


def statistics_of(population: Population, plan: AnalysisPlan) -> dict[str, tuple[float, int, int]]:
    """The primary tests' statistics on a population: ``{test name: (signed rho, n, covariates)}``."""
    return {test.name: _statistic(population, test) for test in plan.tests}


def _recorded(study: optuna.Study) -> list[dict]:
    out = []
    while f"{LOOK_PREFIX}{len(out)}" in study.user_attrs:
        out.append(json.loads(study.user_attrs[f"{LOOK_PREFIX}{len(out)}"]))
    return out


def _unusable(
    statistics: dict[str, tuple[float, int, int]], recorded: list[dict], looks: list[Look], names: list[str]
) -> str:
    """Why a look's statistics cannot be monitored ("" when they can): an open test with too few finite runs (a
    primary measure not measured: its analysis skipped or failing) or with no more runs than at the last look."""
    still_open = set(names) if not looks else {h.name for h in looks[-1].hypotheses if h.decision == "continue"}
    for name in sorted(still_open):
        _, n, q = statistics[name]
        if n - 3 - q < 1:
            return f"{name} has {n} runs with a finite value (is its analysis skipped?)"
        if recorded and n <= recorded[-1]["statistics"][name][1]:
            return f"{name} has no more runs with a finite value ({n}) than at the last look"
    return ""


def take_looks(sweep: OpenSweep) -> list[Look]:
    """Take every look that is due and not yet recorded, in order; record it (and a stop) on the study and the
    design with every look on the parent run. Returns the looks so far (empty without a sequential plan)."""
    plan, study = sweep.options.plan, sweep.study
    if plan.sequential is None:
        return []
    design = design_of(plan)
    names = [t.name for t in plan.tests]
    recorded = _recorded(study)
    looks = monitor(design, [r["statistics"] for r in recorded], names) if recorded else []
    if (looks and looks[-1].stop) or stopped(study):
        return looks
    points = sweep.options.space.points()
    done = tally(study)
    everyone: Population | None = None  # the finished runs, read from MLflow once, when a look is due
    new = False
    for k in range(len(recorded), len(design.looks)):
        # look k is the first n_k points of the sweep, once every one of them is done (a diverged trial is done, and
        # not in the population): the same runs whichever worker takes it, whatever finished first
        first = [done.get(point_key(p)) for p in points[: design.looks[k]]]
        if any(t is None for t in first):
            break
        chosen = {t.user_attrs["mlflow_run_id"] for t in first if t.state == TrialState.COMPLETE}
        if everyone is None:
            everyone = load_population(sweep.store, parent_run_id=sweep.parent.run_id)
        population = Population([r for r in everyone.runs if r.run_id in chosen], source=everyone.source)
        entry = {
            "n": design.looks[k],
            "trials": sorted(t.number for t in first),
            "statistics": statistics_of(population, plan),
        }
        problem = _unusable(entry["statistics"], recorded, looks, names)
        if problem:  # a look that cannot be taken ends the sweep loudly, never a study that fails on every resume
            study.set_user_attr(STOP_ATTR, f"look {k + 1} (n = {design.looks[k]}) cannot be taken: {problem}")
            break
        key = f"{LOOK_PREFIX}{k}"
        if key not in study.user_attrs:  # one decision per look: the first worker to record it wins
            study.set_user_attr(key, json.dumps(entry))
        recorded.append(json.loads(study.user_attrs[key]))
        new = True
        looks = monitor(design, [r["statistics"] for r in recorded], names)
        if looks[-1].stop:
            study.set_user_attr(STOP_ATTR, looks[-1].reason)
            break
    if new:
        sweep.parent.json(
            {
                "design": {
                    "looks": list(design.looks),
                    "alpha": design.alpha,
                    "planned_rho": design.planned_rho,
                    "power": design.power,
                    "tests": names,
                    # what this cap can do: the power at the planned rho of one test at its Bonferroni share
                    "power_at_planned": crossing_probabilities(
                        design, design.alpha_one / len(names), design.planned_rho
                    )["power"],
                },
                "looks": [look.to_dict() for look in looks],
                "recorded": recorded,
                "stopped": stopped(study),
            },
            SEQUENTIAL_ARTIFACT,
        )
    return looks
