"""Fashion-MNIST from local IDX files, parsed once into normalized in-memory tensors.

Sources, in order: an explicit ``data_dir`` (or ``$LANDSCAPE_DATA_DIR``); Debian's package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``); ``./data`` (torchvision's download layout, ``data/FashionMNIST/raw``).
Nothing here downloads: ``download_fashion_mnist`` is a separate, explicit step.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import Tensor

from landscape_core.cli import ArgumentParser, run_command
from landscape_core.errors import UsageError

__all__ = [
    "MEAN",
    "STD",
    "DataMissingError",
    "FashionMNIST",
    "check_subset_size",
    "download_fashion_mnist",
    "find_data_dir",
    "load_fashion_mnist",
    "read_idx",
    "subset",
    "subset_index",
]

MEAN, STD = 0.2860, 0.3530
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
LOCAL_DIR = Path("data")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DataMissingError(UsageError, FileNotFoundError):
    """Fashion-MNIST is not on this machine; the message names the three ways to get it."""


@dataclass(frozen=True)
class FashionMNIST:
    """Normalized images ``[N, 1, 28, 28]`` (float32) and labels ``[N]`` (int64), on one device."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    source: str

    def to(self, device: str | torch.device) -> FashionMNIST:
        return FashionMNIST(
            self.train_x.to(device),
            self.train_y.to(device),
            self.test_x.to(device),
            self.test_y.to(device),
            self.source,
        )


def _file(directory: Path, stem: str) -> Path | None:
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _complete(directory: Path) -> bool:
    return all(_file(directory, stem) is not None for stem in FILES.values())


def find_data_dir(data_dir: str | Path | None = None) -> Path:
    """Return the first directory holding all four IDX files: an explicit one, else Debian's, else ./data.

    Raises:
        DataMissingError: no source has the data (an explicit ``data_dir`` that lacks it is an error too).
    """
    explicit = data_dir or os.environ.get("LANDSCAPE_DATA_DIR")
    candidates = [Path(explicit)] if explicit else [DEBIAN_DIR, LOCAL_DIR]
    for directory in candidates:
        if _complete(directory):
            return directory
    where = ", ".join(str(c) for c in candidates)
    raise DataMissingError(
        f"Fashion-MNIST not found (looked in {where}). Get it one of three ways: "
        "(1) pass --data-dir DIR or set LANDSCAPE_DATA_DIR to a directory holding the four IDX files "
        "(train-images-idx3-ubyte.gz, ...); "
        "(2) on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
        "(installs /usr/share/datasets/fashion-mnist); "
        "(3) with internet access: python -m landscape_core.data --download (torchvision's download into ./data)."
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into a uint8 array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def _normalize(images: np.ndarray) -> Tensor:
    x = torch.from_numpy(images.copy()).to(torch.float32).div_(255.0)
    return x.sub_(MEAN).div_(STD).unsqueeze(1)


@functools.lru_cache(maxsize=4)
def _load_cpu(directory: str) -> FashionMNIST:
    path = Path(directory)
    arrays = {key: read_idx(_file(path, stem)) for key, stem in FILES.items()}
    return FashionMNIST(
        train_x=_normalize(arrays["train_images"]),
        train_y=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_x=_normalize(arrays["test_images"]),
        test_y=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        source=str(path),
    )


def load_fashion_mnist(data_dir: str | Path | None = None, device: str | torch.device = "cpu") -> FashionMNIST:
    """Load (once per process, cached) and return the full normalized dataset on ``device``."""
    data = _load_cpu(str(find_data_dir(data_dir).resolve()))
    return data if torch.device(device).type == "cpu" else data.to(device)


def check_subset_size(option: str, size: int | None, available: int, what: str) -> None:
    """A subset size a user asked for fits the data: ``UsageError`` when it is larger (``subset`` would silently
    take all ``available`` examples instead). None (all of them) always fits."""
    if size is not None and size > available:
        raise UsageError(f"Expected `{option}` <= {available:,} (the {what} there are), got {size:,}")


def subset_index(n: int, size: int | None, seed: int) -> Tensor:
    """The sorted indices ``[size]`` of a deterministic random subset of ``n`` examples (all of them, in order, when
    ``size`` is None or at least ``n``)."""
    if size is None or size >= n:
        return torch.arange(n)
    if size < 1:
        raise ValueError(f"Expected subset size >= 1, got {size}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values


def subset(x: Tensor, y: Tensor, size: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """A deterministic random subset of ``size`` examples (all of them, unshuffled, when ``size`` is None):
    ``x[subset_index(len(x), size, seed)]``."""
    n = x.shape[0]
    if size is None or size >= n:
        return x, y
    index = subset_index(n, size, seed).to(x.device)
    return x[index], y[index]


def download_fashion_mnist(root: str | Path = LOCAL_DIR) -> Path:
    """Download Fashion-MNIST with torchvision into ``root`` (needs internet; never called by tests)."""
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    TorchvisionFashionMNIST(str(root), train=True, download=True)
    TorchvisionFashionMNIST(str(root), train=False, download=True)
    return Path(root)


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m landscape_core.data", description="Say where Fashion-MNIST is, or download it.")
    p.add_argument("--download", action="store_true", help="download it with torchvision into ./data (internet)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m landscape_core.data [--download]``: say where the data is (exit 2 if absent), or download it."""
    return run_command(parser(), argv, _run)


def _run(args: argparse.Namespace, console: Console) -> int:
    if args.download:
        console.print(f"Downloaded to {download_fashion_mnist()}", highlight=False)
    else:
        console.print(f"Fashion-MNIST found in {find_data_dir()}", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
