"""How every command line of the project runs, with one error policy.

- Bad input exits 2 with one line, ``error: ...``: a ``UsageError`` raised by validation, or argparse's own
  complaint (``ArgumentParser`` turns it into a ``UsageError`` instead of printing the multi-line usage).
- Anything else is a bug: it keeps its traceback, and Python exits 1.
- Ctrl-C exits 130 and SIGTERM 143 (``Terminated``), after the command's own note on how to resume.

Entry points stay thin: ``main(argv) -> int`` builds a parser and calls ``run_command``.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

from landscape_core.common import check
from landscape_core.errors import UsageError

__all__ = [
    "ArgumentParser",
    "Terminated",
    "UsageError",
    "exit_process",
    "output_console",
    "raise_terminated",
    "require",
    "require_writable",
    "run_command",
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise ``UsageError`` (one line, exit 2) instead of printing the usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that running work ends cleanly (a trial's run KILLED, the trial FAIL)."""


#: The exit statuses of an interrupted command: Ctrl-C and SIGTERM.
INTERRUPTED = (130, 143)


def exit_process(status: int) -> NoReturn:
    """End a command's process with ``status`` (its ``__main__``: ``exit_process(main())``).

    After an interrupt (130, 143) the command has already recorded what it must (a trial's run KILLED, the trial
    failed, its point put back), so the process ends at once: stdout and stderr are flushed (the "interrupted:" line
    reaches a batch job's log) and nothing waits for threads a library left running. Optuna's heartbeat thread is
    not a daemon, and a SIGTERM that lands between its start and its ``with`` block, or in its stop, leaves it
    beating forever; Python's exit would wait for it, and a scancelled SLURM task hung until KillWait's SIGKILL
    (issue 24). Other statuses exit as Python does.
    """
    if status not in INTERRUPTED:
        raise SystemExit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(status)


def raise_terminated(signum: int, frame: Any) -> None:
    """A SIGTERM handler: raise ``Terminated``."""
    raise Terminated()


def require(condition: bool, option: str, expectation: str, value: object) -> None:
    """A command-line value checked: ``UsageError("Expected `option` expectation, got value")`` unless
    ``condition`` (one line, exit status 2)."""
    check(condition, option, expectation, value, error=UsageError)


def require_writable(option: str, path: str | os.PathLike[str] | None) -> None:
    """An output file a command will write at its end (``--json PATH``), checked up front: a ``UsageError`` when
    it is a directory, or when its directory cannot be created or written. Writes nothing."""
    if path is None:
        return
    target = Path(path)
    if str(path) == "" or target.is_dir():
        raise UsageError(f"Expected `{option}` a file path, got {str(path)!r}")
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot write `{option}` {target}: {existing} is not a directory")
    writable = os.access(target, os.W_OK) if target.exists() else os.access(existing, os.W_OK | os.X_OK)
    if not writable:
        raise UsageError(f"cannot write `{option}` {target}: permission denied")


def output_console() -> Console:
    """The console the CLIs print to: the terminal's width in a terminal, ``$COLUMNS`` when set; otherwise (output
    to a file or a pipe) 160 columns, where rich would assume 80, too narrow for the report's tables."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=160)


def print_error(console: Console, message: str) -> None:
    """``error: message`` on one line, however narrow the terminal (rich would wrap at the console's width)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    command: Callable[[argparse.Namespace, Console], int],
    *,
    interrupted: str | None = None,
    console: Console | None = None,
) -> int:
    """Parse ``argv`` and run ``command(args, console)`` under the error policy above.

    Args:
        parser: the command's parser (an ``ArgumentParser`` of this module, so usage errors are one line).
        argv: the arguments (None: ``sys.argv[1:]``).
        command: the work; returns the exit status. It raises ``UsageError`` for bad input.
        interrupted: printed after Ctrl-C or SIGTERM (e.g. how to resume); the status is then 130 or 143.
        console: where to print (default ``output_console()``).

    Returns:
        The exit status: the command's, 2 for bad input, 130 or 143 when interrupted. Any other exception
        propagates with its traceback.
    """
    console = console or output_console()
    if hasattr(signal, "SIGUSR1") and sys.stderr is not None and hasattr(sys.stderr, "fileno"):
        try:  # `kill -USR1 <pid>` prints every thread's stack to stderr: what a hung command is doing
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        except (ValueError, OSError, AttributeError):  # stderr without a file descriptor (captured)
            pass
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return command(parser.parse_args(argv), console)
    except UsageError as error:
        print_error(console, str(error))
        return 2
    except KeyboardInterrupt as interrupt:
        if interrupted:
            console.print(f"[yellow]interrupted:[/] {escape(interrupted)}", soft_wrap=True)
        return 143 if isinstance(interrupt, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
