"""The invariance audit on the parent run: logging it once per sweep, and reading it back for the report.

The parent run gets ``data/invariance.json`` (per measure: its values on the audited minimum and its rescaled copies,
the ratio max / min, and whether that counts as invariant), ``invariance.txt`` (the same as a table) and one metric
per measure, ``invariance/<measure key>`` = the ratio (a ratio that is infinite, a sign change or a zero next to a
non-zero, is logged as -1, since MLflow metrics must be finite).

An audit is shared between sweeps (issue 24): its parent run is tagged ``invariance_key``
(``landscape_core.measure.audit_key``: the measure code, the audited analyses, the protocol), and a later sweep with
the same key finds it (``find_audit``) and logs it again on its own parent, tagged ``invariance_reused_from`` with
the parent run that measured it, instead of spending the audit's minutes again.
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
    "find_audit",
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


def log_invariance(
    parent: RunLogger, audit: InvarianceAudit, *, source: str, key: str | None = None, reused_from: str | None = None
) -> None:
    """Log the audit of the minimum of run ``source`` to the parent run; ``key`` (``audit_key``) lets later sweeps
    find it, ``reused_from`` names the parent run of the sweep that measured it when it was found, not measured."""
    parent.json({"source_run_id": source, **audit.to_dict()}, Path(ARTIFACT).stem)
    note = (
        f"Reused from the audit of parent run {reused_from} (same measure code and protocol).\n" if reused_from else ""
    )
    parent.text(note + invariance_text(audit), "invariance.txt")
    parent.metrics({keys.invariance(k): (v if math.isfinite(v) else -1.0) for k, v in audit.ratios.items()})
    tags = {"invariance_source_run_id": source}
    if key:
        tags["invariance_key"] = key
    if reused_from:
        tags["invariance_reused_from"] = reused_from
    parent.tags(tags)


def find_audit(store: TrackingStore, key: str) -> tuple[InvarianceAudit, str, str] | None:
    """An audit logged with ``key`` in this tracking store, by any sweep: ``(audit, its source run, the parent run
    it was measured on)``; None when there is none (or it cannot be read)."""
    client = store.client()
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    found = client.search_runs(
        experiments,
        filter_string=f"tags.invariance_key = '{key}'",
        order_by=["attributes.start_time ASC"],
        max_results=20,
    )
    for run in found:
        data = _audit_json(client, run.info.run_id)
        if data is None:  # no audit file on that run: look further
            continue
        try:
            audit = InvarianceAudit.from_dict(data)
        except Exception:  # an audit that cannot be read is not reused: it is measured again
            continue
        origin = run.data.tags.get("invariance_reused_from") or run.info.run_id
        return audit, str(data.get("source_run_id", "")), origin
    return None


def load_invariance(client: MlflowClient, parent_run_id: str | None) -> dict[str, float]:
    """Per measure key, the audited ratio of the parent run's audit (inf for a sign flip); {} when there is none."""
    if not parent_run_id:
        return {}
    data = _audit_json(client, parent_run_id)
    if data is None:  # no audit on this parent (skipped, or an older sweep): the report says "not audited"
        return {}
    out = {}
    for key, row in data.get("measures", {}).items():
        value = row.get("ratio")
        out[key] = math.inf if value == "inf" else (math.nan if value is None else float(value))
    return out


def _audit_json(client: MlflowClient, run_id: str) -> dict | None:
    """The parent run's ``data/invariance.json``, parsed; None when the run has none (or it cannot be downloaded)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, ARTIFACT, tmp)
        except Exception:
            return None
        return json.loads(Path(path).read_text())


def population_invariance(store: TrackingStore, population: Population) -> dict[str, float]:
    """The audit of the population's sweep: the one parent run its runs share ({} for several sweeps or none)."""
    parents = {run.parent_run_id for run in population.runs if run.parent_run_id}
    return load_invariance(store.client(), parents.pop()) if len(parents) == 1 else {}
