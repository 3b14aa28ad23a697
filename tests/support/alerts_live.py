"""Helpers of the live alert tests: the detector as a child process (``python -m stream.cli
alerts run``, as a user runs it), posts produced with event-time Kafka timestamps, and a topic
read to its end (until no record comes for a while: Tansu's end offsets are stale)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stream.services import WorkerProcess
from stream.settings import Settings
from tests.support.alerts_synth import Post
from tests.support.label_student import marked
from tests.support.stream_helpers import ROOT

LABEL_STUDENT = "py:tests.support.label_student:LabelStudent"


def detector_proc(settings: Settings, log: Path) -> WorkerProcess:
    """``mulcot alerts run`` as a child process with exactly ``settings``, output to ``log``."""
    return WorkerProcess(settings, log, cwd=ROOT, verb=("alerts", "run"), OMP_NUM_THREADS="1")


def post_record(p: Post) -> tuple[bytes, bytes, int]:
    """The input record of a synthetic post for the label-reading test student: (key, value, timestamp ms)."""
    body = {"id": p.post_id, "text": marked(f"post {p.post_id} about {p.aspect.strip()}", p.label), "aspect": p.aspect}
    return p.post_id.encode(), json.dumps(body).encode(), p.event_ms


def produce_timed(settings: Settings, posts: Sequence[Post], rate: float = 0.0) -> int:
    """Produce ``posts`` in order, each with its event time as the record's Kafka timestamp."""
    from stream.kafka import producer

    async def run() -> int:
        prod = producer(settings)
        await prod.start()
        t0 = time.perf_counter()
        try:
            futs = []
            for n, p in enumerate(posts):
                if rate > 0 and (wait := t0 + n / rate - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                key, value, ts = post_record(p)
                futs.append(await prod.send(settings.input_topic, key=key, value=value, timestamp_ms=ts))
            await asyncio.gather(*futs)
            return len(futs)
        finally:
            await prod.stop()

    return asyncio.run(run())


def read_all(settings: Settings, topic: str, idle_s: float = 3.0, timeout: float = 60.0) -> list[Any]:
    """Every record of ``topic`` from the start, until none has come for ``idle_s``."""
    from stream.kafka import consumer

    async def run() -> list[Any]:
        cons = consumer(settings, topic, group_id=None, auto_offset_reset="earliest")
        await cons.start()
        out: list[Any] = []
        last = time.monotonic()
        deadline = last + timeout
        try:
            while time.monotonic() - last < idle_s and time.monotonic() < deadline:
                got = await cons.getmany(timeout_ms=300)
                for msgs in got.values():
                    out.extend(msgs)
                    last = time.monotonic()
        finally:
            await cons.stop()
        return out

    return asyncio.run(run())
