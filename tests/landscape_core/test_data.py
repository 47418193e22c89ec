from __future__ import annotations

import gzip

import pytest
import torch

from landscape_core.data import DataMissingError, find_data_dir, load_fashion_mnist, read_idx, subset


def test_real_idx_files_parse_to_the_right_shapes_and_first_labels(fashion):
    assert fashion.train_x.shape == (60000, 1, 28, 28) and fashion.train_x.dtype == torch.float32
    assert fashion.test_x.shape == (10000, 1, 28, 28)
    assert fashion.train_y.tolist()[:10] == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert fashion.test_y.tolist()[:10] == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(fashion.train_y).tolist() == [6000] * 10


def test_normalization_gives_zero_mean_unit_std(fashion):
    assert abs(float(fashion.train_x.mean())) < 1e-3
    assert abs(float(fashion.train_x.std()) - 1.0) < 1e-3


def test_loaded_once_per_process(fashion):
    assert load_fashion_mnist() is fashion


def test_subsets_are_deterministic_by_seed(fashion):
    a = subset(fashion.train_x, fashion.train_y, 100, seed=3)
    b = subset(fashion.train_x, fashion.train_y, 100, seed=3)
    c = subset(fashion.train_x, fashion.train_y, 100, seed=4)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[0], c[0])
    assert subset(fashion.train_x, fashion.train_y, None, seed=0)[0] is fashion.train_x


def test_missing_data_names_the_three_ways_to_get_it(tmp_path):
    with pytest.raises(DataMissingError) as info:
        find_data_dir(tmp_path)
    message = str(info.value)
    assert "--data-dir" in message and "apt-get install dataset-fashion-mnist" in message and "--download" in message


def test_corrupted_idx_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x10abc"))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(bad)
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "junk")
