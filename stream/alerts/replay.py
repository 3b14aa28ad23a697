"""``mulcot alerts replay``: the detector over a file of ``SentimentResult`` lines, no broker.

The same :class:`~stream.alerts.detector.Detector` as the live runner, over a
:class:`~stream.alerts.state.MemoryState`. Lines are read in order, in chunks; after each
chunk the windows the watermark has closed are evaluated, exactly as the live detector does
after each poll (so results that come more than the lateness allowance behind the newest are
late, as they would be live). At the end of the file the input is complete: the watermark moves
to the newest event time (no lateness) and every complete window is evaluated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from ..protocol import Alert
from .config import AlertConfig
from .detector import Detector, IngestReport
from .state import MemoryState

CHUNK = 2000


def _chunks(values: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(values)
    while chunk := list(islice(it, n)):
        yield chunk


def replay(values: Iterable[Any], config: AlertConfig, *, clock: Callable[[], float] = time.time, chunk: int = CHUNK,
           final: bool = True, publish: Callable[[list[Alert]], None] | None = None) -> tuple[list[Alert], IngestReport]:  # fmt: skip
    """Run the detector over ``values`` (result JSON lines, SentimentResult objects, dicts or
    Observations); ``(alerts in the order raised, what was counted)``. ``final=False`` leaves the
    windows that the lateness allowance still holds open (what a live detector has evaluated)."""
    detector = Detector(config, MemoryState(config), clock=clock)
    alerts: list[Alert] = []
    report = IngestReport()
    for part in _chunks(values, chunk):
        report.add(detector.ingest(part))
        alerts.extend(detector.run_due(publish))
    if final:
        alerts.extend(detector.run_due(publish, final=True))
    return alerts, report


def result_lines(path: Path) -> Iterator[str]:
    """The non-blank lines of a JSONL file (bad UTF-8 replaced, so it is counted as invalid, not raised)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                yield line


__all__ = ["replay", "result_lines"]
