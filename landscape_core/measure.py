"""One call that measures the geometry of a trained minimum: every analysis the config asks for, as plain results.

``measure`` returns scalars under their stable metric keys (``hessian/lambda_max``, ``sharpness/eps``,
``perturb/test_loss/sigma_0.05``, ``barrier/test_loss``, ...), raw arrays as JSON-ready dicts, and the seconds each
analysis took. It never changes the model. ``LambdaMaxTracker`` is the per-epoch hook that follows lambda_max during
training beside the edge-of-stability threshold (2 + 2 beta) / lr.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape_core import (
    connectivity,
    curves,
    devices,
    directions,
    flatness,
    hessian,
    invariance,
    invariant,
    keys,
    noise,
    sharpness,
    slices,
)
from landscape_core.config import AnalysisConfig, HessianConfig, TrainConfig
from landscape_core.functional import Data, Params, flatten, param_dict
from landscape_core.splits import TrialData
from landscape_core.trajectory import Checkpoints, trajectory_plane_loss
from landscape_core.trajectory import pca_trajectory as trajectory_pca
from landscape_core.trajectory import plane_grid as trajectory_grid

__all__ = [
    "AUDIT_SKIPS",
    "RETEST_SKIPS",
    "LambdaMaxTracker",
    "Measurements",
    "audit_config",
    "audit_invariance",
    "audit_key",
    "measure",
    "population_barriers",
    "retest",
]

#: Analyses the invariance audit leaves out: figures (slices, the test-set noise, the curve and the trajectory
#: planes), training-time work and PAC-Bayes flatness (not in the table: ``keys.NOT_IN_TABLE``); what remains is every
#: measure of the correlation table. The density stays when the config runs it: it shapes the top-k Lanczos run (its
#: first probe), whose Krylov basis deflates the trace, so the audit measures as the trial did; with one probe it costs
#: no HVP of its own.
AUDIT_SKIPS = frozenset({"slices", "noise_test", "tracking", "invariance", "flatness", "curve", "trajectory"})

#: What the reliability audit's second measurement leaves out besides ``AUDIT_SKIPS``: the barriers (their weight
#: matching is most of their cost; their reliability is not audited) and the density (a figure).
RETEST_SKIPS = AUDIT_SKIPS | {"connectivity", "density", "reliability"}

Stage = Callable[[str], None]


@dataclass
class Measurements:
    """What ``measure`` found: scalar metrics by key, raw arrays by name, and seconds per analysis."""

    scalars: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str, stage: Stage | None = None) -> Iterator[None]:
        if stage is not None:
            stage(name)
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start


def _tensor_list(values: torch.Tensor) -> list[float]:
    return [float(v) for v in values.detach().cpu().reshape(-1)]


def measure(
    model: nn.Module,
    *,
    init_params: Params | None,
    data: TrialData,
    config: AnalysisConfig,
    reference: nn.Module | None = None,
    stage: Stage | None = None,
    v0: torch.Tensor | None = None,
    trajectory: Checkpoints | None = None,
) -> Measurements:
    """Run every analysis in ``config`` (minus ``config.skip``) on ``model`` at its current weights.

    Args:
        model: the trained model (unchanged by this call).
        init_params: its initial weights, for the distance from initialization (None: not measured).
        data: the trial's splits; each analysis measures on its own fixed subset of them (``splits.SUBSETS``),
            and random directions are seeded from ``data.seed`` too, so both are the same for every trial.
        config: sizes and resolutions per analysis, and which to skip.
        reference: the study's reference model for the barriers (None: no barriers, e.g. for the reference itself).
        stage: called with each analysis' name as it starts (progress display).
        v0: a start vector for the top eigenvalues' Lanczos, e.g. ``LambdaMaxTracker.vector``, the top eigenvector
            of the last epoch on the tracking subset: it lies close to the final one, so Lanczos meets its residual
            test in fewer HVPs (measured: ``benchmarks`` row ``lambda_max_vs_power_double_backward``). None: random.
        trajectory: the weights kept along training (``trajectory.Checkpoints``, the initial ones included), for the
            trajectory's principal plane; None (or fewer than 3): not drawn.

    Returns:
        Measurements with scalars, arrays and per-analysis seconds.
    """
    out = Measurements()
    seed = data.direction_seed("probes")
    dtype = devices.forward_dtype(config.forward_dtype, next(model.parameters()).device)
    # what the forward-only evaluations ran in (slices, barrier paths, PAC-Bayes); everything else is float32
    out.arrays["precision"] = {"forward_dtype": str(dtype or torch.float32).removeprefix("torch.")}
    h = config.hessian
    hessian_data = data.subset("hessian", h.subset)
    with out.timed("norms", stage):
        out.scalars[keys.WEIGHT_NORM] = flatness.weight_norm(model)
        if init_params is not None:
            out.scalars[keys.DIST_INIT] = flatness.distance_from_init(model, init_params)
        out.scalars[keys.FISHER_RAO] = invariant.fisher_rao_norm(model, hessian_data, chunk_size=h.chunk_size)

    top = None
    hessian_op = normalized_op = None  # one operator over the Hessian subset, shared by every estimator
    if any(config.runs(name) for name in ("hessian", "trace", "density")):
        hessian_op = hessian.HessianOperator(model, hessian_data, chunk_size=h.chunk_size)
        normalized_op = invariant.normalized_hessian(hessian_op)  # diag|w| H diag|w|: the same HVPs, rescaled
    # With the density on, the top-k Lanczos run starts from a random vector and runs density_steps steps at least:
    # it is then also the density's first quadrature probe (one Lanczos run instead of two); otherwise it starts
    # from the tracker's warm start v0 and stops at its tolerance.
    seeds_density = config.runs("density") and config.runs("hessian")
    top_max_iter = max(h.max_iter, h.density_steps) if seeds_density else h.max_iter
    top_min_iter = h.density_steps if seeds_density else 1
    normalized = None
    if config.runs("hessian"):
        with out.timed("hessian", stage):
            top = hessian.top_eigenvalues(
                hessian_op,
                k=h.top_k,
                max_iter=top_max_iter,
                min_iter=top_min_iter,
                tol=h.tol,
                seed=seed,
                v0=None if seeds_density else v0,
            )
        out.scalars.update(
            {
                keys.LAMBDA_MAX: float(top.eigenvalues[0]),
                keys.RESIDUAL_MAX: float(top.residuals.max()),
                keys.CONVERGED: float(top.converged),
                keys.N_HVP: float(top.n_hvp),
                **{keys.lambda_k(i + 1): float(v) for i, v in enumerate(top.eigenvalues)},
            }
        )
        out.arrays["eigenvalues"] = {
            "eigenvalues": _tensor_list(top.eigenvalues),
            "residuals": _tensor_list(top.residuals),
            "converged": bool(top.converged),
            "n_hvp": top.n_hvp,
        }
        with out.timed("hessian_normalized", stage):
            # A purely relative residual test (tol_floor 0): the normalized spectrum is ~w^2 ~ 1e-4 of the raw one,
            # far below the default floor of 1, which would stop the run at its first step.
            normalized = hessian.top_eigenvalues(
                normalized_op, k=1, max_iter=h.max_iter, tol=h.tol, tol_floor=0.0, seed=seed
            )
        out.scalars[keys.LAMBDA_MAX_NORMALIZED] = float(normalized.eigenvalues[0])
        out.scalars[keys.NORMALIZED_CONVERGED] = float(normalized.converged)
    if config.runs("trace"):
        # Hutchinson deflated by each operator's own Lanczos basis (exact trace on the Krylov space, probes on the
        # rest): a smaller standard error at the same probe count (hessian.hessian_trace).
        for name, op, run, estimate_key, stderr_key in (
            ("trace", hessian_op, top, keys.TRACE, keys.TRACE_STDERR),
            ("trace_normalized", normalized_op, normalized, keys.TRACE_NORMALIZED, keys.TRACE_NORMALIZED_STDERR),
        ):
            deflate = run.krylov if run is not None and h.trace_deflate else None
            with out.timed(name, stage):
                trace = hessian.hessian_trace(
                    op, n_probes=h.trace_probes, seed=data.direction_seed("trace"), deflate=deflate
                )
            out.scalars.update({estimate_key: trace.estimate, stderr_key: trace.stderr})
            out.arrays[name] = {
                "estimate": trace.estimate,
                "stderr": trace.stderr,
                "samples": _tensor_list(trace.samples),
                "deflated": trace.deflated,
            }
    if config.runs("density"):
        with out.timed("density", stage):
            density = hessian.spectral_density(
                hessian_op,
                n_probes=h.density_probes,
                n_steps=h.density_steps,
                seed=data.direction_seed("density"),
                runs=[top.krylov] if seeds_density else [],
            )
        low, high = float(density.nodes.min()), float(density.nodes.max())
        width = max((high - low) / 100.0, 1e-3)  # kernel width: 1% of the spectrum's range
        grid = torch.linspace(low - 5 * width, high + 5 * width, 400, dtype=torch.float64)
        out.arrays["density"] = {
            "nodes": density.nodes.tolist(),
            "weights": density.weights.tolist(),
            "grid": grid.tolist(),
            "density": density.density(grid, width).tolist(),
            "kernel_width": width,
        }

    if config.runs("sharpness"):
        _measure_sharpness(model, data, config, out, stage)

    if config.runs("flatness"):
        f = config.flatness
        flat_data = data.subset("flatness", f.subset)
        results = {}
        for aware, key, measure_key in (
            (False, "pac_bayes", keys.PAC_BAYES),
            (True, "pac_bayes_mag", keys.PAC_BAYES_MAG),
        ):
            with out.timed(key, stage):
                result = flatness.pac_bayes_sigma(
                    model,
                    flat_data,
                    magnitude_aware=aware,
                    target_drop=f.target_drop,
                    draws=f.draws,
                    steps=f.bisection_steps,
                    seed=seed,
                    dtype=dtype,
                )
            out.scalars[measure_key] = result.measure
            out.scalars[f"{measure_key}_sigma"] = result.sigma
            out.scalars[keys.RELIABILITY[measure_key]] = float(result.bracketed)
            results[key] = {"sigma": result.sigma, "measure": result.measure, "drop": result.drop_at_sigma}
        out.arrays["flatness"] = results

    for analysis, split, subset_size in (
        ("noise", "train", config.noise.subset),
        ("noise_test", "test", config.noise.test_subset),
    ):
        if config.runs(analysis):
            _measure_noise(model, data.subset(analysis, subset_size), split, config, seed, out, stage)

    if config.runs("curvature"):
        _measure_curvature(model, data, config, top, out, stage)
    if config.runs("slices"):
        _measure_slices(model, data, config, top, dtype, out, stage)

    if config.runs("connectivity") and reference is not None:
        aligned = None
        if config.connectivity.align:
            with out.timed("align", stage):
                aligned = connectivity.align(reference, model, seed=seed)
        _measure_barriers(model, reference, aligned, data, config, dtype, out, stage)
        if config.runs("curve"):
            _measure_curves(model, reference, aligned, data, config, dtype, out, stage)
    if config.runs("trajectory") and trajectory is not None and len(trajectory) >= 3:
        _measure_trajectory(model, trajectory, data, config, dtype, out, stage)
    return out


def _measure_sharpness(
    model: nn.Module, data: TrialData, config: AnalysisConfig, out: Measurements, stage: Stage | None
) -> None:
    """The worst-case searches (APGD, ``steps`` x ``restarts`` gradients each) on the sharpness subset."""
    s = config.sharpness
    sharp_data = data.subset("sharpness", s.subset)
    budget = {"steps": s.steps, "restarts": s.restarts, "seed": data.direction_seed("probes")}
    searches = (
        (keys.EPS_SHARPNESS, "eps", lambda: sharpness.eps_sharpness(model, sharp_data, eps=s.eps, **budget)),
        (
            keys.EPS_SHARPNESS_L2,
            "eps_l2",
            lambda: sharpness.eps_sharpness(model, sharp_data, eps=s.eps_l2, norm="l2", **budget),
        ),
        (
            keys.ADAPTIVE_SHARPNESS,
            "adaptive",
            lambda: sharpness.adaptive_sharpness(model, sharp_data, rho=s.adaptive_rho, **budget),
        ),
        (
            keys.ADAPTIVE_SHARPNESS_LINF,
            "adaptive_linf",
            lambda: sharpness.adaptive_sharpness(model, sharp_data, rho=s.adaptive_rho_linf, norm="linf", **budget),
        ),
        (
            keys.M_SHARPNESS,
            "adaptive_m",
            lambda: sharpness.m_sharpness(model, sharp_data, m=s.m, rho=s.adaptive_rho, **budget),
        ),
    )
    results = {}
    for key, name, search in searches:
        with out.timed(f"sharpness_{name}", stage):
            result = search()
        out.scalars[key] = result.value
        results[name] = result.to_dict()
    out.arrays["sharpness"] = results


def _measure_noise(
    model: nn.Module,
    images: Data,
    split: str,
    config: AnalysisConfig,
    seed: int,
    out: Measurements,
    stage: Stage | None,
) -> None:
    """Weight-noise robustness on ``split`` images: ``train`` is the predictor, ``test`` the paper's Figure 6."""
    n = config.noise
    name = "noise" if split == "test" else "noise_train"  # "noise": the arrays the paper's figure has always read
    pilot = noise.Pilot(draws=n.pilot_draws, images=n.pilot_images) if n.allocate else None
    with out.timed(name, stage):
        # float32, not forward_dtype: at sigma 0.01 bfloat16 moved the test-loss estimate by ~0.11 of its standard
        # error on the paper's CNN (1.2e-4 of 1.1e-3), more than the tenth the analysis allows itself.
        result = sharpness.weight_noise_robustness(
            model, images, sigmas=n.sigmas, draws=n.draws, seed=seed, pilot=pilot
        )
    for i, sigma in enumerate(result.sigmas):
        out.scalars[keys.perturb(f"{split}_loss", sigma)] = result.loss_mean[i]
        out.scalars[keys.perturb(f"{split}_loss_stderr", sigma)] = result.loss_stderr[i]
        out.scalars[keys.perturb(f"{split}_acc", sigma)] = result.acc_mean[i]
        out.scalars[keys.perturb(f"{split}_acc_stderr", sigma)] = result.acc_stderr[i]
        out.scalars[keys.perturb(f"{split}_loss_delta", sigma)] = result.loss_mean[i] - result.base_loss
    out.arrays[name] = result.to_dict()


def _measure_curvature(
    model: nn.Module, trial_data: TrialData, config: AnalysisConfig, top: Any, out: Measurements, stage: Stage | None
) -> None:
    """v^T H v along random unit directions (their mean) and the top eigenvector, each checked against the float64
    Richardson finite difference on the first ``fd_subset`` of the images (the exact value recomputed there, one HVP
    each); the largest relative difference is logged as a diagnostic."""
    c = config.curvature
    data = trial_data.subset("curvature", c.subset)
    named = [
        (f"random_{i}", directions.random_direction(model, seed=trial_data.direction_seed("curvature", i)))
        for i in range(c.directions)
    ]
    if top is not None:
        named.append(("top_eigenvector", top.eigenvectors[0]))
    check = {}
    with out.timed("curvature", stage):
        values = slices.directional_curvatures(model, data, [direction for _, direction in named])
    exact = {name: value for (name, _), value in zip(named, values)}
    randoms = [exact[name] for name, _ in named if name.startswith("random_")]
    out.scalars[keys.CURVATURE_RANDOM] = sum(randoms) / len(randoms)
    if top is not None:
        out.scalars[keys.CURVATURE_TOP] = exact["top_eigenvector"]
    out.arrays["curvature"] = {"exact": exact}
    if not c.fd_check:
        return
    with out.timed("curvature_fd_check", stage):
        few = (data[0][: c.fd_subset], data[1][: c.fd_subset])
        on_few = exact
        if few[0].shape[0] < data[0].shape[0]:
            on_few = dict(zip(exact, slices.directional_curvatures(model, few, [d for _, d in named])))
        for name, direction in named:
            check[name] = slices.finite_difference_curvature(model, few, direction, step=c.fd_step, levels=c.fd_levels)
    rel = {name: abs(check[name] - on_few[name]) / max(abs(on_few[name]), 1e-12) for name in exact}
    out.scalars[keys.CURVATURE_FD_REL_DIFF] = max(rel.values())
    out.arrays["curvature"].update(exact_on_check_images=on_few, finite_difference=check, relative_difference=rel)


def _measure_slices(
    model: nn.Module,
    trial_data: TrialData,
    config: AnalysisConfig,
    top: Any,
    dtype: torch.dtype | None,
    out: Measurements,
    stage: Stage | None,
) -> None:
    c = config.slices
    data = trial_data.subset("slices", c.subset)
    alphas = torch.linspace(-c.span, c.span, c.points_1d, dtype=torch.float64)
    with out.timed("slice_1d", stage):
        direction = directions.random_filter_normalized(model, seed=trial_data.direction_seed("slice_1d"))
        curves = {"random": slices.slice_1d(model, data, direction, alphas, dtype=dtype)}
        if top is not None:
            curves["top_eigenvector"] = slices.slice_1d(
                model, data, directions.eigen_direction(top.eigenvectors[0], model), alphas, dtype=dtype
            )
        out.arrays["slice_1d"] = {
            name: {"alphas": _tensor_list(r.alphas), "loss": _tensor_list(r.loss), "accuracy": _tensor_list(r.accuracy)}
            for name, r in curves.items()
        }
        for name, r in curves.items():
            out.scalars[keys.slice_at_span(name)] = float(r.loss[[0, -1]].mean())
    grid = torch.linspace(-c.span, c.span, c.points_2d, dtype=torch.float64)
    with out.timed("slice_2d", stage):
        d1, d2 = directions.orthogonal_pair(model, seed=trial_data.direction_seed("slice_2d"))
        plane = slices.slice_2d(model, data, d1, d2, grid, grid, dtype=dtype)
        out.arrays["slice_2d"] = {
            "alphas": _tensor_list(plane.alphas),
            "betas": _tensor_list(plane.betas),
            "loss": plane.loss.tolist(),
            "accuracy": plane.accuracy.tolist(),
        }


def _measure_barriers(
    model: nn.Module,
    reference: nn.Module,
    aligned: nn.Module | None,
    data: TrialData,
    config: AnalysisConfig,
    dtype: torch.dtype | None,
    out: Measurements,
    stage: Stage | None,
) -> None:
    k = config.connectivity
    with out.timed("barriers", stage):
        results = connectivity.barriers_between(
            reference, model, _barrier_sets(data, config), points=k.points, aligned_b=aligned, dtype=dtype
        )
    paths: dict[str, Any] = {}
    for (split, is_aligned), (path, result) in results.items():
        _record_path(out, paths, keys.barrier, split, is_aligned, path, result)
    out.arrays["interpolation"] = paths


def _barrier_sets(data: TrialData, config: AnalysisConfig) -> dict[str, Data]:
    """The paths' evaluation sets: the connectivity subsets of the train and the test split."""
    k = config.connectivity
    return {"train": data.subset("barrier_train", k.train_subset), "test": data.subset("barrier_test", k.test_subset)}


def _record_path(
    out: Measurements,
    paths: dict[str, Any],
    key: Callable[[str, str, bool], str],
    split: str,
    aligned: bool,
    path: connectivity.InterpolationResult,
    result: connectivity.BarrierResult,
) -> None:
    """A path's loss, error and peak-loss barriers as scalars named by ``key``, and the path itself in ``paths``."""
    for quantity, value in (
        ("loss", result.loss_barrier),
        ("error", result.error_barrier),
        ("peak_loss", result.peak_loss),
    ):
        out.scalars[key(split, quantity, aligned)] = value
    paths[f"{split}{'_aligned' if aligned else ''}"] = {**path.to_dict(), **result.to_dict()}


def _measure_curves(
    model: nn.Module,
    reference: nn.Module,
    aligned: nn.Module | None,
    data: TrialData,
    config: AnalysisConfig,
    dtype: torch.dtype | None,
    out: Measurements,
    stage: Stage | None,
) -> None:
    """Garipov et al. 2018: a Bezier curve with one bend trained from the reference minimum (t = 0) to this one (t =
    1), raw and to its weight-matched copy; the curve's barriers on the connectivity subsets; the loss over the plane
    through the reference, the raw curve's bend and this minimum."""
    c, k = config.curve, config.connectivity
    sets = _barrier_sets(data, config)
    ts = torch.linspace(0.0, 1.0, k.points, dtype=torch.float64).tolist()  # the line's points: one figure for both
    start = param_dict(reference)
    ends = {False: model} | ({True: aligned} if aligned is not None else {})
    paths: dict[str, Any] = {}
    with out.timed("curve", stage):
        for is_aligned, endpoint in ends.items():
            end = param_dict(endpoint)
            bend = curves.train_bend(
                reference,
                start,
                end,
                data.subset("curve", c.train_subset),
                epochs=c.epochs,
                batch_size=c.batch_size,
                lr=c.lr,
                momentum=c.momentum,
                generator=torch.Generator().manual_seed(data.direction_seed("curve")),
            )
            for split, subset in sets.items():
                path = curves.curve_path(reference, start, bend, end, subset, ts, dtype=dtype)
                _record_path(out, paths, keys.curve_barrier, split, is_aligned, path, connectivity.barrier(path))
            if not is_aligned:
                plane = curves.plane_through(start, bend, end)
                xs, ys = curves.plane_grid(plane, c.plane_points)
                loss, _ = curves.plane_loss(reference, plane, sets["train"], xs, ys, dtype=dtype)
                paths["plane"] = {
                    "xs": xs.tolist(),
                    "ys": ys.tolist(),
                    "loss": loss.tolist(),
                    "curve_xy": plane.curve_xy(ts).tolist(),
                    "points_xy": {
                        label: list(plane.points_xy[name])
                        for name, label in (("start", "reference"), ("bend", "bend"), ("end", "this minimum"))
                    },
                }
    out.arrays["curve"] = paths


def _measure_trajectory(
    model: nn.Module,
    trajectory: Checkpoints,
    data: TrialData,
    config: AnalysisConfig,
    dtype: torch.dtype | None,
    out: Measurements,
    stage: Stage | None,
) -> None:
    """Li et al. 2018: the kept weights' differences to the final ones on their first two principal directions, and
    the train loss over that plane."""
    t = config.trajectory
    with out.timed("trajectory", stage):
        final = param_dict(model)
        pca = trajectory_pca(trajectory.stack(), flatten(final).detach().to("cpu", torch.float32))
        xs, ys = trajectory_grid(pca, t.points)
        loss = trajectory_plane_loss(model, final, pca, data.subset("trajectory", t.subset), xs, ys, dtype=dtype)
    for key, share in zip(keys.TRAJECTORY_EXPLAINED, pca.explained.tolist()):
        out.scalars[key] = share
    out.arrays["trajectory"] = {
        "steps": trajectory.steps,
        "coords": pca.coords.tolist(),
        "explained": pca.explained.tolist(),
        "xs": xs.tolist(),
        "ys": ys.tolist(),
        "loss": loss.tolist(),
    }


def audit_invariance(
    model: nn.Module,
    *,
    init_params: Params | None,
    data: TrialData,
    config: AnalysisConfig,
    reference: nn.Module | None = None,
    original: dict[str, float] | None = None,
    stage: Stage | None = None,
) -> invariance.InvarianceAudit:
    """Every measure of the correlation table (``keys.is_measure``) that ``config`` computes (minus
    ``AUDIT_SKIPS``), recomputed on function-preserving rescalings of ``model`` (``audit_config`` says how).

    ``original``: ``measure``'s scalars of ``model`` with the same ``config``, when already computed: used when the
    audit keeps the trial's subsets (``InvarianceConfig.images`` None or no smaller), else the original is measured
    again on the audit's. Each copy's Lanczos starts from a random vector, the original's may have had a warm start:
    both meet the same tolerance.
    """
    audited = audit_config(config)
    if audited != _without_audit_skips(config):
        original = None  # the trial's own values were measured on more images

    def scalars(copy: nn.Module, init: Params | None) -> dict[str, float]:
        values = measure(copy, init_params=init, data=data, config=audited, reference=reference).scalars
        return {key: value for key, value in values.items() if keys.is_measure(key)}

    def progress(done: int, total: int) -> None:
        if stage is not None:
            stage(f"invariance audit {done + 1}/{total}" if done < total else "invariance audit done")

    settings = config.invariance
    progress(0, len(invariance.rescalings(model, settings.factors, combined=settings.combined)))
    return invariance.audit(
        model,
        scalars,
        factors=settings.factors,
        combined=settings.combined,
        inputs=data.train[0][:256],
        init_params=init_params,
        original=original,
        progress=progress,
    )


def audit_config(config: AnalysisConfig) -> AnalysisConfig:
    """The analyses the invariance audit runs on each copy: ``config`` minus ``AUDIT_SKIPS`` and the curvature's
    finite-difference check, its subsets capped at ``InvarianceConfig.images`` images."""
    images = config.invariance.images
    audited = _without_audit_skips(config)
    return audited if images is None else audited.capped(images)


def audit_key(train: TrainConfig, analysis: AnalysisConfig) -> str:
    """What the invariance audit's values depend on, hashed (16 hex digits): the code of every module of
    ``landscape_core``, the audited analyses (``audit_config``) and the audit's settings, the training protocol (all
    but the seeds and the device) and torch's version. Sweeps with one key can share one audit
    (``tracking.invariance.find_audit``); a change of any measure's code gives a new key."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    protocol = dataclasses.replace(train, seed=0, init_seed=None, order_seed=None, device="any")
    settings = {
        "train": dataclasses.asdict(protocol),
        "analysis": dataclasses.asdict(audit_config(analysis)),
        "torch": torch.__version__,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=sorted).encode())
    return digest.hexdigest()[:16]


def _without_audit_skips(config: AnalysisConfig) -> AnalysisConfig:
    return dataclasses.replace(
        config,
        curvature=dataclasses.replace(config.curvature, fd_check=False),
        skip=frozenset(config.skip) | AUDIT_SKIPS,
    )


def retest(
    model: nn.Module, *, init_params: Params | None, data: TrialData, config: AnalysisConfig, stage: Stage | None = None
) -> dict[str, float]:
    """The reliability audit's second measurement of a minimum: every measure of the correlation table
    (``keys.is_measure``, minus the train-loss control and ``RETEST_SKIPS``) on ``data.retest()``, that is on
    independent image subsets of the same sizes and with independent probes. Returns ``{measure key: value}``."""
    if stage is not None:
        stage("reliability audit: re-measuring on independent images")
    again = dataclasses.replace(
        config,
        curvature=dataclasses.replace(config.curvature, fd_check=False),
        skip=frozenset(config.skip) | RETEST_SKIPS,
    )
    values = measure(model, init_params=init_params, data=data.retest(), config=again).scalars
    return {key: value for key, value in values.items() if keys.is_measure(key) and key != keys.CONTROL}


class LambdaMaxTracker:
    """lambda_max during training on a small fixed train subset (``HessianConfig.track_subset``), each run of Lanczos
    warm-started from the previous one's eigenvector.

    As an epoch hook (``tracker(epoch, model)``) it returns ``{keys.LAMBDA_MAX_EPOCH: ..., keys.EOS_THRESHOLD:
    threshold}``: ``threshold`` is ``TrainConfig.stability_threshold``, where gradient descent with heavy-ball
    momentum beta leaves the stable regime, (2 + 2 beta) / lr (Cohen et al. 2021). With ``HessianConfig.track_every``
    = K it is also an update hook (``tracker.update(step, model)``): every K optimizer steps it appends ``(step,
    lambda_max)`` to ``steps``, the edge-of-stability figure's curve.
    """

    def __init__(self, data: TrialData, config: HessianConfig, *, threshold: float) -> None:
        self.data = data.subset("tracking", config.track_subset)
        self.config, self.seed = config, data.direction_seed("probes")
        self.threshold = threshold
        self.vector: torch.Tensor | None = None
        self.steps: list[tuple[int, float]] = []

    def lambda_max(self, model: nn.Module) -> float:
        """lambda_max of ``model`` on the tracking subset, warm-started from the last eigenvector (kept)."""
        result = hessian.top_eigenvalues(
            hessian.HessianOperator(model, self.data, chunk_size=self.config.chunk_size),
            k=1,
            max_iter=self.config.track_iter,
            tol=self.config.tol,
            seed=self.seed,
            v0=self.vector,
        )
        self.vector = result.eigenvectors[0]
        return float(result.eigenvalues[0])

    def __call__(self, epoch: int, model: nn.Module) -> dict[str, float]:
        return {keys.LAMBDA_MAX_EPOCH: self.lambda_max(model), keys.EOS_THRESHOLD: self.threshold}

    def update(self, step: int, model: nn.Module) -> None:
        """The per-step hook (``train``'s ``on_update``): tracks every ``track_every`` steps, when that is set."""
        every = self.config.track_every
        if every is not None and step % every == 0:
            self.steps.append((step, self.lambda_max(model)))


def population_barriers(
    models: list[nn.Module],
    data: Data,
    *,
    points: int = 25,
    align: bool = True,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Pairwise loss barriers of a population of minima, raw and after weight matching.

    Returns:
        ``{"loss": [m, m], "loss_aligned": [m, m]}`` symmetric matrices with zero diagonals (``loss_aligned`` only
        when ``align``).
    """
    m = len(models)
    alphas = torch.linspace(0.0, 1.0, points, dtype=torch.float64).tolist()
    names = ["loss", "loss_aligned"] if align else ["loss"]
    matrices = {name: torch.zeros(m, m, dtype=torch.float64) for name in names}
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    for done, (i, j) in enumerate(pairs, start=1):
        endpoints = {"loss": models[j]}
        if align:
            endpoints["loss_aligned"] = connectivity.align(models[i], models[j], seed=seed)
        for name, endpoint in endpoints.items():
            value = connectivity.barrier(connectivity.interpolate(models[i], endpoint, data, alphas)).loss_barrier
            matrices[name][i, j] = matrices[name][j, i] = value
        if progress is not None:
            progress(done, len(pairs))
    return matrices
