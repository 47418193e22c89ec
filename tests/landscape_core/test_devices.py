"""landscape_core.devices: the threads an HVP runs on, by the machine's load (issue 24)."""

from __future__ import annotations

import pytest
import torch

from landscape_core.devices import cpu_threads_for_load, threads_for_load


@pytest.mark.parametrize(
    ("requested", "load", "cores", "threads"),
    [
        (2, 0.3, 2, 2),  # idle: as asked
        (2, 2.1, 2, 2),  # this process's own two threads make the load
        (2, 3.0, 2, 1),  # one other busy program on 2 cores: one thread each
        (2, 6.0, 2, 1),  # beside 4 busy processes (the benchmark's busy machine): never below 1
        (8, 10.0, 8, 6),  # two cores taken on an 8-core node: 6 of 8
        (1, 0.0, 16, 1),  # never more than asked
    ],
)
def test_threads_are_the_cores_other_programs_leave_free(requested, load, cores, threads) -> None:
    assert cpu_threads_for_load(requested, load=load, cores=cores) == threads


def test_the_block_runs_on_the_adapted_threads_and_torchs_setting_comes_back() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        want = cpu_threads_for_load(2)  # this machine's load now
        with threads_for_load("cpu"):
            inside = torch.get_num_threads()
        assert inside in (want, cpu_threads_for_load(2))  # the load may move between two reads
        assert torch.get_num_threads() == 2
        with threads_for_load("meta"):  # not a CPU: nothing changes
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
