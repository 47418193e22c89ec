"""Bad input: one clear line, exit status 2, and nothing written to the store (the commands run in-process)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from landscape_core.models import SeedCNN
from sweeps import lr, seeds
from tests.sweeps.conftest import FAST
from tracking.checkpoints import CheckpointError, load_checkpoint


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` by content (sha256); empty when ``root`` does not exist."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def one_line_error(capsys) -> str:
    """The single line a refused command printed (rich may not wrap it, and nothing else may be printed)."""
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("main", "args", "expected"),
    [
        (seeds.main, ["--n", "0"], "`--n` >= 1, got 0"),
        (seeds.main, ["--n=-3"], "`--n` >= 1, got -3"),
        (lr.main, ["--n", "0"], "`--n` >= 1, got 0"),
        (lr.main, ["--seeds-per-lr", "0"], "`--seeds-per-lr` >= 1"),
        (lr.main, ["--lr-min", "0.1", "--lr-max", "0.01"], "0 < `--lr-min` < `--lr-max`, got 0.1 and 0.01"),
        (lr.main, ["--lr-min", "0", "--lr-max", "0.1"], "0 < `--lr-min` < `--lr-max`, got 0.0 and 0.1"),
        (lr.main, ["--lr-min=-0.1", "--lr-max", "0.1"], "0 < `--lr-min` < `--lr-max`, got -0.1"),
        (seeds.main, ["--preset", "huge"], "Expected `preset` in ['paper', 'quick', 'smoke'], got 'huge'"),
        (seeds.main, ["--epochs", "0"], "`epochs` >= 1, got 0"),
        (seeds.main, ["--skip", "hessian,typo"], "typo"),
        (seeds.main, ["--workers", "0"], "`--workers` >= 1, got 0"),
        (seeds.main, ["--heartbeat", "0"], "`--heartbeat` >= 1, got 0"),
    ],
)
def test_invalid_options_are_refused_before_anything_is_written(main, args, expected, tmp_path, capsys):
    root = tmp_path / "mlruns"
    assert main([*FAST, *args, "--root", str(root)]) == 2
    assert expected in one_line_error(capsys)
    assert not root.exists()


def test_a_store_directory_that_cannot_be_created_is_refused(tmp_path, capsys):
    # Tests run as root, who ignores file modes: a path under a regular file cannot be created by anyone.
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    assert seeds.main(["--n", "1", *FAST, "--root", str(blocker / "mlruns")]) == 2
    line = one_line_error(capsys)
    assert "cannot create the store directory" in line and "afile is not a directory" in line
    assert blocker.read_text() == "not a directory" and sorted(tmp_path.iterdir()) == [blocker]


def test_an_unreachable_storage_is_refused_without_showing_its_password(tmp_path, capsys):
    root = tmp_path / "mlruns"
    storage = "postgresql://postgres:hunter2@127.0.0.1:1/x"
    assert seeds.main(["--n", "1", *FAST, "--storage", storage, "--root", str(root)]) == 2
    line = one_line_error(capsys)
    assert "cannot open the Optuna storage postgresql://postgres:***@127.0.0.1:1/x" in line
    assert "hunter2" not in line
    assert not root.exists()


def test_an_unwritable_journal_is_refused(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    root = tmp_path / "mlruns"
    storage = str(blocker / "optuna.journal")
    assert seeds.main(["--n", "1", *FAST, "--storage", storage, "--root", str(root)]) == 2
    assert "cannot write the Optuna journal" in one_line_error(capsys)
    assert not root.exists()


def test_an_unreachable_tracking_server_is_refused(tmp_path, capsys):
    root = tmp_path / "mlruns"
    assert seeds.main(["--n", "1", *FAST, "--tracking-uri", "http://127.0.0.1:1", "--root", str(root)]) == 2
    assert "the MLflow server http://127.0.0.1:1 is not reachable" in one_line_error(capsys)
    assert not root.exists()


def test_a_missing_dataset_names_the_ways_to_get_it(tmp_path, capsys):
    root, empty = tmp_path / "mlruns", tmp_path / "empty"
    empty.mkdir()
    assert seeds.main(["--n", "1", *FAST, "--data-dir", str(empty), "--root", str(root)]) == 2
    line = one_line_error(capsys)
    assert "Fashion-MNIST not found" in line and str(empty) in line
    assert "--data-dir" in line and "apt-get install dataset-fashion-mnist" in line and "--download" in line
    assert not root.exists()


def test_an_existing_study_with_another_config_is_refused_and_left_as_it_was(tmp_path, capsys):
    root = tmp_path / "mlruns"
    args = ["--n", "1", *FAST, "--root", str(root)]
    assert seeds.main(args) == 0
    capsys.readouterr()
    before = snapshot(root)
    assert {"optuna.journal", "mlflow.db"} <= set(before)

    assert seeds.main([*args, "--epochs", "2"]) == 2
    line = one_line_error(capsys)
    assert "study 'seeds-smoke' exists with a different config (train.epochs differ)" in line
    assert "--study-name NEW" in line
    assert snapshot(root) == before

    assert seeds.main([*args, "--epochs", "2", "--study-name", "seeds-2-epochs"]) == 0  # as the message says


class _Payload:
    """A pickle that would create a file when unpickled: code a checkpoint must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _saved(tmp_path: Path, name: str, state) -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_a_corrupted_checkpoint_is_one_clear_error(tmp_path):
    good = _saved(tmp_path, "good.pt", SeedCNN().state_dict())
    assert not load_checkpoint(str(good)).training  # the reference: a real checkpoint loads, in eval mode

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint \xff" * 10)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    wrong_model = _saved(tmp_path, "wrong.pt", {"fc.weight": torch.zeros(2, 2)})
    marker = tmp_path / "code-ran"
    malicious = tmp_path / "malicious.pt"
    malicious.write_bytes(pickle.dumps({"conv1.weight": _Payload(marker)}, protocol=2))
    not_weights_only = "not a weights-only checkpoint"
    cases = {
        garbage: not_weights_only,
        truncated: "corrupted (RuntimeError: PytorchStreamReader failed",
        wrong_model: "does not fit seed_cnn (RuntimeError: Error(s) in loading state_dict for SeedCNN: Missing key(s)",
        malicious: not_weights_only,
        tmp_path / "missing.pt": "no such file",
    }
    for path, reason in cases.items():
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(str(path))
        message = str(caught.value)
        assert message.startswith(f"cannot load checkpoint {path}: {reason}"), message
        assert "\n" not in message and "weights_only" not in message.replace("weights-only", ""), message
    assert not marker.exists(), "weights_only=True must refuse to run code from a checkpoint"


def test_skip_adds_to_the_presets_own_skips():
    from sweeps.cli import preset_from_args
    from sweeps.seeds import parser

    quick = preset_from_args(parser().parse_args(["--preset", "quick", "--skip", "slices"]))
    assert quick.analysis.skip == {"density", "slices"}
    smoke = preset_from_args(parser().parse_args(["--preset", "smoke"]))
    assert smoke.analysis.skip == frozenset()
