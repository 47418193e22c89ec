"""The analysis plan: a sweep's primary hypotheses, declared on its parent run before its first trial.

A study that names its primary hypotheses before it sees the data, and treats every other row of its report as
exploration, is the standard design: the primary verdicts are then corrected only for the primary family (Holm over
a handful of tests instead of the whole report's hundred rows), which is what lets a population of 20 to 50 runs
decide the paper's question at all. Every other (measure, target) row is exploratory: it gets a Benjamini-Hochberg
q-value and is labelled so wherever it appears (``tracking.correlation``).

The default plan asks the paper's question twice:

* ``hessian/lambda_max`` vs the test loss: the paper's own claim ("flatter minima generalize better");
* ``sharpness/adaptive_linf`` vs the test loss: the same question asked of a rescaling-invariant measure. Adaptive
  sharpness over an L-infinity box (Andriushchenko et al. 2023's main variant; the L-infinity box is also Keskar et
  al. 2017's eps-sharpness, the paper's lineage) is chosen over the L2 ball because it is invariant where lambda_max
  is not, and because an independent re-measurement made before this plan existed found it the more reliable of the
  two invariant worst-case measures at the paper's protocol (test-retest Spearman 0.96 at 2,048 images). The choice
  uses no correlation with any target.

Each hypothesis is directional (larger sharpness goes with larger test loss) and is tested twice, raw and given the
final train loss (partial Spearman): a sharpness measure that only restates how well a model fits its training set
is not evidence for the paper. So the default primary family has 4 tests; Holm runs over those 4.

:func:`log_plan` writes ``analysis_plan.json`` and the tags ``analysis_plan`` (one line) and
``analysis_plan.declared_at`` (UTC) on the parent run; :func:`read_plan` reads them back. A population whose parent
run has no plan (a sweep from before plans, or runs selected by hand) is analysed under the default plan marked
``declared_in_advance = False``, and every report says so.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from landscape_core import keys
from landscape_core.errors import UsageError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tracking.runs import RunLogger

__all__ = [
    "ADJUSTMENTS",
    "DEFAULT_HYPOTHESES",
    "PLAN_ARTIFACT",
    "PLAN_TAG",
    "AnalysisPlan",
    "Hypothesis",
    "PrimaryTest",
    "SequentialPlan",
    "log_plan",
    "parse_primary",
    "read_plan",
    "read_sequential",
]

#: How each primary hypothesis is tested: the raw Spearman rho, and the partial rho given the final train loss.
ADJUSTMENTS = ("raw", "train_loss")
PLAN_ARTIFACT = "analysis_plan.json"
PLAN_TAG = "analysis_plan"
DECLARED_TAG = "analysis_plan.declared_at"


@dataclass(frozen=True)
class Hypothesis:
    """ "Larger ``measure`` goes with larger ``target``" (``direction`` +1) or with smaller (-1), across the runs."""

    measure: str
    target: str = "test_loss"
    direction: int = 1

    def __post_init__(self) -> None:
        if self.target not in keys.TARGETS:
            raise UsageError(
                f"unknown target {self.target!r} in a primary hypothesis; expected one of {', '.join(keys.TARGETS)}"
            )
        if self.direction not in (1, -1):
            raise UsageError(f"Expected `direction` in (1, -1), got {self.direction!r}")

    @property
    def name(self) -> str:
        """``measure:target`` (the form ``--primary`` takes)."""
        return f"{self.measure}:{self.target}"

    @property
    def claim(self) -> str:
        """The hypothesis in words."""
        more = "larger" if self.direction > 0 else "smaller"
        return f"larger {self.measure} goes with {more} {self.target}"


@dataclass(frozen=True)
class PrimaryTest:
    """One test of the primary family: a hypothesis, raw or adjusted for train loss."""

    hypothesis: Hypothesis
    adjustment: str = "raw"

    @property
    def name(self) -> str:
        return self.hypothesis.name + ("" if self.adjustment == "raw" else f"|{self.adjustment}")

    @property
    def covariates(self) -> int:
        """How many covariates the statistic is partialled on (it costs one degree of freedom each)."""
        return 0 if self.adjustment == "raw" else 1


#: The default primary hypotheses (module docstring says why these two).
DEFAULT_HYPOTHESES = (Hypothesis(keys.LAMBDA_MAX), Hypothesis(keys.ADAPTIVE_SHARPNESS_LINF))


@dataclass(frozen=True)
class SequentialPlan:
    """``--until-decided``: looks at ``first``, ``first + step``, ... up to ``max_n`` finished runs
    (``tracking.sequential``)."""

    first: int = 20
    step: int = 10
    max_n: int = 100
    planned_rho: float = 0.3
    power: float = 0.8

    def __post_init__(self) -> None:
        if self.first < 8:
            raise UsageError(f"Expected `--first-look` >= 8 runs, got {self.first}")
        if self.step < 1:
            raise UsageError(f"Expected `--look-step` >= 1, got {self.step}")
        if self.max_n < self.first:
            raise UsageError(f"Expected `--max-n` >= the first look ({self.first}), got {self.max_n}")
        if not 0 < self.planned_rho < 1:
            raise UsageError(f"Expected `--planned-rho` in (0, 1), got {self.planned_rho}")
        if not 0 < self.power < 1:
            raise UsageError(f"Expected the planned power in (0, 1), got {self.power}")

    @property
    def looks(self) -> tuple[int, ...]:
        """The planned population sizes of the looks; the cap is always the last."""
        sizes = list(range(self.first, self.max_n, self.step))
        return (*sizes, self.max_n)


@dataclass(frozen=True)
class AnalysisPlan:
    """A sweep's primary hypotheses and how they are tested, and when they were declared.

    Attributes:
        hypotheses: The primary hypotheses; each is tested raw and given train loss (``tests``).
        alpha: Family-wise level over the primary tests (each test one-sided at ``alpha / 2`` in its direction,
            i.e. a two-sided ``alpha`` test read in the declared direction).
        declared_at: UTC time the plan was logged on the parent run ("" when it never was).
        declared_in_advance: False for a population analysed after the fact under the default plan.
        sequential: The group-sequential design of ``--until-decided``, or None for a fixed population.
    """

    hypotheses: tuple[Hypothesis, ...] = DEFAULT_HYPOTHESES
    alpha: float = 0.05
    declared_at: str = ""
    declared_in_advance: bool = True
    sequential: SequentialPlan | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.hypotheses:
            raise UsageError("Expected at least one primary hypothesis, got 0")
        if len({h.name for h in self.hypotheses}) != len(self.hypotheses):
            raise UsageError(f"Expected distinct primary hypotheses, got {[h.name for h in self.hypotheses]}")
        if not 0 < self.alpha < 1:
            raise UsageError(f"Expected `alpha` in (0, 1), got {self.alpha}")

    @property
    def tests(self) -> tuple[PrimaryTest, ...]:
        """The primary family: every hypothesis raw and given train loss, in that order."""
        return tuple(PrimaryTest(h, a) for h in self.hypotheses for a in ADJUSTMENTS)

    def is_primary(self, measure: str, target: str) -> bool:
        return any(h.measure == measure and h.target == target for h in self.hypotheses)

    def summary(self) -> str:
        """One line: what is primary, how it is tested, when it was declared."""
        names = ", ".join(h.name for h in self.hypotheses)
        if self.declared_in_advance:
            when = f"declared {self.declared_at}"
        else:
            when = "NOT declared in advance (post hoc" + (f"; stamped {self.declared_at})" if self.declared_at else ")")
        text = f"{when}: {names}; each raw and given train loss, Holm over {len(self.tests)} tests at {self.alpha:g}"
        if self.sequential is not None:
            s = self.sequential
            text += f"; until decided: looks at {', '.join(map(str, s.looks))}, planned rho {s.planned_rho:g}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "hypotheses": [dataclasses.asdict(h) for h in self.hypotheses],
            "tests": [t.name for t in self.tests],
            "alpha": self.alpha,
            "declared_at": self.declared_at,
            "declared_in_advance": self.declared_in_advance,
            "sequential": None if self.sequential is None else dataclasses.asdict(self.sequential),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AnalysisPlan:
        sequential = data.get("sequential")
        return cls(
            hypotheses=tuple(Hypothesis(**h) for h in data["hypotheses"]),
            alpha=float(data.get("alpha", 0.05)),
            declared_at=str(data.get("declared_at", "")),
            declared_in_advance=bool(data.get("declared_in_advance", True)),
            sequential=None if sequential is None else SequentialPlan(**sequential),
        )

    def declared(self, when: datetime | None = None) -> AnalysisPlan:
        """This plan stamped as declared now (UTC, to the second)."""
        stamp = (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return dataclasses.replace(self, declared_at=stamp, declared_in_advance=True)

    def post_hoc(self) -> AnalysisPlan:
        return dataclasses.replace(self, declared_at="", declared_in_advance=False)


def _measure_key(name: str) -> str:
    """A measure key from its full name or an unambiguous last component (``lambda_max``, ``adaptive_linf``)."""
    known = (*keys.MEASURES, *keys.NORM_BASELINES)
    if name in known or keys.is_measure(name):
        return name
    matches = [k for k in known if k.rsplit("/", 1)[-1] == name]
    if len(matches) != 1:
        raise UsageError(
            f"{'ambiguous' if matches else 'unknown'} measure {name!r} in --primary; expected a key such as "
            f"{', '.join(known[:4])}, ... or its last part"
        )
    return matches[0]


def parse_primary(text: str | None) -> tuple[Hypothesis, ...]:
    """``--primary measure[:target],...`` as hypotheses (target default ``test_loss``); None: the default plan.

    A leading ``-`` on the measure declares the negative direction (larger measure, smaller target).
    """
    if text is None:
        return DEFAULT_HYPOTHESES
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise UsageError(f"Expected `--primary` as measure[:target],... without empty items, got {text!r}")
        measure, _, target = part.partition(":")
        direction = -1 if measure.startswith("-") else 1
        out.append(Hypothesis(_measure_key(measure.lstrip("-")), target or "test_loss", direction))
    if len({h.name for h in out}) != len(out):
        raise UsageError(f"Expected distinct hypotheses in `--primary`, got {text!r}")
    return tuple(out)


def log_plan(run: RunLogger, plan: AnalysisPlan) -> None:
    """Write the plan on a (parent) run: ``analysis_plan.json``, and the tags ``analysis_plan`` (its one line) and
    ``analysis_plan.declared_at``."""
    run.json(plan.to_json(), PLAN_ARTIFACT.removesuffix(".json"))
    run.tags({PLAN_TAG: plan.summary()[:4900], DECLARED_TAG: plan.declared_at})


def read_plan(client: MlflowClient, run_id: str | None) -> AnalysisPlan:
    """The plan declared on ``run_id``; without one (or without a run), the default plan marked post hoc."""
    if run_id is None:
        return AnalysisPlan().post_hoc()
    run = client.get_run(run_id)
    if PLAN_TAG not in run.data.tags:
        return AnalysisPlan().post_hoc()
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, f"data/{PLAN_ARTIFACT}", tmp)
        return AnalysisPlan.from_json(json.loads(Path(path).read_text()))


def read_sequential(client: MlflowClient, run_id: str | None) -> dict[str, Any]:
    """The design and looks an ``--until-decided`` sweep left on its parent run (``data/sequential.json``, written by
    ``sweeps.looks``); empty when there are none."""
    if run_id is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "data/sequential.json", tmp)
        except Exception:  # noqa: BLE001 - a fixed-size sweep has no looks
            return {}
        return json.loads(Path(path).read_text())
