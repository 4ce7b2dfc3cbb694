"""What the person at the terminal sees and does: progress bars, and Ctrl-C / SIGTERM.

* :func:`progress_ui` is a rich ``Progress`` (disabled when progress is off) wrapped in the
  three calls the training and diagnostics code makes: ``add_task``, ``update``, ``log``.
* :func:`graceful_interrupts` turns the first Ctrl-C / SIGTERM into a flag that the loop checks
  between steps (finish the step, checkpoint, exit cleanly); a second one stops at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class UI:
    """Progress bars of one command (a rich ``Progress``; with ``disable=True`` nothing is drawn)."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def add_task(self, description: str, total: float | None = None, completed: float = 0, info: str = "") -> int:
        return self.progress.add_task(description, total=total, completed=completed, info=info)

    def update(self, task_id: int, **kw: Any) -> None:
        self.progress.update(task_id, **kw)

    def log(self, *args: Any) -> None:
        """A message above the bars (printed even when the bars are off)."""
        self.progress.console.print(*args)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<20}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), refresh_per_second=4,
        disable=not enabled,
    )


@contextmanager
def progress_ui(enabled: bool) -> Iterator[UI]:
    """Progress bars for the duration of the ``with`` block (none drawn when not ``enabled``)."""
    with _progress(enabled) as p:
        yield UI(p)


def quiet_ui() -> UI:
    """A UI that draws nothing, for library use and tests."""
    return UI(_progress(False))


class StopFlag:
    """Set by the first SIGINT/SIGTERM; ``requested`` is checked by the loops between steps."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def graceful_interrupts() -> Iterator[StopFlag]:
    """SIGINT/SIGTERM set the yielded flag instead of killing the process (main thread only)."""
    flag = StopFlag()
    try:
        old_int = signal.signal(signal.SIGINT, flag)
        old_term = signal.signal(signal.SIGTERM, flag)
    except ValueError:  # not in the main thread: no signal handling
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


__all__ = ["UI", "StopFlag", "graceful_interrupts", "progress_ui", "quiet_ui"]
