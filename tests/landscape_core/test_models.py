from __future__ import annotations

import pytest
import torch

from landscape_core.models import SeedCNN, TinyCNN, build_model, count_parameters


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
