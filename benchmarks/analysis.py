"""A paper-protocol trial's analysis against its training: this code's ``measure`` and main's at the start of issue 16,
on one trained model, in one run.

The trial is trained as a sweep trains it (the ``paper`` preset, the per-epoch lambda_max tracker on), and timed.
``--quick`` trains one epoch of the six and multiplies its time by six: every epoch passes the same 60,000 images in
the same number of batches, so the time per epoch does not depend on the epoch (measured: 20-24 s each on the reference
machine); the analysis then runs on a less trained minimum, which changes how fast Lanczos and APGD converge a little.

The baseline is main at ``BASELINE_COMMIT``, unpacked with ``git archive`` into the run's work directory and run as a
subprocess of this one on the same saved model, reference and data (``TrialData.build`` there draws the same subsets):
its per-analysis seconds and estimates come back as JSON. Without git history (an exported tree) the row says so and
compares nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from typing import Any

import torch

from benchmarks.common import ROOT, Context, Result, run_process, timed
from landscape_core import invariance, keys
from landscape_core.config import PRESETS, InvarianceConfig
from landscape_core.measure import LambdaMaxTracker, audit_config, audit_invariance, measure
from landscape_core.splits import TrialData
from landscape_core.train import train
from landscape_core.trajectory import Checkpoints

__all__ = ["BASELINE_COMMIT", "invariance_audit_vs_per_pair", "paper_trial", "paper_trial_analysis_vs_training"]

#: main when issue 16 started: the analysis this issue speeds up.
BASELINE_COMMIT = "6d956cc6047d48f9cdcd51a0bc7aac0926455891"
GOAL = 0.5  # analysis seconds per training second

# Run inside the unpacked baseline tree: load the trial, rebuild its data, measure with that tree's paper preset.
_BASELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, torch
    from landscape_core.config import PRESETS, TrainConfig
    from landscape_core.data import load_fashion_mnist
    from landscape_core.measure import measure
    from landscape_core.splits import TrialData
    trial = torch.load(sys.argv[1], weights_only=False)
    data = TrialData.build(load_fashion_mnist(trial["data_dir"]), TrainConfig(**trial["train"]))
    start = time.perf_counter()
    out = measure(trial["model"], init_params=trial["init"], data=data, config=PRESETS["paper"].analysis,
                  reference=trial["reference"], v0=trial["v0"])
    total = time.perf_counter() - start
    json.dump({"seconds": out.seconds, "scalars": out.scalars, "total": total}, open(sys.argv[2], "w"))
    """
)


def paper_trial(ctx: Context) -> dict[str, Any]:
    """A model trained by the ``paper`` protocol (``--quick``: one epoch), its training seconds (scaled to the
    protocol's epochs), tracker vector and data, and a one-epoch second minimum for the barriers; once per run."""

    def build() -> dict[str, Any]:
        protocol = PRESETS["paper"].train
        epochs = 1 if ctx.quick else protocol.epochs
        config = dataclasses.replace(protocol, seed=1, epochs=epochs, device=str(ctx.device))
        splits = TrialData.build(ctx.dataset, config)
        tracker = LambdaMaxTracker(splits, PRESETS["paper"].analysis.hessian, threshold=config.stability_threshold)
        checkpoints = Checkpoints.along_training(PRESETS["paper"].analysis.trajectory.checkpoints)  # as a sweep keeps
        ctx.log(f"  training the paper CNN ({epochs} epoch(s) of 60,000 images) ...")
        seconds, trained = timed(lambda: train(config, splits, on_epoch=tracker, on_update=checkpoints), ctx.device)
        checkpoints.add(trained.steps, trained.model)
        # any other minimum serves the barriers' timing: seed 2, one epoch (a sweep's reference is trained by the same
        # protocol from sweeps.space.REFERENCE_SEED; the path's cost does not depend on where it leads)
        reference = train(dataclasses.replace(config, seed=2, epochs=1), splits).model
        return {
            "config": config,
            "splits": splits,
            "model": trained.model,
            "init": trained.init_params,
            "v0": tracker.vector,
            "checkpoints": checkpoints,
            "reference": reference,
            "train_seconds": seconds * protocol.epochs / epochs,
            "measured_train_seconds": seconds,
            "epochs": epochs,
            "train_loss": trained.final.train_loss,
        }

    return ctx.once("paper_trial", build)


def _baseline(ctx: Context, trial: dict[str, Any]) -> dict[str, Any] | None:
    """main's ``measure`` at ``BASELINE_COMMIT`` on the same trial, in a subprocess; None without git history."""
    tree = ctx.workdir / "baseline"
    tree.mkdir(exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", BASELINE_COMMIT], capture_output=True, check=False
    )
    if archive.returncode != 0:
        ctx.log(f"  no baseline: git archive {BASELINE_COMMIT[:7]} failed ({archive.stderr.decode().strip()})")
        return None
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    saved = ctx.workdir / "paper_trial.pt"
    config = trial["config"]
    fields = ("seed", "epochs", "train_size", "test_size", "data_seed", "device")
    torch.save(
        {
            **{k: trial[k] for k in ("model", "init", "v0", "reference")},
            "train": {f: getattr(config, f) for f in fields},
            "data_dir": ctx.data_dir,
        },
        saved,
    )
    result = ctx.workdir / "baseline.json"
    ctx.log(f"  main at {BASELINE_COMMIT[:7]}: measuring the same trial (a subprocess) ...")
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the baseline's packages, not this checkout's
    run = run_process(
        [sys.executable, "-c", _BASELINE_SCRIPT, str(saved), str(result)],
        log_path=ctx.workdir / "baseline.log",
        timeout=3600,
        env=env,
        cwd=tree,
    )
    if run.returncode != 0:
        raise RuntimeError(f"the baseline's measure failed:\n{run.log[-2000:]}")
    return json.loads(result.read_text())


# What the per-analysis table shows beside each analysis' time: (label, estimate key, standard-error key or None).
_ESTIMATES: dict[str, list[tuple[str, str, str | None]]] = {
    "hessian": [("lambda_max", keys.LAMBDA_MAX, keys.RESIDUAL_MAX)],
    "hessian_normalized": [("lambda_max_normalized", keys.LAMBDA_MAX_NORMALIZED, None)],
    "trace": [("trace", keys.TRACE, keys.TRACE_STDERR)],
    "trace_normalized": [("trace_normalized", keys.TRACE_NORMALIZED, keys.TRACE_NORMALIZED_STDERR)],
    "sharpness_eps": [("eps", keys.EPS_SHARPNESS, None)],
    "sharpness_eps_l2": [("eps_l2", keys.EPS_SHARPNESS_L2, None)],
    "sharpness_adaptive": [("adaptive", keys.ADAPTIVE_SHARPNESS, None)],
    "sharpness_adaptive_linf": [("adaptive_linf", keys.ADAPTIVE_SHARPNESS_LINF, None)],
    "sharpness_adaptive_m": [("adaptive_m", keys.M_SHARPNESS, None)],
    "pac_bayes": [("sigma*", f"{keys.PAC_BAYES}_sigma", None)],
    "pac_bayes_mag": [("sigma*", f"{keys.PAC_BAYES_MAG}_sigma", None)],
    "noise_train": [
        (f"train loss @{s}", keys.perturb("train_loss", s), keys.perturb("train_loss_stderr", s)) for s in (0.01, 0.1)
    ],
    "noise": [
        (f"test loss @{s}", keys.perturb("test_loss", s), keys.perturb("test_loss_stderr", s)) for s in (0.01, 0.1)
    ],
    "curvature": [("v^T H v (top)", keys.CURVATURE_TOP, None)],
    "slice_1d": [("loss at span (random)", keys.slice_at_span("random"), None)],
    "barriers": [("test barrier", keys.barrier("test", "loss", False), None)],
}


def _estimate(scalars: dict[str, float], key: str, stderr: str | None) -> str:
    if key not in scalars:
        return "-"
    text = f"{scalars[key]:.4g}"
    if stderr is not None and stderr in scalars:
        text += f" ± {scalars[stderr]:.2g}"
    return text


def _table(ours: dict[str, Any], base: dict[str, Any] | None) -> tuple[list[str], list[dict[str, Any]]]:
    """One line per analysis: seconds on main and here, and each estimate (± its standard error) on main and here."""
    names = list(dict.fromkeys([*(base["seconds"] if base else {}), *ours["seconds"]]))
    rows = []
    for name in names:
        main_s, our_s = (base or {}).get("seconds", {}).get(name, math.nan), ours["seconds"].get(name, math.nan)
        for i, (label, key, stderr) in enumerate(_ESTIMATES.get(name, [("", "", None)])):
            rows.append(
                {
                    "analysis": name if i == 0 else "",
                    "main_s": main_s if i == 0 else math.nan,
                    "ours_s": our_s if i == 0 else math.nan,
                    "estimate": label,
                    "main": _estimate(base["scalars"], key, stderr) if base and key else "",
                    "ours": _estimate(ours["scalars"], key, stderr) if key else "",
                }
            )
    lines = [f"  {'analysis':26s} {'main s':>8s} {'ours s':>8s}  {'estimate':24s} {'main':>22s} {'ours':>22s}"]
    for r in rows:
        main_s = "" if math.isnan(r["main_s"]) else f"{r['main_s']:.1f}"
        our_s = "" if math.isnan(r["ours_s"]) else f"{r['ours_s']:.1f}"
        lines.append(
            f"  {r['analysis']:26s} {main_s:>8s} {our_s:>8s}  {r['estimate']:24s} {r['main']:>22s} {r['ours']:>22s}"
        )
    return lines, rows


def paper_trial_analysis_vs_training(ctx: Context) -> list[Result]:
    """Analysis seconds per training second of one paper-protocol trial, with the ``paper`` preset's analysis config:
    this code against main at ``BASELINE_COMMIT`` (ratio = main's / ours: the speedup). Target: ours <= 0.5."""
    trial = paper_trial(ctx)
    config = PRESETS["paper"].analysis
    ctx.log("  measuring the trial with this code ...")
    seconds, out = timed(
        lambda: measure(
            trial["model"],
            init_params=trial["init"],
            data=trial["splits"],
            config=config,
            reference=trial["reference"],
            v0=trial["v0"],
            trajectory=trial["checkpoints"],
        ),
        ctx.device,
    )
    ours = {"seconds": out.seconds, "scalars": out.scalars, "total": seconds}
    base = _baseline(ctx, trial)
    lines, rows = _table(ours, base)
    for line in lines:
        ctx.log(line)
    train_s = trial["train_seconds"]
    ours_ratio = seconds / train_s
    base_ratio = base["total"] / train_s if base else math.nan
    scaled = f", one epoch x {PRESETS['paper'].train.epochs}" if trial["epochs"] == 1 else ""
    note = (
        f"training {train_s:.0f} s{scaled}; analysis {seconds:.0f} s here"
        + (f", {base['total']:.0f} s on main {BASELINE_COMMIT[:7]}" if base else "; no baseline (no git history)")
        + f"; forward passes in {out.arrays['precision']['forward_dtype']}"
    )
    if base:
        new = sorted(set(ours["seconds"]) - set(base["seconds"]))
        note += f"; analyses main lacks: {', '.join(new)} ({sum(ours['seconds'][n] for n in new):.0f} s)" if new else ""
    return [
        Result(
            "paper_trial_analysis_vs_training",
            ours_ratio,
            base_ratio,
            base_ratio / ours_ratio,
            "analysis s / training s (ratio = speedup)",
            "this code, paper preset",
            f"main at {BASELINE_COMMIT[:7]}, same trial",
            f"<= {GOAL:g}",
            bool(ours_ratio <= GOAL),
            note,
            {
                "train_seconds": train_s,
                "measured_train_seconds": trial["measured_train_seconds"],
                "epochs_trained": trial["epochs"],
                "train_loss": trial["train_loss"],
                "analysis_seconds": seconds,
                "baseline_analysis_seconds": base["total"] if base else None,
                "per_analysis": rows,
                "ours": ours,
                "baseline": base,
            },
        )
    ]


def invariance_audit_vs_per_pair(ctx: Context) -> list[Result]:
    """The invariance audit of a paper-protocol minimum as a sweep runs it now (one combined rescaling per factor,
    every analysis on at most ``InvarianceConfig.images`` images, the original measured again on them) against the
    audit before issue 24 (every layer pair at every factor, the trial's own subsets, the original reused): that one
    is its copies' count times one copy's measured seconds (one copy at the paper's subsets is timed; every copy
    runs the same analyses). Target: <= 3 min at the paper preset. The ratio is the speedup."""
    trial = paper_trial(ctx)
    model, config = trial["model"], PRESETS["paper"].analysis
    inputs = dict(init_params=trial["init"], data=trial["splits"], reference=trial["reference"])
    ctx.log("  the invariance audit as a sweep runs it ...")
    seconds, audit = timed(lambda: audit_invariance(model, config=config, **inputs), ctx.device)
    old = dataclasses.replace(
        config, invariance=InvarianceConfig(factors=config.invariance.factors, combined=False, images=None)
    )
    copies = len(invariance.rescalings(model, old.invariance.factors, combined=False))
    one = invariance.rescaled(model, invariance.rescalings(model, old.invariance.factors, combined=False)[0])
    ctx.log(f"  one copy of the per-pair audit at the paper's subsets (of {copies}) ...")
    copy_seconds, _ = timed(lambda: measure(one, config=audit_config(old), **inputs), ctx.device)
    baseline = copies * copy_seconds
    flagged = sorted(key for key in audit.values if not audit.invariant(key))
    note = (
        f"{len(audit.rescalings)} copies + the original on <= {config.invariance.images} images: {seconds:.0f} s; "
        f"per pair: {copies} copies x {copy_seconds:.0f} s; not invariant: {len(flagged)} of {len(audit.values)}"
    )
    return [
        Result(
            "invariance_audit_vs_per_pair",
            seconds,
            baseline,
            baseline / seconds,
            "s per sweep (ratio = speedup)",
            "combined rescalings, audit-sized subsets",
            f"{copies} per-pair copies at the trial's subsets",
            "<= 180 s",
            bool(seconds <= 180),
            note,
            {
                "seconds": seconds,
                "copy_seconds": copy_seconds,
                "copies_per_pair": copies,
                "ratios": {k: v for k, v in audit.ratios.items()},
                "not_invariant": flagged,
            },
        )
    ]
