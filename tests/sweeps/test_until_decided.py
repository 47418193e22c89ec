"""A sweep that declares its plan, audits its measures' reliability and grows until decided, end to end.

One real 8-seed smoke sweep (1 epoch, 256 images; only the two primary measures' analyses run): the plan is on the
parent run before the first trial starts, the reliability audit re-measures the first 4 minima, the one planned look
(n = 8, also the cap) is recorded on the study and decides every primary test, and the end of the sweep fits on one
screen.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import optuna

from landscape_core.config import ANALYSES
from sweeps.looks import LOOK_PREFIX, STOP_ATTR
from sweeps.study import PLAN_ATTR
from tests.sweeps.conftest import SMOKE, client_for, run_cli

KEEP = {"hessian", "sharpness", "reliability"}  # lambda_max and adaptive_linf: the default primary measures
ARGS = [
    *SMOKE,
    "--train-size",
    "256",
    "--test-size",
    "128",
    "--epochs",
    "1",
    "--skip",
    ",".join(sorted(set(ANALYSES) - KEEP)),
    "--retest-trials",
    "4",
    "--until-decided",
    "--first-look",
    "8",
    "--max-n",
    "8",
]


def test_a_declared_plan_a_reliability_audit_and_a_look_that_decides(tmp_path):
    root = tmp_path / "mlruns"
    result = run_cli("sweeps.seeds", *ARGS, "--root", str(root), "--study-name", "decide")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout

    client = client_for(root)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("run_kind") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = [r for r in children if r.data.tags.get("run_kind") != "reference"]
    assert len(trials) == 8

    # the plan was on the parent run before the first trial started
    plan_file = client.download_artifacts(parent.info.run_id, "data/analysis_plan.json", str(tmp_path))
    plan = json.loads(open(plan_file).read())
    assert plan["declared_in_advance"] and len(plan["tests"]) == 4
    declared = parent.data.tags["analysis_plan.declared_at"]
    first_start = min(r.info.start_time for r in trials)
    declared_ms = datetime.strptime(declared, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() * 1000
    assert declared_ms <= first_start

    # the reliability audit: the first 4 minima carry a second measurement, the parent their reliability
    retested = [r for r in trials if "retest/hessian/lambda_max" in r.data.metrics]
    assert sorted(int(r.data.tags["trial_number"]) for r in retested) == [0, 1, 2, 3]
    assert "reliability/hessian/lambda_max" in client.get_run(parent.info.run_id).data.metrics

    # the look: recorded once on the study, and it stopped the sweep (the cap decides whatever is open)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(root / "optuna.journal")))
    study = optuna.load_study(study_name="decide", storage=storage)
    look = json.loads(study.user_attrs[f"{LOOK_PREFIX}0"])
    assert look["n"] == 8 and look["trials"] == list(range(8)) and set(look["statistics"]) == set(plan["tests"])
    assert "look 1 (n = 8)" in study.user_attrs[STOP_ATTR] and PLAN_ATTR in study.user_attrs

    # the report states the design, each look against its boundaries with the repeated CI, and the stopping reason
    page = open(client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path))).read()
    assert "O'Brien-Fleming alpha spending" in page and "repeated CI" in page and "cap reached at look 1" in page
    assert page.count("<td>hessian/lambda_max:test_loss</td>") == 1 == page.count("<td>hessian/lambda_max:test_loss|")
    assert "Analysis plan</b>: declared" in page

    # the answer on one screen: from the population line to the end, at most 40 lines
    summary = out[out.index("Population:") :].splitlines()
    assert len(summary) <= 40, "\n".join(summary)
    assert "Primary hypotheses" in out and "Until decided:" in out and "Strongest exploratory" in out

    # a resumed command with another plan is refused, and writes nothing
    again = run_cli("sweeps.seeds", *ARGS, "--root", str(root), "--study-name", "decide", "--primary", "eps")
    assert again.returncode == 2 and "cannot change it" in again.stdout + again.stderr
