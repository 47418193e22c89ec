from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.training import TextbookSeedCNN
from landscape_core import models
from landscape_core.functional import flatten, param_dict, unflatten
from landscape_core.hessian import hvp
from landscape_core.models import MODELS, SeedCNN, TinyCNN, build_model, count_parameters, memory_format_for
from landscape_core.permutations import ParamAxes, PermutationSpec


def test_seed_cnn_has_the_papers_809034_parameters_and_layers():
    model = SeedCNN()
    assert count_parameters(model) == 809_034
    assert [tuple(p.shape) for p in model.parameters()] == [
        (16, 1, 3, 3),
        (16,),
        (32, 16, 3, 3),
        (32,),
        (128, 6272),
        (128,),
        (10, 128),
        (10,),
    ]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_tiny_cnn_has_the_same_layer_types():
    model = TinyCNN()
    assert count_parameters(model) == 2570
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^Expected `model` in \['seed_cnn', 'tiny_cnn'\], got 'resnet'$"):
        build_model("resnet")
    with pytest.raises(ValueError, match=r"^Expected `width` > 0, got 0.0$"):
        build_model("seed_cnn", width=0.0)


def _conv_chain_count(c1: int, c2: int, hidden: int, area: int) -> int:
    """Parameters of conv(1->c1, 3x3) + conv(c1->c2, 3x3) + fc(c2*area->hidden) + fc(hidden->10), biases included."""
    return (9 * c1 + c1) + (9 * c1 * c2 + c2) + (c2 * area * hidden + hidden) + (10 * hidden + 10)


def test_registry_builds_every_architecture_by_name_and_width():
    assert MODELS == {"seed_cnn": SeedCNN, "tiny_cnn": TinyCNN}
    assert count_parameters(build_model("seed_cnn")) == 809_034 == _conv_chain_count(16, 32, 128, 196)
    # width 2: channels 32 and 64, 256 hidden units: 320 + 18,496 + 3,211,520 + 2,570
    wide = build_model("seed_cnn", width=2.0)
    assert count_parameters(wide) == 3_232_906 == _conv_chain_count(32, 64, 256, 196)
    assert (wide.conv1.out_channels, wide.conv2.out_channels, wide.fc1.out_features) == (32, 64, 256)
    # width 0.5: 8 and 16 channels, 64 hidden units; tiny widths round to at least one unit
    assert count_parameters(build_model("seed_cnn", width=0.5)) == 202_666 == _conv_chain_count(8, 16, 64, 196)
    narrowest = SeedCNN(width=0.01)
    assert (narrowest.conv1.out_channels, narrowest.conv2.out_channels, narrowest.fc1.out_features) == (1, 1, 1)
    assert narrowest(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # TinyCNN's width scales its channels and hidden units too (conv2 has twice conv1's channels)
    tiny = build_model("tiny_cnn", width=2.0)
    assert count_parameters(tiny) == _conv_chain_count(8, 16, 32, 16) == 9_802  # 80 + 1,168 + 8,224 + 330
    assert tiny(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert TinyCNN(channels=2, hidden=5).fc1.out_features == 5


def test_width_one_is_the_papers_model_with_the_same_initial_weights():
    # The layers SeedCNN had before its width multiplier, created in the same order from the same seed.
    torch.manual_seed(7)
    layers = [
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.Linear(32 * 14 * 14, 128),
        nn.Linear(128, 10),
    ]
    reference = [p for layer in layers for p in layer.parameters()]
    torch.manual_seed(7)
    model = SeedCNN()
    assert len(list(model.parameters())) == len(reference)
    for a, b in zip(model.parameters(), reference, strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(7)
    assert all(torch.equal(a, b) for a, b in zip(SeedCNN(width=1.0).parameters(), reference, strict=True))


def test_register_model_adds_a_plugin_and_refuses_a_taken_name(monkeypatch):
    monkeypatch.setattr(models, "MODELS", dict(MODELS))

    @models.register_model("linear")
    class Linear(nn.Module):
        def __init__(self, width: float = 1.0) -> None:
            super().__init__()
            self.fc = nn.Linear(784, models.scaled(10, width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    assert models.MODELS["linear"] is Linear
    assert count_parameters(models.build_model("linear", width=2.0)) == 784 * 20 + 20
    with pytest.raises(ValueError, match="Expected a new model name, got 'seed_cnn', already SeedCNN"):
        models.register_model("seed_cnn")(Linear)


@pytest.mark.parametrize(
    ("cls", "width", "sizes", "area"),
    [
        (SeedCNN, 1.0, (16, 32, 128), 196),
        (SeedCNN, 0.5, (8, 16, 64), 196),
        (TinyCNN, 1.0, (4, 8, 16), 16),
        (TinyCNN, 2.0, (8, 16, 32), 16),
    ],
)
def test_each_architecture_declares_its_permutation_spec(cls, width, sizes, area):
    model = cls(width=width)
    spec = model.permutation_spec()
    assert isinstance(spec, PermutationSpec)
    assert spec.perm_names == ("P_conv1", "P_conv2", "P_fc1")  # the hidden layers in order
    params = dict(model.named_parameters())
    assert set(spec) == set(params)
    assert spec.sizes(params) == dict(zip(spec.perm_names, sizes, strict=True))
    # fc1 reads conv2's pooled map channel-major: viewed [hidden, C2, H*W], permuted on C2, from the model's own sizes
    assert spec.axes["fc1.weight"] == ParamAxes(("P_fc1", "P_conv2", None), view=(sizes[2], sizes[1], area))
    assert spec.perm_to_axes["P_conv2"] == (("conv2.weight", 0), ("conv2.bias", 0), ("fc1.weight", 1))
    assert spec.axes["fc2.bias"].perms == (None,)


def test_param_axes_and_spec_validate_themselves():
    with pytest.raises(ValueError, match="Expected `view` with 2 axes"):
        ParamAxes(("P", None), view=(3, 4, 5))
    with pytest.raises(ValueError, match="at most once per parameter"):
        ParamAxes(("P", "P"))
    spec = PermutationSpec({"w": ParamAxes(("P", None)), "v": ParamAxes(("Q", "P"))})
    assert spec.perm_names == ("P", "Q") and spec.perm_to_axes["P"] == (("w", 0), ("v", 1))
    with pytest.raises(ValueError, match="Expected permutation 'P' of one size, got 3 and 4"):
        spec.sizes({"w": torch.zeros(3, 2), "v": torch.zeros(5, 4)})
    with pytest.raises(ValueError, match=r"Expected the spec's parameters \['v'\] in the model"):
        spec.sizes({"w": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match=r"Expected parameter 'w' to fit its spec entry"):
        spec.sizes({"w": torch.zeros(3, 2, 1), "v": torch.zeros(5, 3)})


def test_pooling_before_relu_is_the_same_function_with_the_same_gradients():
    # relu(maxpool(z)) == maxpool(relu(z)); the gradients agree too, ties included (a window whose max is <= 0 gets
    # no gradient either way). Constant backgrounds make ties common, so the images get a constant band.
    torch.manual_seed(0)
    model = SeedCNN().double()
    x = torch.randn(16, 1, 28, 28, dtype=torch.float64)
    x[:, :, :6] = -0.8  # a constant band, as Fashion-MNIST's background: tied maxima in every window there
    y = torch.randint(0, 10, (16,))
    book = TextbookSeedCNN().double()  # the benchmarks' baseline: ReLU, then pooling
    book.load_state_dict(model.state_dict())
    ours, textbook = model(x), book(x)
    assert torch.equal(ours, textbook)
    grads_ours = torch.autograd.grad(torch.nn.functional.cross_entropy(ours, y), list(model.parameters()))
    grads_book = torch.autograd.grad(torch.nn.functional.cross_entropy(textbook, y), list(book.parameters()))
    for a, b in zip(grads_ours, grads_book, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_build_model_uses_channels_last_conv_weights_on_cpu_with_the_same_values():
    torch.manual_seed(3)
    fast = build_model("seed_cnn", "cpu")
    torch.manual_seed(3)
    plain = SeedCNN()
    assert memory_format_for("cpu") == torch.channels_last
    assert memory_format_for("cuda") == torch.contiguous_format
    for (name, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b), name
        if a.dim() == 4 and a.shape[1] > 1:  # a 1-channel conv's two layouts are the same strides
            assert a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous(), name
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-6)


def test_unflatten_and_hvps_keep_the_fast_layout_and_its_numbers():
    torch.manual_seed(4)
    fast = build_model("seed_cnn", "cpu").double()
    plain = SeedCNN().double()
    plain.load_state_dict(fast.state_dict())
    like = param_dict(fast)
    vector = flatten(like)
    back = unflatten(vector, like)
    assert torch.equal(flatten(back), vector)  # an exact round trip
    assert back["conv2.weight"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(vector, flatten(param_dict(plain)))  # flat vectors do not depend on the layout
    g = torch.Generator().manual_seed(5)
    data = (torch.randn(8, 1, 28, 28, generator=g, dtype=torch.float64), torch.randint(0, 10, (8,), generator=g))
    v = torch.randn(vector.numel(), generator=g, dtype=torch.float64)
    torch.testing.assert_close(hvp(fast, data, v), hvp(plain, data, v), rtol=1e-10, atol=1e-12)
