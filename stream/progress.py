"""Progress on stderr for the file verbs (``mulcot produce``, ``mulcot label``).

On a terminal: a rich bar with the count, items per second and the expected time left. Else
(a log, a pipe, a test): one plain line every ``every_s`` seconds and one at the end, so a
long run still shows it is moving. Notes (warnings about lines) are printed above the bar.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text


class _Rate(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Any) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else f"- {self.unit}/s", style="progress.data.speed")


class Progress:
    """``with Progress("labelling", total) as p: p.advance(n); p.note("line 3: ...")``."""

    def __init__(self, what: str, total: int | None, unit: str = "posts", every_s: float = 10.0,
                 console: Console | None = None) -> None:  # fmt: skip
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.console = console or Console(stderr=True)
        self.done = 0
        self._printed = -1  # ``done`` at the last plain line
        self.t0 = time.monotonic()
        self._last = self.t0
        self._bar: RichProgress | None = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(self.unit),
                TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(), console=self.console, transient=False,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._printed != self.done:
            self._line()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
        elif time.monotonic() - self._last >= self.every_s:
            self._line()

    def describe(self, what: str) -> None:
        """Change the description (e.g. to show a count of problems so far)."""
        self.what = what
        if self._bar is not None:
            self._bar.update(self._task, description=what)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(Text(text))
        else:
            print(text, file=sys.stderr, flush=True)

    def _line(self) -> None:
        self._printed = self.done
        self._last = time.monotonic()
        took = max(self._last - self.t0, 1e-9)
        rate = self.done / took
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0 and self.done < self.total:
            eta = f", about {(self.total - self.done) / rate:.0f} s left"
        print(f"{self.what}: {self.done}{of} {self.unit}, {rate:.1f} {self.unit}/s{eta}", file=sys.stderr, flush=True)


__all__ = ["Progress"]
