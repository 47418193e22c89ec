"""Which images each analysis sees: the data-split policy, named once.

A sweep fixes its data with one seed, ``TrainConfig.data_seed``, so every trial of the sweep trains, tests and is
measured on the same images, and numbers are comparable across trials.

1. The trial's two splits are drawn from Fashion-MNIST's full sets: ``train`` (``train_size`` of the 60,000 training
   images) and ``test`` (``test_size`` of the 10,000 test images). ``TrialData.build`` draws them once.
2. Each analysis then measures on its own fixed subset of one of those splits, listed in ``SUBSETS``: the subset
   named ``name`` is ``subset(split, size, data_seed + SUBSETS[name].offset)``, with its size from the analysis
   config. Distinct offsets give distinct, independent draws.
3. Random directions are seeded the same way, from ``data_seed + DIRECTION_SEEDS[name]`` (``+ i`` for the i-th of
   several).

Only the generalization targets (test loss, test error) and two of the paper's figures (weight noise on test
images, the test-loss barrier) read the ``test`` split; every measure that enters the correlation table reads
``train`` (``keys.MEASURES``), so no predictor sees the images its target is computed on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from landscape_core.config import AnalysisConfig, TrainConfig
from landscape_core.data import FashionMNIST, subset, subset_index
from landscape_core.devices import resolve_device
from landscape_core.functional import Data

__all__ = ["DIRECTION_SEEDS", "RETEST_SEED_OFFSET", "SPLITS", "SUBSETS", "Draw", "TrialData", "subsets_used"]

#: Added to ``data_seed`` for the reliability audit's re-measurement (``TrialData.retest``); far from every offset
#: of ``SUBSETS`` and ``DIRECTION_SEEDS``, so no subset or direction is drawn twice.
RETEST_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class Draw:
    """One fixed random subset: drawn from ``split`` with seed ``data_seed + offset``, for ``purpose``."""

    split: Literal["train", "test"]
    offset: int
    purpose: str


#: The trial's splits, drawn from the full Fashion-MNIST training and test sets.
SPLITS: dict[str, Draw] = {
    "train": Draw("train", 0, "training, and the train loss of the generalization gap"),
    "test": Draw("test", 1, "the generalization targets: test loss and test error"),
}

#: Each analysis' subset of the trial's splits.
SUBSETS: dict[str, Draw] = {
    "hessian": Draw("train", 0, "top-k eigenvalues, trace and density (raw and normalized), Fisher-Rao norm"),
    "sharpness": Draw("train", 1, "eps-sharpness and adaptive sharpness"),
    "flatness": Draw("train", 2, "PAC-Bayes sigma*, plain and magnitude-aware"),
    "noise": Draw("train", 3, "weight-noise robustness, the predictor"),
    "noise_test": Draw("test", 3, "weight-noise robustness on test images (the paper's figure 6; never a predictor)"),
    "slices": Draw("train", 4, "1D and 2D loss slices"),
    "curvature": Draw("train", 4, "directional curvature v^T H v (the slices' images: nested subsets of one draw)"),
    "barrier_train": Draw("train", 5, "train-loss barriers on the linear path to another minimum"),
    "barrier_test": Draw("test", 6, "test-loss barriers (the paper's figure; never a predictor), the barrier matrix"),
    "tracking": Draw("train", 8, "per-epoch lambda_max during training"),
    "curve": Draw("train", 9, "training the bend of the curve to the reference minimum"),
    "trajectory": Draw("train", 10, "the loss on the training trajectory's principal plane"),
}

#: Seed offsets of random directions (added to ``data_seed``; the i-th of several directions adds ``i`` too).
DIRECTION_SEEDS: dict[str, int] = {
    "probes": 0,  # Lanczos starts, Hutchinson and SLQ probes, sharpness starts, noise draws, weight-matching order
    "slice_1d": 0,
    "slice_2d": 7,
    "curvature": 100,
    "trace": 200,  # Hutchinson probes: drawn apart from the Lanczos start whose Krylov basis deflates them
    "density": 300,  # SLQ probes beyond the one the top-k Lanczos run provides
    "curve": 400,  # the curve's mini-batch order and its t draws
}


def subsets_used(config: AnalysisConfig) -> dict[str, int | None]:
    """The subsets (``SUBSETS``) the analyses of ``config`` measure on, with their sizes (None: the whole split)."""
    c = config
    candidates = {
        "hessian": (c.hessian.subset, c.runs("hessian") or c.runs("trace") or c.runs("density")),
        "sharpness": (c.sharpness.subset, c.runs("sharpness")),
        "flatness": (c.flatness.subset, c.runs("flatness")),
        "noise": (c.noise.subset, c.runs("noise")),
        "noise_test": (c.noise.test_subset, c.runs("noise_test")),
        "slices": (c.slices.subset, c.runs("slices")),
        "curvature": (c.curvature.subset, c.runs("curvature")),
        "barrier_train": (c.connectivity.train_subset, c.runs("connectivity")),
        "barrier_test": (c.connectivity.test_subset, c.runs("connectivity")),
        "tracking": (c.hessian.track_subset, c.runs("tracking") and c.runs("hessian")),
        "curve": (c.curve.train_subset, c.runs("curve") and c.runs("connectivity")),
        "trajectory": (c.trajectory.subset, c.runs("trajectory")),
    }
    return {name: size for name, (size, used) in candidates.items() if used}


@dataclass(frozen=True)
class TrialData:
    """A trial's train and test splits, on its device, and the seed that drew them and draws every subset.

    Attributes:
        train: ``(images [N, 1, 28, 28], labels [N])`` the model trains on.
        test: ``(images [M, 1, 28, 28], labels [M])`` the targets are computed on.
        seed: ``data_seed``.
        train_index: which of Fashion-MNIST's training images ``train`` holds ``[N]`` (None: data built by hand).
        test_index: which of its test images ``test`` holds ``[M]``.
        source: where the images were read from.
    """

    train: Data
    test: Data
    seed: int = 0
    train_index: Tensor | None = None
    test_index: Tensor | None = None
    source: str = ""

    @classmethod
    def build(cls, dataset: FashionMNIST, config: TrainConfig) -> TrialData:
        """The splits of ``config`` (``train_size``, ``test_size``, ``data_seed``) on its device. Every trial with
        the same three values gets the same images, so a sweep builds this once and hands it to every trial."""
        device = resolve_device(config.device)
        seed = config.data_seed
        train_index = subset_index(len(dataset.train_y), config.train_size, seed + SPLITS["train"].offset)
        test_index = subset_index(len(dataset.test_y), config.test_size, seed + SPLITS["test"].offset)
        return cls(
            train=(dataset.train_x[train_index].to(device), dataset.train_y[train_index].to(device)),
            test=(dataset.test_x[test_index].to(device), dataset.test_y[test_index].to(device)),
            seed=seed,
            train_index=train_index,
            test_index=test_index,
            source=dataset.source,
        )

    def subset(self, name: str, size: int | None) -> Data:
        """The fixed subset ``name`` of ``SUBSETS`` with ``size`` examples (all of its split when None)."""
        if name not in SUBSETS:
            raise ValueError(f"Expected a subset name in {sorted(SUBSETS)}, got {name!r}")
        draw = SUBSETS[name]
        x, y = self.train if draw.split == "train" else self.test
        return subset(x, y, size, self.seed + draw.offset)

    def indices(self, name: str, size: int | None = None) -> Tensor | None:
        """Which images of the full Fashion-MNIST split the named split (``SPLITS``) or subset (``SUBSETS``) holds,
        sorted; None for data built by hand (no indices known)."""
        if name in SPLITS:
            return self.train_index if name == "train" else self.test_index
        if name not in SUBSETS:
            raise ValueError(f"Expected a split or subset name in {sorted(SPLITS) + sorted(SUBSETS)}, got {name!r}")
        draw = SUBSETS[name]
        parent = self.train_index if draw.split == "train" else self.test_index
        if parent is None:
            return None
        return parent[subset_index(len(parent), size, self.seed + draw.offset)]

    def retest(self) -> TrialData:
        """The same splits with every subset and every random direction drawn anew (seed + ``RETEST_SEED_OFFSET``):
        the reliability audit's second measurement of a minimum, on independent images of the same sizes."""
        return dataclasses.replace(self, seed=self.seed + RETEST_SEED_OFFSET)

    def direction_seed(self, name: str, index: int = 0) -> int:
        """The seed of the ``index``-th random direction of kind ``name`` (``DIRECTION_SEEDS``)."""
        return self.seed + DIRECTION_SEEDS[name] + index

    def matches(self, config: TrainConfig) -> bool:
        """True when these are the splits ``config`` asks for: its data seed, and its sizes where it sets them."""
        sizes = ((config.train_size, self.train[0].shape[0]), (config.test_size, self.test[0].shape[0]))
        return self.seed == config.data_seed and all(want is None or want == have for want, have in sizes)
