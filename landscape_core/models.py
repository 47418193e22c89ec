"""The paper's CNN (SeedCNN) and a tiny model of the same layer types for exact tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SeedCNN", "TinyCNN", "build_model", "count_parameters", "memory_format_for"]


class SeedCNN(nn.Module):
    """Conv(1->16)+ReLU, Conv(16->32)+ReLU, MaxPool 2, FC(32*14*14->128)+ReLU, FC(128->10): 809,034 parameters.

    Input: images ``[N, 1, 28, 28]``; output: logits ``[N, 10]``.

    ``forward`` pools conv2's output before its ReLU: ReLU is monotone, so ``relu(maxpool(z)) == maxpool(relu(z))``
    exactly, value for value, and so are the gradients, ties included (positive maxima pick the same first element
    either way; a window whose maximum is <= 0 passes no gradient either way).
    The ReLU then runs on a quarter of the elements, which trains SeedCNN ~1.25x faster on a CPU (measured).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(32 * 14 * 14, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(torch.nn.functional.max_pool2d(self.conv2(x), 2))  # == max_pool2d(relu(conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class TinyCNN(nn.Module):
    """SeedCNN's layer types at a size whose dense Hessian fits in memory (2,570 parameters, 8x8 inputs)."""

    def __init__(self, channels: int = 4, hidden: int = 16, side: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(2 * channels * (side // 2) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    forward = SeedCNN.forward


def memory_format_for(device: torch.device | str) -> torch.memory_format:
    """The layout of convolution weights that runs fastest on ``device``.

    On a CPU, oneDNN runs SeedCNN's convolutions (forward, backward and HVPs) ~1.5x faster with ``channels_last``
    weights: activations then stay NHWC from conv1 to the pooling. CUDA keeps PyTorch's default (not measured here).
    """
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def build_model(name: str = "seed_cnn", device: torch.device | str = "cpu") -> nn.Module:
    """Build a model by name (``seed_cnn`` or ``tiny_cnn``) on ``device``, in that device's fastest layout
    (:func:`memory_format_for`), initialised from torch's global RNG (the layout does not change the values)."""
    models = {"seed_cnn": SeedCNN, "tiny_cnn": TinyCNN}
    if name not in models:
        raise ValueError(f"Expected `model` in {sorted(models)}, got {name!r}")
    return models[name]().to(device=device, memory_format=memory_format_for(device))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
