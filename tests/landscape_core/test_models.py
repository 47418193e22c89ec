from __future__ import annotations

import pytest
import torch

from benchmarks.training import TextbookSeedCNN
from landscape_core.functional import flatten, param_dict, unflatten
from landscape_core.hessian import hvp
from landscape_core.models import SeedCNN, TinyCNN, build_model, count_parameters, memory_format_for


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
    with pytest.raises(ValueError, match="Expected `model`"):
        build_model("resnet")


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
