"""A progress bar per run stage on a terminal (rich), fed through the pipeline's ProgressSink protocol."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class CurrentStderr:
    """A stream that writes to whatever `sys.stderr` is at the time of the write.

    While the progress bar is live, rich swaps `sys.stderr` for a proxy that prints above the bar;
    event lines written through this object follow that swap instead of tearing the bar apart.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.__stderr__ is not None and sys.__stderr__.isatty()


class RichProgress:
    """One bar per stage (`staging`, `running`, `collecting`, ...), created on its first update."""

    def __init__(self, stream: TextIO | None = None) -> None:
        console = Console(file=stream or sys.stderr, stderr=stream is None)
        self._progress = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            redirect_stderr=True,
            redirect_stdout=False,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def update(self, stage: str, done: int, total: int) -> None:
        """Show that `done` of `total` items of `stage` are finished."""
        task = self._tasks.get(stage)
        if task is None:
            task = self._progress.add_task(stage, total=max(total, 0))
            self._tasks[stage] = task
        self._progress.update(task, completed=done, total=max(total, 0))

    def close(self) -> None:
        """Stop redrawing (idempotent), so what is printed next is not interleaved with the bars."""
        self._progress.stop()

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class NullProgress:
    """The sink used off a terminal: progress is in the `tasks.progress` events already."""

    def update(self, stage: str, done: int, total: int) -> None:
        """Ignore the update."""

    def close(self) -> None:
        """Nothing to stop."""

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None
