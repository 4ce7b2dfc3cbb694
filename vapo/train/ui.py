"""What the person at the terminal sees and does: progress bars, and Ctrl-C / SIGTERM.

* :func:`progress_ui` is a rich ``Progress`` (disabled when progress is off) wrapped in the
  three calls the training and diagnostics code makes: ``add_task``, ``update``, ``log``.
  When output is not a terminal (a log file, CI, ``nohup``) bars are not drawn; plain lines are
  printed instead (:class:`PlainLines`): one when a phase starts, then every ``PLAIN_EVERY_STEPS``
  tenth of it or every ``PLAIN_EVERY_S`` seconds, whichever comes first — phase, step/total, the
  phase's key metric, elapsed time and ETA (from the rate since the phase's first step, so a slow
  start does not inflate it) — so a piped run is never silent for long.
* :func:`graceful_interrupts` turns the first Ctrl-C / SIGTERM into a flag that the loop checks
  between steps (finish the step, checkpoint, exit cleanly); a second one stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_EVERY_S = 30.0  # a plain progress line at least this often while a phase runs
PLAIN_EVERY_STEPS = 10  # ... and each time a phase has advanced by a tenth of its total


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class PlainLines:
    """Progress as plain lines, for output that is not a terminal.

    ``add_task`` prints the phase's first line; ``update`` prints one when the phase has advanced
    by 1/``PLAIN_EVERY_STEPS`` of its total since the last line, or ended; a heartbeat thread
    prints the running phases' state when nothing was printed for ``every_s`` seconds (a slow
    step never leaves the output silent). A line: ``[vapo] <phase>  <done>/<total>  <info>
    elapsed <t>  eta <t>``.
    """

    def __init__(self, stream: TextIO | None = None, every_s: float = PLAIN_EVERY_S,
                 clock: Any = time.monotonic):
        self.stream = stream if stream is not None else sys.stdout
        self.every_s = every_s
        self.clock = clock
        self.tasks: dict[int, dict[str, Any]] = {}
        self.last_print = clock()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _line(self, t: dict[str, Any]) -> str:
        now = self.clock()
        elapsed = now - t["start"]
        done, total = t["completed"], t["total"]
        parts = [f"[vapo] {t['description']}"]
        parts.append(f"{done:g}/{total:g}" if total is not None else f"{done:g}")
        if t["info"]:
            parts.append(str(t["info"]))
        parts.append(f"elapsed {_clock(elapsed)}")
        # the rate is measured from the first advance on, so that a slow start (a cell's warm start
        # before its first iteration) does not inflate the estimate; no eta before two advances
        first = t["first_advance"]
        if t["eta_from_start"] and first is not None:
            first = (t["start"], t["start_completed"])
        if total is not None and first is not None and done < total and done > first[1]:
            parts.append(f"eta {_clock((now - first[0]) / (done - first[1]) * (total - done))}")
        return "  ".join(parts)

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self.last_print = self.clock()

    def add_task(self, description: str, total: float | None = None, completed: float = 0, info: str = "",
                 every_advance: bool = False, eta_from_start: bool = False, **_: Any) -> int:
        """``every_advance``: a line at each advance, not every tenth (a grid's cells: each one that
        ends is news, and a failed one must be seen). ``eta_from_start``: the rate is measured from
        the task's start, not its first advance (a grid's cells run side by side from the start, so
        the first one to end says little about the rate, and two that end together would make it
        jump)."""
        with self.lock:
            tid = len(self.tasks)
            self.tasks[tid] = {"description": description, "total": total, "completed": completed,
                               "start_completed": completed, "info": info, "start": self.clock(),
                               "printed_at": completed, "visible": True, "first_advance": None,
                               "every_advance": every_advance, "eta_from_start": eta_from_start}
            self._print(self._line(self.tasks[tid]))
            return tid

    def update(self, task_id: int, advance: float | None = None, completed: float | None = None,
               total: float | None = None, info: str | None = None, visible: bool | None = None, **_: Any) -> None:
        with self.lock:
            t = self.tasks[task_id]
            if total is not None:
                t["total"] = total
            if completed is not None:
                t["completed"] = completed
            if advance is not None:
                t["completed"] += advance
            if t["first_advance"] is None and t["completed"] != t["start_completed"]:
                t["first_advance"] = (self.clock(), t["completed"])
            if info is not None:
                t["info"] = info
            if visible is not None:
                t["visible"] = visible
            step = 1.0 if t["every_advance"] else max(1.0, (t["total"] or 0) / PLAIN_EVERY_STEPS)
            ended = t["total"] is not None and t["completed"] >= t["total"]
            due = t["completed"] - t["printed_at"] >= step or self.clock() - self.last_print >= self.every_s
            if t["visible"] and t["completed"] != t["printed_at"] and (ended or due):
                t["printed_at"] = t["completed"]
                self._print(self._line(t))

    def log(self, text: str) -> None:
        with self.lock:
            self._print(text)

    def heartbeat(self) -> None:
        """Print the unfinished phases' state if nothing was printed for ``every_s`` seconds."""
        with self.lock:
            if self.clock() - self.last_print < self.every_s:
                return
            running = [t for t in self.tasks.values()
                       if t["visible"] and (t["total"] is None or t["completed"] < t["total"])]
            for t in running[-1:]:  # the innermost running phase (the one that is slow)
                self._print(self._line(t) + "  (still running)")

    def __enter__(self) -> PlainLines:
        def beat() -> None:
            while not self._stop.wait(min(1.0, self.every_s)):  # a line at most ~1 s past every_s
                self.heartbeat()

        self._thread = threading.Thread(target=beat, name="vapo-progress-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()


class UI:
    """Progress bars of one command (a rich ``Progress``; with ``disable=True`` nothing is drawn),
    or plain lines (``plain``, a :class:`PlainLines`) when output is not a terminal."""

    def __init__(self, progress: Progress, plain: PlainLines | None = None):
        self.progress = progress
        self.plain = plain

    def add_task(self, description: str, total: float | None = None, completed: float = 0, info: str = "",
                 every_advance: bool = False, eta_from_start: bool = False) -> int:
        """The last two shape plain lines only (see :meth:`PlainLines.add_task`)."""
        if self.plain is not None:
            return self.plain.add_task(description, total=total, completed=completed, info=info,
                                       every_advance=every_advance, eta_from_start=eta_from_start)
        return self.progress.add_task(description, total=total, completed=completed, info=info)

    def update(self, task_id: int, **kw: Any) -> None:
        if self.plain is not None:
            self.plain.update(task_id, **kw)
            return
        self.progress.update(task_id, **kw)

    def log(self, *args: Any) -> None:
        """A message above the bars (printed even when the bars are off)."""
        self.progress.console.print(*args)
        if self.plain is not None:
            self.plain.last_print = self.plain.clock()


def _progress(enabled: bool, width: int = 20) -> Progress:
    return Progress(
        TextColumn(f"[bold]{{task.description:<{width}}}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), refresh_per_second=4,
        disable=not enabled,
    )


@contextmanager
def progress_ui(enabled: bool, plain: bool | None = None, width: int = 20) -> Iterator[UI]:
    """Progress bars for the duration of the ``with`` block (none drawn when not ``enabled``).
    ``plain`` (default: when stdout is not a terminal): plain progress lines instead of bars.
    ``width``: the description column's width, in characters."""
    if enabled:
        probe = _progress(False)
        if plain is None:
            plain = not probe.console.is_terminal
        if plain:
            with PlainLines() as lines:
                yield UI(probe, lines)
            return
    with _progress(enabled, width) as p:
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


__all__ = ["UI", "PlainLines", "StopFlag", "graceful_interrupts", "progress_ui", "quiet_ui"]
