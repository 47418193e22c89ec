"""``python -m sweeps.slurm --tasks 8 --storage postgresql://... --tracking-uri http://... -- --n 200 --preset quick``:
workers of one sweep as a SLURM array job.

It writes (and with ``--submit`` submits, via ``sbatch``) an array-job script whose K tasks each run the same sweep
command (``python -m sweeps.seeds`` or ``sweeps.lr``) on one study in an RDB storage, logging to one MLflow tracking
server, with heartbeats. Every option this command does not know is the sweep's, checked here by the sweep's own
parser before anything is written: a script that would fail in every task is refused now, on the login node.

Signals. ``scancel`` (and a time limit) sends SIGCONT and SIGTERM to the job's processes, then SIGKILL after the
cluster's ``KillWait`` (30 s by default). The script ``exec``s the sweep, so the worker is the batch step itself and
gets the SIGTERM: the running trial's run is marked KILLED, the trial failed, its point put back for the other tasks,
and the worker exits 143. A task that dies without SIGTERM (SIGKILL, a lost node) stops beating; after twice the
heartbeat interval another task fails its trial, marks its run KILLED and retries the point.

Only RDB storages (PostgreSQL, MySQL) are accepted: array tasks may run on several machines, which a Journal file
or an SQLite file does not survive, and Optuna's gRPC storage proxy drops heartbeats.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

from landscape_core.cli import ArgumentParser, require, run_command
from landscape_core.errors import UsageError
from sweeps import lr, seeds
from tracking.store import redact

__all__ = ["SWEEPS", "TEMPLATE", "check_storage", "check_tracking", "main", "parser", "render"]

#: The sweeps an array job can run: name -> its module (``python -m sweeps.<name>``).
SWEEPS = {"seeds": seeds, "lr": lr}
#: Options of the sweep command that this command sets for every task (given here, never among the sweep's).
SHARED = ("--storage", "--tracking-uri", "--heartbeat")
#: SQLAlchemy URL schemes of the RDB storages Optuna supports across machines (``postgresql+psycopg2://`` too).
RDB_SCHEMES = ("postgresql", "mysql")

#: The array-job script. ``@NAME@`` fields are filled by ``render``; everything else is bash, as written.
TEMPLATE = """\
#!/bin/bash
# A SLURM array job written by `python -m sweeps.slurm`: @TASKS@ workers of one sweep. Submit it with `sbatch @SCRIPT@`.
# Every task runs the same command on the same study (@STORAGE@) and MLflow server (@TRACKING@);
# each point runs once however many tasks there are. Resubmitting the script (or any task) resumes the sweep.
#SBATCH --job-name=@JOB_NAME@
#SBATCH --array=0-@LAST_TASK@
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=@CPUS@
#SBATCH --output=@LOG_DIR@/%x-%A_%a.out
#SBATCH --chdir=@CHDIR@
@EXTRA@
set -euo pipefail
# One thread per CPU of the task (torch reads these at start). The log is a file, not the submitting terminal: its
# width is the sweep's own for files (160 columns), not a COLUMNS that sbatch passed on.
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-@CPUS@}" MKL_NUM_THREADS="${SLURM_CPUS_PER_TASK:-@CPUS@}"
unset COLUMNS LINES
echo "array task ${SLURM_ARRAY_TASK_ID:-?} (job ${SLURM_JOB_ID:-?}) on $(hostname)"
# exec: the worker is the batch step itself, so scancel's SIGTERM reaches it (run KILLED, point put back, exit 143).
exec @COMMAND@
"""


class _Parser(ArgumentParser):
    """Parses this command's options and keeps every other token, the sweep's, in ``sweep_args``."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        known, rest = self.parse_known_args(args, namespace)
        known.sweep_args = rest[1:] if rest[:1] == ["--"] else rest
        return known


def parser() -> ArgumentParser:
    p = _Parser(
        prog="python -m sweeps.slurm",
        description="Write (and with --submit, submit) a SLURM array job whose tasks are workers of one sweep. "
        "Every other option is the sweep's (python -m sweeps.seeds --help, python -m sweeps.lr --help).",
        allow_abbrev=False,  # a sweep option is never taken for an abbreviation of one of these
    )
    job = p.add_argument_group("the array job")
    job.add_argument("--sweep", choices=sorted(SWEEPS), default="seeds", help="the sweep every task runs (seeds)")
    job.add_argument("--tasks", type=int, default=2, help="array tasks, i.e. workers (default 2)")
    job.add_argument("--cpus-per-task", type=int, default=1, help="CPUs (and torch threads) of each task (default 1)")
    job.add_argument("--time", help="sbatch --time of each task, e.g. 4:00:00 (default: the partition's)")
    job.add_argument("--partition", help="sbatch --partition")
    job.add_argument("--account", help="sbatch --account")
    job.add_argument("--mem", help="sbatch --mem of each task, e.g. 4G")
    job.add_argument("--gres", help="sbatch --gres of each task, e.g. gpu:1")
    job.add_argument(
        "--sbatch", action="append", default=[], metavar="OPTION", help="another sbatch option: --sbatch=--qos=long"
    )
    job.add_argument("--job-name", help="sbatch --job-name (default: landscape-<sweep>)")
    job.add_argument("--log-dir", default="slurm-logs", help="where the task logs go, relative to --chdir")
    job.add_argument("--chdir", help="working directory of the tasks (default: the current one)")
    job.add_argument("--python", default=sys.executable, help=f"the tasks' Python (default {sys.executable})")
    job.add_argument("--script", default="slurm-sweep.sbatch", help="the script to write (slurm-sweep.sbatch)")
    job.add_argument("--submit", action="store_true", help="submit it with sbatch once written")
    shared = p.add_argument_group("what every task shares")
    shared.add_argument("--storage", help="RDB storage URL of the study: postgresql://user@host/db (required)")
    shared.add_argument("--tracking-uri", help="the MLflow tracking server: http://host:5000 (required)")
    shared.add_argument("--heartbeat", type=int, default=60, help="heartbeat seconds of each task (default 60)")
    return p


def check_storage(url: str | None) -> None:
    """``--storage``: a PostgreSQL or MySQL URL, without a password (the script is a plain file)."""
    if not url:
        raise UsageError("Expected `--storage` with the RDB URL of the study (postgresql://user@host/db), got none")
    parts = urlsplit(url)
    if parts.scheme.split("+")[0] not in RDB_SCHEMES:
        raise UsageError(
            f"Expected `--storage` as a PostgreSQL or MySQL URL (postgresql://user@host/db), got {redact(url)!r}: "
            "array tasks may run on several machines, which a Journal or SQLite file does not survive"
        )
    if parts.password is not None:
        raise UsageError(
            "Expected `--storage` without a password, which the script would hold in plain text: put it in "
            "PGPASSWORD or ~/.pgpass (the tasks inherit sbatch's environment)"
        )


def check_tracking(uri: str | None) -> None:
    """``--tracking-uri``: the http(s) URL of an MLflow tracking server, without a password."""
    if not uri:
        raise UsageError("Expected `--tracking-uri` with the MLflow server's URL (http://host:5000), got none")
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"Expected `--tracking-uri` as an MLflow server URL (http://host:5000), got {redact(uri)!r}: "
            "every task logs to one server, not to a store of its own"
        )
    if parts.password is not None:
        raise UsageError(
            "Expected `--tracking-uri` without a password, which the script would hold in plain text: put the "
            "credentials in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the tasks inherit sbatch's "
            "environment)"
        )


def check_directive(option: str, value: str | None) -> None:
    """An ``#SBATCH`` value: one word (sbatch reads a directive up to its first blank)."""
    if value is not None and (not value or any(c.isspace() for c in value)):
        raise UsageError(f"Expected `{option}` as one word, without blanks, got {value!r}")


def sweep_argv(args: argparse.Namespace) -> list[str]:
    """The arguments of every task's sweep command: the sweep's own, then the shared ones; checked by the sweep's
    parser and options, as each task would check them (``UsageError``: one line, exit 2)."""
    rest = list(args.sweep_args)
    for option in SHARED:
        if any(token == option or token.startswith(option + "=") for token in rest):
            raise UsageError(f"`{option}` is an option of this command: give it once, before `--`")
    shared = ["--storage", args.storage] if args.storage else []
    shared += ["--tracking-uri", args.tracking_uri] if args.tracking_uri else []
    shared += ["--heartbeat", str(args.heartbeat)]
    module = SWEEPS[args.sweep]
    sweep = module.parser().parse_args([*rest, *shared])  # an unknown option: "unrecognized arguments: ..."
    check_storage(args.storage)
    check_tracking(args.tracking_uri)
    if sweep.preset == "auto":
        raise UsageError(
            "Expected `--preset` paper, quick or smoke, got 'auto': array tasks may land on nodes with and without "
            "a GPU, and each would resolve it to another preset (another study)"
        )
    module.build_options(sweep)  # every value the tasks will check, checked now
    return [*rest, *shared]


def render(args: argparse.Namespace, argv: Sequence[str], script: str | Path) -> str:
    """The array-job script of ``args``: ``args.tasks`` tasks, each ``exec python -m sweeps.<sweep> argv``."""
    extra = [f"#SBATCH --{name}={getattr(args, name)}" for name in DIRECTIVES if getattr(args, name)]
    extra += [f"#SBATCH {option}" for option in args.sbatch]
    fields = {
        "TASKS": str(args.tasks),
        "LAST_TASK": str(args.tasks - 1),
        "CPUS": str(args.cpus_per_task),
        "JOB_NAME": args.job_name or f"landscape-{args.sweep}",
        "LOG_DIR": args.log_dir,
        "CHDIR": str(args.chdir),
        "EXTRA": "".join(f"{line}\n" for line in extra),
        "STORAGE": redact(args.storage),
        "TRACKING": redact(args.tracking_uri),
        "SCRIPT": str(script),
        "COMMAND": shlex.join([args.python, "-m", f"sweeps.{args.sweep}", *argv]),
    }
    text = TEMPLATE
    for name, value in fields.items():
        text = text.replace(f"@{name}@", value)
    return text


#: Options of this command written as ``#SBATCH --name=value`` when given.
DIRECTIVES = ("time", "partition", "account", "mem", "gres")


def write_job(args: argparse.Namespace, console: Console) -> int:
    require(args.tasks >= 1, "--tasks", ">= 1", args.tasks)
    require(args.cpus_per_task >= 1, "--cpus-per-task", ">= 1", args.cpus_per_task)
    require(args.heartbeat >= 1, "--heartbeat", ">= 1", args.heartbeat)
    for name in (*DIRECTIVES, "job_name", "log_dir", "chdir"):
        check_directive("--" + name.replace("_", "-"), getattr(args, name))
    for option in args.sbatch:
        if not option.startswith("-") or any(c in option for c in "\n\r"):
            raise UsageError(f"Expected `--sbatch` as one sbatch option (--sbatch=--qos=long), got {option!r}")
    argv = sweep_argv(args)
    args.chdir = Path(args.chdir or os.getcwd()).resolve()
    if not args.chdir.is_dir():
        raise UsageError(f"Expected `--chdir` as an existing directory, got {str(args.chdir)!r}")
    sbatch = shutil.which("sbatch")
    if args.submit and sbatch is None:
        raise UsageError(
            "cannot submit: `sbatch` is not on PATH; run this where SLURM's client tools are, or drop --submit and "
            "submit the script with sbatch there"
        )
    script, logs = Path(args.script), args.chdir / args.log_dir
    try:
        logs.mkdir(parents=True, exist_ok=True)  # sbatch does not create the directory of --output
        script.write_text(render(args, argv, script))
        script.chmod(0o755)
    except OSError as error:
        raise UsageError(f"cannot write {script} and its log directory {logs}: {error.strerror}") from None
    task = shlex.join(["python", "-m", f"sweeps.{args.sweep}", *argv])
    console.print(f"wrote {script}: an array of {args.tasks} tasks, each running\n  {task}", **PLAIN)
    if not args.submit:
        console.print(f"submit it with: sbatch {script}", **PLAIN)
        return 0
    result = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}").splitlines()
        raise UsageError(f"sbatch refused {script}: {lines[-1]}")
    job = result.stdout.strip().split(";")[0]  # --parsable: "jobid[;cluster]"
    console.print(f"submitted array job {job} ({args.tasks} tasks), logs in {logs}: squeue -j {job}", **PLAIN)
    return 0


#: Console.print options for lines a user may copy: no markup, no highlighting, no wrapping.
PLAIN = {"markup": False, "highlight": False, "soft_wrap": True}


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(parser(), argv, write_job)


if __name__ == "__main__":
    raise SystemExit(main())
