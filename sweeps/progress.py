"""Rich progress for a sweep: trials done of n with ETA, and the current trial's epochs with the live loss."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["SweepProgress"]


class SweepProgress:
    """Two bars: ``trials`` (done of n, ETA) and ``epochs`` of the running trial (with its latest batch loss)."""

    def __init__(self, total: int, done: int, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.trials = self.progress.add_task("trials", total=total, completed=done, info="")
        self.epochs = self.progress.add_task("epochs", total=1, visible=False, info="")

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def trial_started(self, label: str, epochs: int) -> None:
        self.progress.reset(self.epochs, total=epochs, visible=True, description=label, info="")

    def step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        info = f"loss {loss:.4f}" if math.isfinite(loss) else f"{step}/{steps}"
        self.progress.update(self.epochs, completed=epoch - 1 + step / steps, info=info)

    def stage(self, text: str) -> None:
        self.progress.update(self.epochs, info=text)

    def workers_running(self, alive: int, workers: int, threads: int) -> None:
        """The second bar while ``--workers K`` processes run the trials (they draw no bars of their own): how many
        of the K are still running."""
        info = f"{threads} thread{'s' if threads > 1 else ''} each"
        self.progress.update(
            self.epochs, description="worker processes running", completed=alive, total=workers, info=info, visible=True
        )

    def note(self, text: str) -> None:
        """A line printed above the bars (e.g. a diverged trial)."""
        self.progress.console.print(text)

    def trials_done(self, done: int) -> None:
        self.progress.update(self.trials, completed=done)
