"""Bad input: one clear line, exit status 2, and nothing written (the commands run in-process).

One table holds a bad value for every option of every command line of the project (a test checks that it does, from
the parsers themselves); each must exit 2, print one line and no traceback, and leave no file behind."""

from __future__ import annotations

import contextlib
import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from benchmarks import run as benchmarks_run
from landscape_core import data
from landscape_core.models import SeedCNN
from sweeps import lr, seeds
from tests.sweeps.conftest import FAST
from tracking import correlate
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


#: A file that is not a directory: a path under it can be neither created nor written, even by root.
BLOCKER = "afile"
#: The refused-at-once PostgreSQL URL of a port nothing listens on (with a password that must never be printed).
DEAD_PG = "postgresql://postgres:hunter2@127.0.0.1:1/x"

#: Every option of the sweep commands (both have them), each with a bad value and what its one line must say.
SWEEP_OPTIONS = [
    (["--preset", "huge"], "Expected `preset` in ['paper', 'quick', 'smoke'], got 'huge'"),
    (["--epochs", "0"], "`epochs` >= 1, got 0"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["--stop-at-train-loss", "0"], "`stop_at_train_loss` > 0 and finite, got 0.0"),
    (["--stop-at-train-loss", "nan"], "`stop_at_train_loss` > 0 and finite, got nan"),
    (["--lr", "nan"], "`lr` > 0 and finite, got nan"),
    (["--lr", "inf"], "`lr` > 0 and finite, got inf"),
    (["--lr=-0.1"], "`lr` > 0 and finite, got -0.1"),
    (["--momentum", "1"], "`momentum` in [0, 1), got 1.0"),
    (["--momentum", "nan"], "`momentum` in [0, 1), got nan"),
    (["--batch-size", "0"], "`batch_size` >= 1, got 0"),
    (["--train-size", "0"], "`train_size` >= 1, got 0"),
    (["--train-size", "60001"], "`--train-size` <= 60,000 (the training images there are), got 60,001"),
    (["--test-size", "10001"], "`--test-size` <= 10,000 (the test images there are), got 10,001"),
    (["--data-seed=-1"], "`data_seed` >= 0, got -1"),
    (["--init-seed=-1"], "`init_seed` >= 0 (or None: `seed`), got -1"),
    (["--order-seed", "x"], "argument --order-seed: invalid int value: 'x'"),
    (["--device", "gpu"], "Expected `--device` one of auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    (["--device", "cuda:99"], "device 'cuda:99' is not available"),
    (["--width", "0"], "`--width` values > 0 and distinct, got '0'"),
    (["--width", "1,nan"], "`--width` values > 0 and distinct, got '1,nan'"),
    (["--data-dir", "{empty}"], "Fashion-MNIST not found"),
    (["--skip", "hessian,typo"], "typo"),
    (["--study-name", ""], "`--study-name` a non-empty name without surrounding spaces, got ''"),
    (["--experiment", " seeds"], "`--experiment` a non-empty name without surrounding spaces, got ' seeds'"),
    (["--root", "{blocked}/mlruns"], "afile is not a directory"),
    (["--tracking-uri", "htp://127.0.0.1:5000"], "Expected `--tracking-uri` a URI of scheme"),
    (["--tracking-uri", "sqlite://mlflow.db"], "Expected `--tracking-uri` sqlite:///PATH (three slashes)"),
    (["--tracking-uri", "http://127.0.0.1:1"], "the MLflow server http://127.0.0.1:1 is not reachable"),
    (["--tracking-uri", DEAD_PG], "the MLflow store postgresql://postgres:***@127.0.0.1:1/x is not reachable"),
    (["--storage", "postgres://db-host/optuna"], "postgres:// is spelled postgresql://"),
    (["--storage", "study.db"], "Expected `--storage` a path ending in .journal or a database URL"),
    (["--storage", DEAD_PG], "cannot open the Optuna storage postgresql://postgres:***@127.0.0.1:1/x"),
    (["--storage", "{blocked}/optuna.journal"], "cannot write the Optuna journal"),
    (["--max-pairs=-1"], "`--max-pairs` >= 0, got -1"),
    (["--batch-trials", "0"], "`--batch-trials` >= 1, got 0"),
    (["--optimizer", "rmsprop"], "`optimizer` in ('sgd', 'gd', 'adam', 'sam'), got 'rmsprop'"),
    (["--sam-rho", "0"], "`sam_rho` > 0 and finite, got 0.0"),
    (["--track-every", "0"], "`track_every` >= 1, got 0"),
    (["--optimizer", "gd", "--batch-trials", "2"], "`--optimizer` sgd with --batch-trials > 1"),
    (["--track-every", "5", "--batch-trials", "2"], "`--track-every` not given with --batch-trials > 1"),
    (["--workers", "0"], "`--workers` >= 1, got 0"),
    (["--heartbeat", "0"], "`--heartbeat` >= 1, got 0"),
    (["--n", "0"], "`--n` >= 1, got 0"),
    (["--seed-start=-1"], "`--seed-start` >= 0, got -1"),
    (["--retest-trials=-1"], "`retest_trials` >= 0, got -1"),
    (["--curve-trials", "0"], "`trials` >= 1 or None, got 0"),
    (["--curve-trials", "some"], "`--curve-trials` as a whole number or 'all', got 'some'"),
    (["--primary", "nope"], "unknown measure 'nope' in --primary"),
    (["--primary", "lambda_max:accuracy"], "unknown target 'accuracy'"),
    (["--until-decided=yes"], "argument --until-decided: ignored explicit argument 'yes'"),
    (["--max-n", "30"], "`--max-n` given only with --until-decided, got 30"),
    (["--first-look", "30"], "`--first-look` given only with --until-decided, got 30"),
    (["--look-step", "5"], "`--look-step` given only with --until-decided, got 5"),
    (["--planned-rho", "0.5"], "`--planned-rho` given only with --until-decided, got 0.5"),
]
#: The design of --until-decided, which only a seeds sweep has (an lr sweep refuses --until-decided itself).
SEEDS_OPTIONS = [
    (["--until-decided", "--first-look", "5"], "Expected `--first-look` >= 8 runs, got 5"),
    (["--until-decided", "--look-step", "0"], "Expected `--look-step` >= 1, got 0"),
    (["--until-decided", "--max-n", "10"], "Expected `--max-n` >= the first look (20), got 10"),
    (["--until-decided", "--planned-rho", "1.5"], "Expected `--planned-rho` in (0, 1), got 1.5"),
    (["--until-decided", "--skip", "sharpness"], "to keep 'sharpness', which primary measure sharpness/adaptive_linf"),
    (["--until-decided", "--n", "30"], "`--n` not given with --until-decided (its cap is --max-n), got 30"),
    (["--until-decided", "--width", "1,2"], "`--width` one value with --until-decided"),
]
LR_OPTIONS = [
    (["--lr-min", "0.1", "--lr-max", "0.01"], "0 < `--lr-min` < `--lr-max`, both finite, got 0.1 and 0.01"),
    (["--lr-min", "0", "--lr-max", "0.1"], "0 < `--lr-min` < `--lr-max`, both finite, got 0.0 and 0.1"),
    (["--lr-min", "nan"], "0 < `--lr-min` < `--lr-max`, both finite, got nan and 0.3"),
    (["--lr-max", "inf"], "0 < `--lr-min` < `--lr-max`, both finite, got 0.001 and inf"),
    (["--seeds-per-lr", "0"], "`--seeds-per-lr` >= 1, got 0"),
    (["--sampler", "random"], "argument --sampler: invalid choice: 'random'"),
    (["--sampler-seed=-1"], "`--sampler-seed` >= 0, got -1"),
    (["--until-decided"], "--until-decided grows a seeds sweep"),
]
CORRELATE_OPTIONS = [
    (["--experiment", ""], "`--experiment` a non-empty name, got ''"),
    (["--study", "no-such-study"], "no finished trial runs"),
    (["--parent-run", "0123456789abcdef0123456789abcdef"], "0123456789abcdef0123456789abcdef"),
    (["--measures", "no_such_measure"], "unknown measure 'no_such_measure'"),
    (["--targets", "typo"], "typo"),
    (["--json", "{blocked}/report.json"], "cannot write `--json`"),
    (["--json", "{empty}"], "Expected `--json` a file path"),
    (["--tracking-uri", "htp://127.0.0.1:5000"], "Expected `--tracking-uri` a URI of scheme"),
    (["--root", "{empty}/mlruns"], "no store at"),
    (["--n-boot", "0"], "`--n-boot` >= 1, got 0"),
    (["--n-perm", "0"], "`--n-perm` >= 1, got 0"),
    (["--alpha", "nan"], "`--alpha` in (0, 1), got nan"),
    (["--seed=-1"], "`--seed` >= 0, got -1"),
    (["--log-to-parent=yes"], "argument --log-to-parent: ignored explicit argument 'yes'"),
    (["--exclude-flagged=yes"], "argument --exclude-flagged: ignored explicit argument 'yes'"),
    (["--full=yes"], "argument --full: ignored explicit argument 'yes'"),
]
DATA_OPTIONS = [(["--download=yes"], "argument --download: ignored explicit argument 'yes'")]
BENCHMARK_OPTIONS = [
    (["--quick=yes"], "argument --quick: ignored explicit argument 'yes'"),
    (["--json", "{blocked}/bench.json"], "cannot write `--json`"),
    (["--only", "nonsense"], "unknown benchmark(s) ['nonsense']"),
    (["--device", "gpu"], "Expected `--device` one of auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    (["--device", "cuda:99"], "device 'cuda:99' is not available"),
    (["--data-dir", "{empty}"], "Fashion-MNIST not found"),
    (["--busy", "-1"], "Expected `--busy` >= 0, got -1"),
]
#: The one table: (command, its parser, its main, the bad options) for every command line of the project.
COMMANDS = {
    "sweeps.seeds": (seeds.parser, seeds.main, SWEEP_OPTIONS + SEEDS_OPTIONS),
    "sweeps.lr": (lr.parser, lr.main, SWEEP_OPTIONS + LR_OPTIONS),
    "tracking.correlate": (correlate.parser, correlate.main, CORRELATE_OPTIONS),
    "landscape_core.data": (data.parser, data.main, DATA_OPTIONS),
    "benchmarks.run": (benchmarks_run.parser, benchmarks_run.main, BENCHMARK_OPTIONS),
}
CASES = [(command, args, expected) for command, (_, _, rows) in COMMANDS.items() for args, expected in rows]


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory) -> Path:
    """A store with one finished trial, for the correlation report's options that need runs to check against."""
    root = tmp_path_factory.mktemp("finished") / "mlruns"
    with contextlib.chdir(root.parent):  # whatever the sweep writes lands next to its store
        assert seeds.main(["--n", "1", *FAST, "--root", str(root)]) == 0
    return root


def test_the_table_has_a_bad_value_for_every_option_of_every_command():
    for command, (parser, _, rows) in COMMANDS.items():
        options = {a.option_strings[-1] for a in parser()._actions if a.option_strings and a.dest != "help"}
        covered = {arg.partition("=")[0] for args, _ in rows for arg in args if arg.startswith("--")}
        assert options <= covered, f"{command}: no bad value for {sorted(options - covered)}"


@pytest.mark.parametrize(("command", "args", "expected"), CASES, ids=[f"{c} {' '.join(a)}" for c, a, _ in CASES])
def test_a_bad_value_of_any_option_exits_2_with_one_line_and_writes_nothing(
    command, args, expected, tmp_path, monkeypatch, capsys, request
):
    _, main, _ = COMMANDS[command]
    work = tmp_path / "cwd"
    (work / "empty").mkdir(parents=True)
    (work / BLOCKER).write_text("not a directory")
    monkeypatch.chdir(work)  # relative defaults (./mlruns, ./data) would land here
    planted = snapshot(work)
    args = [a.format(empty=work / "empty", blocked=work / BLOCKER) for a in args]
    if command.startswith("sweeps."):
        extra = ["--n", "1", *FAST] if command == "sweeps.seeds" else ["--n", "1", "--seeds-per-lr", "1", *FAST]
        if command == "sweeps.seeds" and "--until-decided" in args:
            extra = extra[2:]  # its cap is --max-n: --n is refused with it
        argv = [*extra, "--root", str(work / "mlruns"), *args]
    elif command == "tracking.correlate":
        store = request.getfixturevalue("finished_store")
        capsys.readouterr()  # what the fixture's sweep printed
        before = snapshot(store)
        argv = ["--root", str(store), *args]
    else:
        argv = args

    assert main(argv) == 2
    line = one_line_error(capsys)
    assert expected in line, line
    assert "hunter2" not in line
    assert snapshot(work) == planted, "a refused command must leave no file behind"
    if command == "tracking.correlate":
        assert snapshot(store) == before


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
