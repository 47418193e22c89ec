"""The invariance audit on the parent run: logging it once per sweep, and reading it back for the report.

The parent run gets ``data/invariance.json`` (per measure: its values on the audited minimum and its rescaled copies,
the ratio max / min, and whether that counts as invariant), ``invariance.txt`` (the same as a table) and one metric
per measure, ``invariance/<measure key>`` = the ratio (a ratio that is infinite, a sign change or a zero next to a
non-zero, is logged as -1, since MLflow metrics must be finite).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from landscape_core import keys
from landscape_core.invariance import INVARIANT_RATIO, InvarianceAudit
from tracking.population import Population
from tracking.runs import RunLogger
from tracking.store import TrackingStore

__all__ = [
    "ARTIFACT",
    "format_ratio",
    "invariance_text",
    "load_invariance",
    "log_invariance",
    "population_invariance",
]

ARTIFACT = "data/invariance.json"


def format_ratio(ratio: float) -> str:
    """``x1.00``, ``x11.7``, ``sign flips`` (infinite), or ``–`` (not audited)."""
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return "–"
    if math.isinf(ratio):
        return "sign flips"
    return f"x{ratio:.3g}" if ratio < 100 else f"x{ratio:.0f}"


def invariance_text(audit: InvarianceAudit) -> str:
    """The audit as a plain-text table: one line per measure, its ratio and verdict."""
    lines = [
        f"Invariance audit: {len(audit.rescalings)} function-preserving rescalings ({', '.join(audit.rescalings)}); "
        f"largest relative change of the logits {max(audit.output_change, default=0.0):.1e}",
        f"A measure counts as invariant when max / min over the original and the copies is <= {INVARIANT_RATIO:g}.",
        "",
    ]
    width = max((len(k) for k in audit.values), default=10)
    for key, value in sorted(audit.ratios.items()):
        verdict = "invariant" if value <= INVARIANT_RATIO else "NOT invariant"
        lines.append(f"{key:<{width}}  {format_ratio(value):>12}  {verdict}")
    return "\n".join(lines) + "\n"


def log_invariance(parent: RunLogger, audit: InvarianceAudit, *, source: str) -> None:
    """Log the audit of the minimum of run ``source`` to the parent run."""
    parent.json({"source_run_id": source, **audit.to_dict()}, Path(ARTIFACT).stem)
    parent.text(invariance_text(audit), "invariance.txt")
    parent.metrics({keys.invariance(k): (v if math.isfinite(v) else -1.0) for k, v in audit.ratios.items()})
    parent.tags({"invariance_source_run_id": source})


def load_invariance(client: MlflowClient, parent_run_id: str | None) -> dict[str, float]:
    """Per measure key, the audited ratio of the parent run's audit (inf for a sign flip); {} when there is none."""
    if not parent_run_id:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent_run_id, ARTIFACT, tmp)
        except Exception:  # no audit on this parent (skipped, or an older sweep): the report says "not audited"
            return {}
        data = json.loads(Path(path).read_text())
    out = {}
    for key, row in data.get("measures", {}).items():
        value = row.get("ratio")
        out[key] = math.inf if value == "inf" else (math.nan if value is None else float(value))
    return out


def population_invariance(store: TrackingStore, population: Population) -> dict[str, float]:
    """The audit of the population's sweep: the one parent run its runs share ({} for several sweeps or none)."""
    parents = {run.parent_run_id for run in population.runs if run.parent_run_id}
    return load_invariance(store.client(), parents.pop()) if len(parents) == 1 else {}
