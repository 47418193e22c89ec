"""Training and evaluation speed: our in-memory loop against the tutorial DataLoader pipeline, FLOP rate against the
machine's matmul rate, batched trials against sequential ones, and evaluation against a plain ``model(x)`` loop."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import Context, Result, at_least, synchronize, timed
from landscape_core.config import TrainConfig
from landscape_core.data import FILES, MEAN, STD, find_data_dir, read_idx
from landscape_core.ensemble import train_ensemble
from landscape_core.functional import effective_chunk, evaluate
from landscape_core.models import SeedCNN, build_model
from landscape_core.splits import TrialData
from landscape_core.train import train

__all__ = [
    "batched_vs_sequential",
    "eval_throughput",
    "flops_vs_peak",
    "seed_cnn_forward_flops",
    "train_vs_dataloader",
]

BATCH = 128
SEED = 1


# ----------------------------------------------------------------------------------------------------------------------
# The tutorial pipeline
# ----------------------------------------------------------------------------------------------------------------------


class TutorialFashionMNIST(Dataset):
    """What ``torchvision.datasets.FashionMNIST(transform=...)`` does per item, over uint8 arrays already in memory:
    a PIL image from the 28x28 array, then the transform (``ToTensor`` + ``Normalize``), and an int label."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class TextbookSeedCNN(SeedCNN):
    """SeedCNN as a tutorial writes it and runs it: ReLU before the pooling, default (NCHW) weights. The same function
    and parameters as ours (``models.SeedCNN`` pools first and trains ``channels_last`` on a CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def _idx_path(directory: Path, stem: str) -> Path:
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f"{stem} not in {directory}")


def tutorial_dataset(ctx: Context, config: TrainConfig) -> TutorialFashionMNIST:
    """The training subset of ``config`` as the tutorial dataset, read from the same IDX files as ours.

    The subset indices are drawn as ``landscape_core.data.subset`` draws them; the images are checked to equal ours.
    """
    directory = find_data_dir(ctx.data_dir)
    images = read_idx(_idx_path(directory, FILES["train_images"]))
    labels = read_idx(_idx_path(directory, FILES["train_labels"]))
    generator = torch.Generator().manual_seed(config.data_seed)
    index = torch.randperm(images.shape[0], generator=generator)[: config.train_size].sort().values.numpy()
    dataset = TutorialFashionMNIST(images[index], labels[index])
    ours_x, ours_y = TrialData.build(ctx.dataset, dataclasses.replace(config, device="cpu")).train
    first = dataset[0][0]
    if not (torch.allclose(first, ours_x[0], atol=1e-5) and int(ours_y[0]) == dataset[0][1]):
        raise RuntimeError("the tutorial dataset does not hold the same images as ours")
    return dataset


# ----------------------------------------------------------------------------------------------------------------------
# Training throughput
# ----------------------------------------------------------------------------------------------------------------------


def _ours_images_per_s(ctx: Context, config: TrainConfig) -> tuple[float, float]:
    """Images/s of ``landscape_core.train`` between its first and last step (evaluation not timed)."""
    stamps: list[tuple[int, float]] = []

    def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
        stamps.append((step, time.perf_counter()))  # train() calls loss.item() first: device work is done

    train(config, TrialData.build(ctx.dataset, config), on_step=on_step)
    (first, t0), (last, t1) = stamps[0], stamps[-1]
    return (last - first) * config.batch_size / (t1 - t0), t1 - t0


def _tutorial_images_per_s(ctx: Context, config: TrainConfig, dataset: TutorialFashionMNIST) -> tuple[float, float]:
    """Images/s of the textbook loop: DataLoader(shuffle, num_workers=0) -> to(device) -> step -> loss.item(), with
    :class:`TextbookSeedCNN` (the same initial weights as ours)."""
    device = torch.device(ctx.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = TextbookSeedCNN().to(device)
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
        model.train()
        stamps = []
        running = 0.0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item()
            stamps.append(time.perf_counter())
    steps = len(stamps) - 1
    return steps * config.batch_size / (stamps[-1] - stamps[0]), stamps[-1] - stamps[0]


def _train_config(ctx: Context) -> TrainConfig:
    size = ctx.pick(quick=8 * BATCH, full=32 * BATCH, cuda=256 * BATCH)  # whole batches: every timed step is full
    return TrainConfig(seed=SEED, epochs=1, batch_size=BATCH, train_size=size, test_size=BATCH, device=str(ctx.device))


def training_throughput(ctx: Context) -> dict[str, float]:
    """Best-of-R images/s of ours and of the tutorial pipeline, alternating so both see the same machine load."""

    def measure() -> dict[str, float]:
        config = _train_config(ctx)
        dataset = tutorial_dataset(ctx, config)
        repeats = ctx.pick(quick=2, full=3)
        ours, base = [], []
        _ours_images_per_s(ctx, dataclasses.replace(config, train_size=2 * BATCH))  # warm-up (allocator, kernels)
        for _ in range(repeats):
            ours.append(_ours_images_per_s(ctx, config)[0])
            base.append(_tutorial_images_per_s(ctx, config, dataset)[0])
        return {
            "ours_images_per_s": max(ours),
            "tutorial_images_per_s": max(base),
            "ours_all": ours,
            "tutorial_all": base,
            "images_per_run": config.train_size,
            "repeats": repeats,
        }

    return ctx.once("training_throughput", measure)


def train_vs_dataloader(ctx: Context) -> list[Result]:
    """Training images/s: ``landscape_core.train`` over in-memory tensors vs torchvision transforms + DataLoader."""
    t = training_throughput(ctx)
    ratio = t["ours_images_per_s"] / t["tutorial_images_per_s"]
    target, met = at_least(ratio, {"cpu": 1.3, "cuda": 3.0}[ctx.device_kind])
    return [
        Result(
            "train_vs_dataloader",
            t["ours_images_per_s"],
            t["tutorial_images_per_s"],
            ratio,
            "img/s",
            "landscape_core.train (in-memory batches)",
            "ToTensor+Normalize per item, DataLoader(128, shuffle, 0 workers)",
            target,
            met,
            f"SeedCNN, batch {BATCH}, best of {t['repeats']}",
            t,
        )
    ]


# ----------------------------------------------------------------------------------------------------------------------
# FLOP rate
# ----------------------------------------------------------------------------------------------------------------------


def seed_cnn_forward_flops(model: nn.Module | None = None, side: int = 28) -> int:
    """Forward FLOPs of one image through SeedCNN: 2 x the multiply-adds of conv1, conv2 (``side`` x ``side``
    outputs, padding 1), fc1 and fc2. Elementwise work (bias, ReLU, pooling, softmax) is not counted."""
    model = model or SeedCNN()
    macs = 0
    for conv in (model.conv1, model.conv2):
        kh, kw = conv.kernel_size
        macs += conv.out_channels * conv.in_channels * kh * kw * side * side
    for fc in (model.fc1, model.fc2):
        macs += fc.in_features * fc.out_features
    return 2 * macs


def matmul_flops_per_s(ctx: Context, n: int = 2048) -> dict[str, float]:
    """Dense float32 ``torch.mm`` of two ``n x n`` matrices on the device: best of several, in FLOP/s."""

    def measure() -> dict[str, float]:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=generator).to(ctx.device)
        b = torch.randn(n, n, generator=generator).to(ctx.device)
        torch.mm(a, b)
        repeats = ctx.pick(quick=5, full=10, cuda=50)
        best = min(timed(lambda: torch.mm(a, b), ctx.device)[0] for _ in range(repeats))
        return {"flops_per_s": 2 * n**3 / best, "seconds": best, "n": n, "repeats": repeats}

    return ctx.once("matmul", measure)


def flops_vs_peak(ctx: Context) -> list[Result]:
    """Achieved training FLOP rate (3 x forward FLOPs x images/s) over the measured dense matmul FLOP rate."""
    t = training_throughput(ctx)
    mm = matmul_flops_per_s(ctx)
    per_image = 3 * seed_cnn_forward_flops()
    achieved = per_image * t["ours_images_per_s"]
    ratio = achieved / mm["flops_per_s"]
    target, met = at_least(ratio, {"cpu": 0.6, "cuda": None}[ctx.device_kind])
    return [
        Result(
            "flops_vs_peak",
            achieved / 1e9,
            mm["flops_per_s"] / 1e9,
            ratio,
            "GFLOP/s",
            "training (3 x forward FLOPs x img/s)",
            f"torch.mm {mm['n']}x{mm['n']} float32",
            target,
            met,
            f"{per_image / 1e6:.1f} MFLOP per training image",
            {"train_flops_per_image": per_image, "achieved_flops_per_s": achieved, "matmul": mm},
        )
    ]


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation throughput
# ----------------------------------------------------------------------------------------------------------------------


def eval_throughput(ctx: Context) -> list[Result]:
    """Images/s of ``functional.evaluate`` (TrainConfig's eval_chunk) against ``model(x)`` in batches of 1000 under
    ``torch.no_grad`` (the pytorch/examples MNIST test loop, with :class:`TextbookSeedCNN`), same weights and data.
    Informational."""
    size = ctx.pick(quick=2048, full=8192, cuda=10000)
    x = ctx.dataset.test_x[:size].to(ctx.device)
    y = ctx.dataset.test_y[:size].to(ctx.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = build_model("seed_cnn", ctx.device)
        textbook = TextbookSeedCNN().to(ctx.device)  # its own init is overwritten: same weights as ours
    textbook.load_state_dict(model.state_dict())
    chunk = TrainConfig().eval_chunk

    def plain() -> tuple[float, float]:
        textbook.eval()
        loss = correct = 0.0
        with torch.no_grad():
            for start in range(0, size, 1000):
                logits = textbook(x[start : start + 1000])
                loss += nn.functional.cross_entropy(logits, y[start : start + 1000], reduction="sum").item()
                correct += (logits.argmax(1) == y[start : start + 1000]).sum().item()
        return loss / size, correct / size

    def ours() -> tuple[float, float]:
        return evaluate(model, (x, y), chunk_size=chunk)

    plain(), ours()  # warm-up
    repeats = ctx.pick(quick=2, full=3)
    t_ours, t_plain = [], []
    for _ in range(repeats):
        t_ours.append(timed(ours, ctx.device)[0])
        t_plain.append(timed(plain, ctx.device)[0])
    ours_rate, plain_rate = size / min(t_ours), size / min(t_plain)
    # What functional.CPU_CHUNK rests on: a plain forward loop's speed by examples per pass.
    by_chunk = {}
    with torch.no_grad():
        for per_pass in (64, 128, 256, 512, 1024, 2048):
            best = min(
                timed(lambda n=per_pass: [model(x[i : i + n]) for i in range(0, size, n)], ctx.device)[0]
                for _ in range(repeats - 1)
            )
            by_chunk[per_pass] = size / best
    return [
        Result(
            "eval_throughput",
            ours_rate,
            plain_rate,
            ours_rate / plain_rate,
            "img/s",
            f"functional.evaluate(chunk {chunk})",
            "model(x) in batches of 1000, no_grad",
            note=(
                f"{size} test images; forward {seed_cnn_forward_flops() * ours_rate / 1e9:.1f} GFLOP/s; passes of "
                f"{effective_chunk(chunk, ctx.device)}; best pass size {max(by_chunk, key=by_chunk.get)}"
            ),
            timings={
                "ours_seconds": t_ours,
                "plain_seconds": t_plain,
                "images": size,
                "ours_pass_size": effective_chunk(chunk, ctx.device),
                "plain_images_per_s_by_pass_size": by_chunk,
            },
        )
    ]


# ----------------------------------------------------------------------------------------------------------------------
# Batched trials
# ----------------------------------------------------------------------------------------------------------------------


def batched_vs_sequential(ctx: Context) -> list[Result]:
    """Trials per minute: B seeds trained by ``train_ensemble`` (its default strategy on this device) against B calls
    of ``train``, same configs. On a CPU the ``vmap`` strategy is also timed (an extra, informational row)."""
    members = 4
    size = ctx.pick(quick=2048, full=4096, cuda=60000)  # seconds per contender: sub-second timings are noise here
    test = ctx.pick(quick=512, full=1024, cuda=10000)
    epochs = ctx.pick(quick=1, full=1, cuda=2)
    base = TrainConfig(epochs=epochs, batch_size=BATCH, train_size=size, test_size=test, device=str(ctx.device))
    configs = [dataclasses.replace(base, seed=seed) for seed in range(1, members + 1)]
    warm = [dataclasses.replace(c, train_size=2 * BATCH, epochs=1) for c in configs[:2]]
    warm_data = TrialData.build(ctx.dataset, warm[0])
    train(warm[0], warm_data)  # warm-up
    train_ensemble(warm, warm_data)
    data = TrialData.build(ctx.dataset, base)

    def sequential() -> None:
        for config in configs:
            train(config, data)

    t_seq = t_batched = math.inf
    for _ in range(2):  # best of two, alternating
        t_seq = min(t_seq, timed(sequential, ctx.device)[0])
        seconds, results = timed(lambda: train_ensemble(configs, data), ctx.device)
        t_batched = min(t_batched, seconds)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"ensemble members failed: {failed}")
    per_minute = members * 60 / t_batched, members * 60 / t_seq
    default = "vmap" if ctx.device.type == "cuda" else "loop"
    target, met = at_least(per_minute[0] / per_minute[1], {"cpu": 1.0, "cuda": 4.0}[ctx.device_kind])
    timings = {
        "members": members,
        "train_size": size,
        "test_size": test,
        "epochs": epochs,
        "batched_seconds": t_batched,
        "sequential_seconds": t_seq,
        "strategy": default,
    }
    rows = [
        Result(
            "batched_vs_sequential",
            per_minute[0],
            per_minute[1],
            per_minute[0] / per_minute[1],
            "trials/min",
            f"train_ensemble, B={members} ({default})",
            f"{members} x train()",
            target,
            met,
            f"{size} train / {test} test images, {epochs} epoch(s)",
            timings,
        )
    ]
    if ctx.device.type != "cuda":
        t_vmap, _ = timed(lambda: train_ensemble(configs, data, vectorize=True), ctx.device)
        timings["vmap_seconds"] = t_vmap
        rows.append(
            Result(
                "batched_vmap_vs_sequential",
                members * 60 / t_vmap,
                per_minute[1],
                t_seq / t_vmap,
                "trials/min",
                f"train_ensemble(vectorize=True), B={members}",
                f"{members} x train()",
                note="why the CPU default is the loop: grouped convolutions",
                timings={"vmap_seconds": t_vmap, "sequential_seconds": t_seq},
            )
        )
    synchronize(ctx.device)
    return rows
