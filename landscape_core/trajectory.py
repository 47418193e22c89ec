"""The optimizer's trajectory on its principal plane (Li et al. 2018, "Visualizing the loss landscape of neural nets",
section 7): checkpoints kept along training, the PCA of their differences to the final weights, and the loss on the
plane of the first two principal directions through the final weights.

Li et al. fit a PCA to ``M = [theta_0 - theta_n; ...; theta_{n-1} - theta_n]``, project each checkpoint's difference
onto the first two components and draw the path over the loss contours of that plane. Random directions would miss
the path entirely: in high dimension it lies almost orthogonal to any of them.

Flat parameter vectors here are in the order of ``model.named_parameters()`` (:func:`functional.flatten`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from landscape_core.common import check, check_count
from landscape_core.directions import as_params
from landscape_core.functional import DEFAULT_CHUNK, Data, LossFn, Params, flatten
from landscape_core.slices import slice_2d

__all__ = [
    "Checkpoints",
    "TrajectoryPCA",
    "pca_trajectory",
    "plane_grid",
    "trajectory_plane_loss",
]

Progress = Callable[[int, int], None]


class Checkpoints:
    """Flat copies of a model's parameters kept along training, for :func:`pca_trajectory`.

    Each copy is a flat float32 CPU tensor ``[P]``, not a model: ``K`` copies hold ``K x P`` floats, 4 K P bytes
    (SeedCNN, P = 809,034: 3.2 MB per checkpoint, 324 MB for 100). The training loop calls the object after every
    optimizer step, ``checkpoints(step, model)``, and it keeps a copy when ``step % every == 0``; :meth:`add` keeps one
    unconditionally (the initial weights as step 0, the final ones). A step stored twice keeps the later copy once, so
    the final weights can be added whether or not the hook kept them already. The model is only read.

    With ``limit``, a training of unknown length (a stop rule under an epoch cap) keeps between ``limit / 2`` and
    ``limit`` evenly spaced copies: when the hook's copies exceed ``limit``, every other one is dropped and ``every``
    doubles.

    Args:
        every: Keep a copy every ``every`` optimizer steps (>= 1).
        limit: The most copies the hook keeps (>= 2); None: no limit.
    """

    def __init__(self, every: int, limit: int | None = None) -> None:
        check_count("every", every)
        check(limit is None or limit >= 2, "limit", ">= 2 or None", limit)
        self.every, self.limit = every, limit
        self._steps: list[int] = []
        self._flats: list[Tensor] = []

    @classmethod
    def along_training(cls, checkpoints: int) -> Checkpoints:
        """The trajectory's hook for a training of any length: between ``checkpoints`` and twice as many copies
        (``TrajectoryConfig.checkpoints``), evenly spaced over however many steps it takes (a stop rule may end it
        early)."""
        return cls(1, limit=2 * checkpoints)

    def __call__(self, step: int, model: nn.Module) -> None:
        """The per-update hook (``train``'s ``on_update``): ``step`` is the optimizer steps taken so far (0 at
        initialization)."""
        if step % self.every == 0:
            self.add(step, model)
            if self.limit is not None and len(self._steps) > self.limit:
                self.every *= 2
                kept = [i for i, s in enumerate(self._steps) if s % self.every == 0]
                self._steps = [self._steps[i] for i in kept]
                self._flats = [self._flats[i] for i in kept]

    def add(self, step: int, model: nn.Module | Params) -> None:
        """Keep a copy of the model's parameters (or of a parameter dict) at ``step`` (>= 0), whatever ``every``
        says."""
        check_count("step", step, minimum=0)
        params = dict(model.named_parameters()) if isinstance(model, nn.Module) else model
        with torch.no_grad():
            flat = flatten(params).to(device="cpu", dtype=torch.float32)  # cat copies
        if self._flats:
            size = self._flats[0].numel()
            check(flat.numel() == size, "model", f"with {size} parameters, as before", flat.numel())
        if step in self._steps:
            self._flats[self._steps.index(step)] = flat
        else:
            self._steps.append(step)
            self._flats.append(flat)

    def __len__(self) -> int:
        return len(self._steps)

    @property
    def steps(self) -> list[int]:
        """The stored steps ``[K]``, in the order they were added (the rows of :meth:`stack`)."""
        return list(self._steps)

    def stack(self) -> Tensor:
        """The stored copies as one float32 CPU tensor ``[K, P]``, a row per step of :attr:`steps` (a new tensor)."""
        if not self._flats:
            raise ValueError("Expected at least one stored checkpoint, got none")
        return torch.stack(self._flats)


@dataclass(frozen=True)
class TrajectoryPCA:
    """The principal plane of a trajectory, and the trajectory on it.

    Attributes:
        components: ``[2, P]`` float64, orthonormal rows: the first two principal directions of the differences
            ``D = checkpoints - final``.
        coords: ``[K, 2]`` float64, ``D @ components.T``: each checkpoint's projection, the final weights at the
            origin (not centered: see :func:`pca_trajectory`).
        explained: ``[2]`` float64, the fraction of the differences' variance along each component, as sklearn's
            ``explained_variance_ratio_``.
    """

    components: Tensor
    coords: Tensor
    explained: Tensor


def pca_trajectory(checkpoints: Tensor, final: Tensor) -> TrajectoryPCA:
    """The first two principal directions of a trajectory's differences to its final weights (Li et al. 2018, sec. 7).

    The fit is Li et al.'s: sklearn's ``PCA(n_components=2)`` on ``M``, the rows of ``D = checkpoints - final`` other
    than the final weights' own (an all-zero row, left out so that ``M`` is the same whether or not the stack
    includes the final checkpoint). Like sklearn, the fit centers ``M`` (subtracts its mean row); the coordinates do
    not: ``coords`` are the projections of the uncentered differences, so the final weights sit at the origin and
    ``final + coords[k] @ components`` is checkpoint k's point on the plane (checkpoint k itself when the
    trajectory lies in the plane). Each component's sign puts the first checkpoint at a coordinate >= 0.

    How: the eigendecomposition of the ``n x n`` Gram matrix ``G = Mc Mc^T`` of the centered rows, then
    ``component_i = u_i^T Mc / sqrt(lambda_i)``. With ``n`` (tens) much smaller than ``P`` (~1e6) this is one
    matrix product, ~35x faster than ``torch.linalg.svd`` of ``Mc`` (0.14 s against 4.8 s for 40 x 1e6 on one CPU
    thread), and needs ``n^2`` extra numbers instead of LAPACK's copies of ``Mc``. Forming ``G`` squares the
    condition number; in float64 the top two components keep about ``1e-16 (s_1 / s_2)^2`` relative error, and a
    Gram-Schmidt pass makes them orthonormal to rounding. Everything is float64 on the CPU: ``D`` and ``Mc`` take
    16 K P bytes at the peak. A direction counts when its eigenvalue exceeds ``n eps_64 lambda_1`` (what the Gram
    matrix resolves); a straight path stored in float32 can keep a second direction made of rounding above that,
    and its ``explained[1]`` (2e-14 on a straight path of 20 float32 checkpoints) is what shows it.

    Args:
        checkpoints: ``[K, P]`` flat parameters along training (e.g. :meth:`Checkpoints.stack`), K >= 3.
        final: ``[P]`` the final weights, the origin of the plane.

    Returns:
        A :class:`TrajectoryPCA`.

    Raises:
        ValueError: fewer than 3 checkpoints, a size mismatch, or differences that span fewer than 2 directions
            after centering (rank < 2: a straight path, or checkpoints all equal).
    """
    check(checkpoints.dim() == 2, "checkpoints", "of shape [K, P]", tuple(checkpoints.shape))
    check(checkpoints.shape[0] >= 3, "checkpoints", "with K >= 3 rows", checkpoints.shape[0])
    check(final.shape == checkpoints.shape[1:], "final", f"of shape {tuple(checkpoints.shape[1:])}", tuple(final.shape))
    diff = checkpoints.detach().to(device="cpu", dtype=torch.float64) - final.detach().to("cpu", torch.float64)
    fit = diff[diff.ne(0).any(dim=1)]
    centered = fit - fit.mean(dim=0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centered @ centered.T)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp(min=0), eigenvectors.flip(1)
    # The Gram matrix's eigenvalues are exact to about n eps lambda_1: below that, a direction is not resolved.
    largest = float(eigenvalues[0]) if eigenvalues.numel() else 0.0
    rank = int((eigenvalues > fit.shape[0] * torch.finfo(torch.float64).eps * largest).sum())
    if rank < 2:
        raise ValueError(
            f"Expected checkpoints whose differences to `final` span >= 2 directions, got rank {rank} "
            f"({fit.shape[0]} of {checkpoints.shape[0]} checkpoints differ from `final`)"
        )
    components = (eigenvectors[:, :2].T @ centered) / eigenvalues[:2].sqrt().unsqueeze(1)
    components[0] /= torch.linalg.vector_norm(components[0])
    components[1] -= (components[1] @ components[0]) * components[0]
    components[1] /= torch.linalg.vector_norm(components[1])
    signs = torch.where(diff[0] @ components.T < 0, -1.0, 1.0).to(torch.float64)
    components *= signs.unsqueeze(1)
    return TrajectoryPCA(
        components=components, coords=diff @ components.T, explained=eigenvalues[:2] / eigenvalues.sum()
    )


def plane_grid(pca: TrajectoryPCA, points: int, margin: float = 0.2) -> tuple[Tensor, Tensor]:
    """A grid that covers the trajectory's coordinates and the origin, widened by ``margin`` of its span per side.

    Args:
        pca: The trajectory's :class:`TrajectoryPCA`.
        points: Grid points per axis (>= 2).
        margin: Extra room on each side, as a fraction of the span along that axis (>= 0).

    Returns:
        ``(xs [points], ys [points])`` float64, increasing: the coordinates along the first and second component.
    """
    check_count("points", points, minimum=2)
    check(margin >= 0, "margin", ">= 0", margin)
    axes = []
    for values in pca.coords.T:
        low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
        pad = margin * (high - low) if high > low else 1.0
        axes.append(torch.linspace(low - pad, high + pad, points, dtype=torch.float64))
    return axes[0], axes[1]


def trajectory_plane_loss(
    model: nn.Module,
    final_params: Params | Tensor,
    pca: TrajectoryPCA,
    data: Data,
    xs: Tensor | Sequence[float],
    ys: Tensor | Sequence[float],
    *,
    chunk_size: int = DEFAULT_CHUNK,
    loss_fn: LossFn | None = None,
    progress: Progress | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The loss on the trajectory's principal plane, ``L(final + x c1 + y c2)`` at each grid point.

    A 2D slice (:func:`slices.slice_2d`) through the final weights along the two components: the model is copied
    once with its parameters set to ``final_params`` (the caller's model is not touched, whatever its weights), and
    the components are cast to the parameters' dtype and device.

    Args:
        model: The architecture (not mutated; its copy is evaluated in eval mode, with the model's buffers).
        final_params: The final weights, a parameter dict (or flat ``[P]``) shaped like the model's.
        pca: The trajectory's :class:`TrajectoryPCA`, fitted with these final weights.
        data: ``(inputs [N, ...], targets [N])``.
        xs: ``[n]`` coordinates along ``pca.components[0]``.
        ys: ``[m]`` coordinates along ``pca.components[1]``.
        chunk_size: Examples per forward pass.
        loss_fn: Mean loss of a chunk; cross-entropy when ``None``.
        progress: Called as ``progress(done, total)`` after each of the ``n * m`` points.
        dtype: The forward passes' arithmetic (``functional.evaluate``); None: the model's own.

    Returns:
        ``[m, n]`` float64, ``loss[j, i]`` at ``(xs[i], ys[j])`` (rows along y, as ``matplotlib.contour`` reads it).
    """
    at_final = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in as_params(final_params, model).items():
            at_final.get_parameter(name).copy_(value)
    c1, c2 = pca.components
    return slice_2d(
        at_final, data, c1, c2, xs, ys, chunk_size=chunk_size, loss_fn=loss_fn, progress=progress, dtype=dtype
    ).loss.T.contiguous()
