"""``mulcot dead-letters``: read the dead-letter topic (``posts.dlq``) from the broker.

Tansu reports stale end offsets (README, "Embedded services"), so the reader never stops at
them: it reads until every partition's position has reached the high watermark of its last
fetch and no record has come for a short idle time (or, failing that, a longer idle time).
For the newest ``N`` dead letters without a code filter it starts each partition ``N`` records
before its reported end: a stale end is smaller than the real one, so that start reads at least
the partition's newest ``N``, which hold every one of the newest ``N`` overall.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.text import Text

from .protocol import DeadLetter
from .settings import Settings

IDLE_S = 0.6  # no record for this long, with every partition at its high watermark: done
IDLE_MAX_S = 3.0  # no record for this long: done whatever the watermarks say


@dataclass
class Entry:
    """A dead letter with its own coordinates on the dead-letter topic."""

    partition: int
    offset: int
    timestamp_ms: int
    dead: DeadLetter


class TopicMissing(RuntimeError):
    pass


async def _assign(cons: Any, topic: str) -> list[Any]:
    from aiokafka import TopicPartition

    parts = cons.partitions_for_topic(topic)
    if not parts:
        await cons._client.force_metadata_update()
        parts = cons.partitions_for_topic(topic)
    if not parts:
        raise TopicMissing(topic)
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    cons.assign(tps)
    return tps


async def _start(cons: Any, tps: list[Any], recent: int | None) -> None:
    if recent is None:
        await cons.seek_to_beginning(*tps)
        return
    begins = await cons.beginning_offsets(tps)
    ends = await cons.end_offsets(tps)  # stale (short) on Tansu: starting before it reads more, never less
    for tp in tps:
        cons.seek(tp, max(begins[tp], ends[tp] - recent))


def _source(e: Entry) -> tuple[str, int, int]:
    """The input record a dead letter is about (a redelivered record's dead letters share it)."""
    return (e.dead.source.topic, e.dead.source.partition, e.dead.source.offset)


def _parse(m: Any, bad: list[int]) -> Entry | None:
    try:
        return Entry(m.partition, m.offset, m.timestamp or 0, DeadLetter.model_validate_json(m.value))
    except ValueError:
        bad.append(m.offset)
        return None


async def read_dead_letters(settings: Settings, recent: int | None = 20, code: str | None = None,
                            on_entry: Callable[[Entry], None] | None = None,
                            stop: threading.Event | None = None) -> tuple[list[Entry], int]:  # fmt: skip
    """The newest ``recent`` (None: all) dead letters with error ``code`` (None: any), newest
    first, and how many records of the topic were not dead letters. With ``stop`` (follow
    mode) it keeps reading after that and passes each new matching entry to ``on_entry`` until
    ``stop`` is set."""
    from .kafka import consumer

    cons = consumer(settings, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    await cons.start()
    bad: list[int] = []
    try:
        tps = await _assign(cons, settings.dlq_topic)
        await _start(cons, tps, recent if code is None else None)
        got: list[Entry] = []
        last = time.monotonic()
        while True:
            batch = await cons.getmany(timeout_ms=200)
            for msgs in batch.values():
                got.extend(e for e in (_parse(m, bad) for m in msgs) if e is not None)
            idle = time.monotonic() - last
            if batch:
                last = time.monotonic()
                continue
            at_end = True
            for tp in tps:
                high = cons.highwater(tp)  # from the last fetch: right on Tansu, unlike end_offsets()
                at_end = at_end and high is not None and await cons.position(tp) >= high
            if (at_end and idle >= IDLE_S) or idle >= IDLE_MAX_S:
                break
        got = [e for e in got if code is None or e.dead.error.value == code]
        got.sort(key=lambda e: (e.dead.first_seen_at, e.timestamp_ms, e.partition, e.offset), reverse=True)
        seen: set[tuple[str, int, int]] = set()
        got = [e for e in got if not (_source(e) in seen or seen.add(_source(e)))]  # redelivered: listed once
        newest = got[:recent] if recent is not None else got
        if stop is not None and on_entry is not None:
            for e in reversed(newest):
                on_entry(e)
            while not stop.is_set():
                batch = await cons.getmany(timeout_ms=500)
                for msgs in batch.values():
                    for e in (_parse(m, bad) for m in msgs):
                        if e is not None and (code is None or e.dead.error.value == code) and _source(e) not in seen:
                            seen.add(_source(e))
                            on_entry(e)
        return newest, len(bad)
    finally:
        await cons.stop()


def read_sync(settings: Settings, **kw: Any) -> tuple[list[Entry], int]:
    return asyncio.run(read_dead_letters(settings, **kw))


def original_text(d: DeadLetter, limit: int = 300) -> str:
    """The original record as text (cut at ``limit`` characters), or how to find it."""
    o = d.original
    if o.data_b64 is None:
        return f"not inline ({o.size} bytes, sha256 {o.sha256[:16]}...): {o.ref or 'see source'}"
    raw = base64.b64decode(o.data_b64)
    text = raw.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + f"... ({len(raw)} bytes)"


def entry_block(e: Entry) -> Group:
    """One dead letter as a few full-width lines (readable in 80 columns)."""
    d = e.dead
    head = Text()
    head.append(f"{d.first_seen_at:%Y-%m-%d %H:%M:%S} ", style="dim")
    head.append(d.error.value, style="bold magenta")
    head.append("  ")
    head.append(d.post_id or (f"key {d.key}" if d.key else "(no post id)"), style="bold")
    head.append(f"  from {d.source.topic}/{d.source.partition}/{d.source.offset}, {d.original.size} bytes", style="dim")
    msg = Text("  ")
    msg.append(d.message)
    orig = Text("  original: ", style="dim")
    orig.append(original_text(d))
    return Group(head, msg, orig)


__all__ = ["Entry", "TopicMissing", "read_dead_letters", "read_sync", "original_text", "entry_block"]
