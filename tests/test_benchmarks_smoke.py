"""The benchmark harness computes the right things (no speed is asserted anywhere): FLOP counts, the PyHessian-style
baseline's eigenvalue, the tutorial dataset's images, peak-memory capture, and the CLI's table and JSON."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import run as bench_run
from benchmarks.common import Context, Result, busy_machine, run_process
from benchmarks.curvature import power_iteration_double_backward
from benchmarks.training import seed_cnn_forward_flops, tutorial_dataset
from landscape_core.config import TrainConfig
from landscape_core.hessian import hvp
from landscape_core.models import SeedCNN, TinyCNN
from landscape_core.splits import TrialData


def test_analytic_flops_match_torch_flop_counter() -> None:
    model = SeedCNN()
    x = torch.randn(2, 1, 28, 28)
    with FlopCounterMode(display=False) as forward:
        model(x)
    assert forward.get_total_flops() / 2 == seed_cnn_forward_flops(model) == 9_059_328
    with FlopCounterMode(display=False) as step:
        torch.nn.functional.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    # training = 3 x forward, less conv1's input gradient, which is never computed (the images need none)
    assert step.get_total_flops() / 2 == pytest.approx(3 * seed_cnn_forward_flops(model), rel=0.03)


def test_power_iteration_baseline_hvps_and_stopping_rule() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyCNN().double()
    g = torch.Generator().manual_seed(1)
    data = torch.randn(64, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (64,), generator=g)
    # the baseline's first estimate is v^T H v for its Gaussian start (drawn per parameter, normalized by norm + 1e-6)
    start = torch.Generator().manual_seed(0)
    v = torch.cat([torch.randn(p.shape, generator=start).reshape(-1) for p in model.parameters()]).double()
    v = v / (v.norm() + 1e-6)
    expected = float(v @ hvp(model, data, v, chunk_size=64))
    for chunk_size, retain_graph in [(20, False), (64, True)]:
        first = power_iteration_double_backward(
            model, data, chunk_size=chunk_size, max_iter=1, retain_graph=retain_graph
        )
        assert first.n_hvp == 1 and first.history[0] == pytest.approx(expected, rel=1e-10)
    # PyHessian's rule: stop at the first relative change below tol and return the previous estimate
    result = power_iteration_double_backward(model, data, chunk_size=64, tol=1e-3, max_iter=500)
    h = result.history
    assert result.n_hvp == len(h) >= 2 and result.eigenvalue == h[-2]
    assert abs(h[-1] - h[-2]) / (abs(h[-2]) + 1e-6) < 1e-3
    assert all(abs(b - a) / (abs(a) + 1e-6) >= 1e-3 for a, b in zip(h[:-2], h[1:-1]))


def test_tutorial_dataset_holds_our_images(fashion, tmp_path) -> None:
    config = TrainConfig(train_size=300, test_size=10, data_seed=3, device="cpu")
    dataset = tutorial_dataset(Context(quick=True, device=torch.device("cpu"), workdir=tmp_path), config)
    x, y = TrialData.build(fashion, config).train
    assert len(dataset) == 300
    for i in (0, 150, 299):
        image, label = dataset[i]
        assert image.shape == (1, 28, 28) and label == int(y[i])
        torch.testing.assert_close(image, x[i], atol=1e-5, rtol=0)


def test_run_process_reports_exit_status_and_peak_memory(tmp_path) -> None:
    code = "import sys; block = bytearray(200 * 1024 * 1024); block[::4096] = b'x' * len(block[::4096]); sys.exit(3)"
    result = run_process([sys.executable, "-c", code], log_path=tmp_path / "log", timeout=60)
    assert result.returncode == 3
    assert 200 <= result.max_rss_mb < 400
    # the figure is the child's own: not inherited from this (large, torch-importing) process
    hog = bytearray(500 * 1024 * 1024)
    hog[::4096] = b"x" * len(hog[::4096])
    small = run_process([sys.executable, "-c", "pass"], log_path=tmp_path / "log2", timeout=60)
    assert small.returncode == 0 and small.max_rss_mb < 100
    del hog


def test_run_process_kills_on_timeout(tmp_path) -> None:
    result = run_process([sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "log", timeout=1)
    assert result.returncode != 0 and result.seconds < 30


def test_cli_runs_selected_benchmarks_and_writes_json(monkeypatch, tmp_path, capsys) -> None:
    def fake(ctx: Context) -> list[Result]:
        assert ctx.quick and ctx.device.type == "cpu"
        return [Result("fake", 2.0, 1.0, 2.0, "img/s", "ours", "theirs", ">= 1", True, timings={"seconds": [1.0]})]

    def broken(ctx: Context) -> list[Result]:
        raise RuntimeError("boom")

    monkeypatch.setattr(bench_run, "BENCHMARKS", {"fake": fake, "broken": broken, "unused": broken})
    out = tmp_path / "bench.json"
    status = bench_run.main(["--quick", "--device", "cpu", "--only", "fake,broken", "--json", str(out)])
    assert status == 1  # a failing benchmark is reported, the others still run
    payload = json.loads(out.read_text())
    assert payload["ratios"] == {"fake": 2.0}
    assert payload["timings"] == {"fake": {"seconds": [1.0]}}
    assert payload["errors"] == {"broken": "RuntimeError: boom"}
    assert {"torch", "cpu_count", "torch_threads", "device", "mode"} <= set(payload["machine"])
    assert "fake" in capsys.readouterr().out


def test_cli_rejects_unknown_benchmarks(tmp_path) -> None:
    out = tmp_path / "bench.json"
    assert bench_run.main(["--only", "nope", "--json", str(out)]) == 2
    assert not out.exists()


def test_a_busy_machine_runs_its_processes_during_the_block_and_ends_them() -> None:
    with busy_machine(2) as others:
        assert len(others) == 2 and all(other.poll() is None for other in others)
    assert all(other.poll() is not None for other in others)
    with busy_machine(0) as none:
        assert none == []
