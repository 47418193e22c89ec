"""The model architectures, registered by name: the paper's CNN (SeedCNN) and a tiny model of the same layer types.

Architectures are plug-ins: :func:`register_model` adds a class to :data:`MODELS` under a name, :func:`build_model`
builds one by name (with a width multiplier) on a device. Every architecture declares how its hidden units can be
permuted without changing its function, ``permutation_spec() -> PermutationSpec`` (see
:mod:`landscape_core.permutations`), which weight matching (:mod:`landscape_core.connectivity`) reads; connectivity
knows nothing about any particular architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from landscape_core.common import check
from landscape_core.permutations import ParamAxes, PermutationSpec

__all__ = [
    "MODELS",
    "SeedCNN",
    "TinyCNN",
    "build_model",
    "count_parameters",
    "memory_format_for",
    "register_model",
    "scaled",
]

MODELS: dict[str, type[nn.Module]] = {}
"""The registered architectures by name; each takes a keyword ``width`` (a multiplier of its channels and hidden
units) and has the methods ``permutation_spec()`` and ``rescaling_pairs()`` (see :mod:`landscape_core.invariance`)."""

M = TypeVar("M", bound=type[nn.Module])


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: register an architecture under ``name`` in :data:`MODELS` (a name is taken once)."""

    def decorate(cls: M) -> M:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"Expected a new model name, got {name!r}, already {MODELS[name].__name__}")
        MODELS[name] = cls
        return cls

    return decorate


def scaled(units: int, width: float) -> int:
    """``units * width`` rounded to the nearest integer, at least 1 (width 1 gives ``units`` exactly)."""
    check(width > 0, "width", "> 0", width)
    return max(1, round(units * width))


def _two_conv_forward(model: nn.Module, x: Tensor) -> Tensor:
    x = torch.relu(model.conv1(x))
    x = torch.relu(torch.nn.functional.max_pool2d(model.conv2(x), 2))  # == max_pool2d(relu(conv2(x)))
    x = torch.relu(model.fc1(x.flatten(1)))
    return model.fc2(x)


#: The layer pairs around each positively homogeneous nonlinearity (ReLU, and ReLU after max-pooling) of the two-conv
#: architectures: scaling the first layer's weights and bias by a > 0 and the second layer's weights by 1 / a leaves
#: the function unchanged (Dinh et al. 2017).
TWO_CONV_RESCALING_PAIRS = (("conv1", "conv2"), ("conv2", "fc1"), ("fc1", "fc2"))


def _two_conv_spec(model: nn.Module) -> PermutationSpec:
    """conv1's channels (P_conv1), conv2's channels (P_conv2) and fc1's units (P_fc1). fc1 reads conv2's pooled map
    flattened channel-major, ``[C2 * S]`` with ``S = model.pooled_area``: it is viewed as ``[hidden, C2, S]``."""
    c2, hidden = model.conv2.out_channels, model.fc1.out_features
    return PermutationSpec(
        {
            "conv1.weight": ParamAxes(("P_conv1", None, None, None)),
            "conv1.bias": ParamAxes(("P_conv1",)),
            "conv2.weight": ParamAxes(("P_conv2", "P_conv1", None, None)),
            "conv2.bias": ParamAxes(("P_conv2",)),
            "fc1.weight": ParamAxes(("P_fc1", "P_conv2", None), view=(hidden, c2, model.pooled_area)),
            "fc1.bias": ParamAxes(("P_fc1",)),
            "fc2.weight": ParamAxes((None, "P_fc1")),
            "fc2.bias": ParamAxes((None,)),
        }
    )


@register_model("seed_cnn")
class SeedCNN(nn.Module):
    """Conv(1->16)+ReLU, Conv(16->32)+ReLU, MaxPool 2, FC(32*14*14->128)+ReLU, FC(128->10): 809,034 parameters.

    ``width`` scales the channels and hidden units: ``16 w``, ``32 w`` and ``128 w``, rounded to integers >= 1
    (:func:`scaled`); width 1 is the paper's model, with the same initial weights for the same torch seed.

    Input: images ``[N, 1, 28, 28]``; output: logits ``[N, 10]``.

    ``forward`` pools conv2's output before its ReLU: ReLU is monotone, so ``relu(maxpool(z)) == maxpool(relu(z))``
    exactly, value for value, and so are the gradients, ties included (positive maxima pick the same first element
    either way; a window whose maximum is <= 0 passes no gradient either way).
    The ReLU then runs on a quarter of the elements, which trains SeedCNN ~1.25x faster on a CPU (measured).
    """

    side = 28  # input images are side x side

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, hidden = scaled(16, width), scaled(32, width), scaled(128, width)
        self.width = float(width)
        self.pooled_area = (self.side // 2) ** 2  # H * W of conv2's pooled map, which fc1 reads per channel
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(c2 * self.pooled_area, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        return _two_conv_forward(self, x)

    def permutation_spec(self) -> PermutationSpec:
        """The function-preserving permutations: conv1's and conv2's channels and fc1's units."""
        return _two_conv_spec(self)

    def rescaling_pairs(self) -> tuple[tuple[str, str], ...]:
        """The function-preserving rescalings: (layer scaled by a, next layer divided by a), per ReLU."""
        return TWO_CONV_RESCALING_PAIRS


@register_model("tiny_cnn")
class TinyCNN(nn.Module):
    """SeedCNN's layer types at a size whose dense Hessian fits in memory (2,570 parameters, 8x8 inputs).

    Conv(1->c)+ReLU, Conv(c->2c)+ReLU, MaxPool 2, FC(2c*(side/2)^2->hidden)+ReLU, FC(hidden->10), with
    ``c = scaled(channels, width)`` and ``hidden = scaled(hidden, width)``.
    """

    def __init__(self, channels: int = 4, hidden: int = 16, side: int = 8, *, width: float = 1.0) -> None:
        super().__init__()
        channels, hidden = scaled(channels, width), scaled(hidden, width)
        self.width = float(width)
        self.side = side
        self.pooled_area = (side // 2) ** 2
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(2 * channels * self.pooled_area, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        return _two_conv_forward(self, x)

    def permutation_spec(self) -> PermutationSpec:
        """The function-preserving permutations: conv1's and conv2's channels and fc1's units."""
        return _two_conv_spec(self)

    def rescaling_pairs(self) -> tuple[tuple[str, str], ...]:
        """The function-preserving rescalings: (layer scaled by a, next layer divided by a), per ReLU."""
        return TWO_CONV_RESCALING_PAIRS


def memory_format_for(device: torch.device | str) -> torch.memory_format:
    """The layout of convolution weights that runs fastest on ``device``.

    On a CPU, oneDNN runs SeedCNN's convolutions (forward, backward and HVPs) ~1.5x faster with ``channels_last``
    weights: activations then stay NHWC from conv1 to the pooling. CUDA keeps PyTorch's default (not measured here).
    """
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def build_model(name: str = "seed_cnn", device: torch.device | str = "cpu", *, width: float = 1.0) -> nn.Module:
    """Build the architecture registered as ``name`` (see :data:`MODELS`) at ``width`` on ``device``, in that
    device's fastest layout (:func:`memory_format_for`), initialised from torch's global RNG (the layout does not
    change the values)."""
    check(name in MODELS, "model", f"in {sorted(MODELS)}", name)
    return MODELS[name](width=width).to(device=device, memory_format=memory_format_for(device))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
