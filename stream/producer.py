"""Reading post files and sending them to Kafka (``mulcot produce``, ``mulcot label``, the demo, the benchmark).

:func:`read_lines` reads a JSONL file line by line into :class:`Line` records: the Kafka key and
value, and what is wrong with the line, if anything (invalid JSON, a schema error, a research
row whose image file is missing). :func:`produce_file` sends them and returns a
:class:`ProduceReport` of what was sent, warned about and skipped, by line number.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .checks import describe
from .kafka import BrokerUnavailable, producer
from .protocol import Post, schema_message
from .settings import Settings

_POST_FIELDS = {"schema_version", "id", "text", "aspect", "image_b64", "image_url", "author", "created_at", "lang", "metadata"}

INVALID_JSON = "invalid JSON"
SCHEMA = "schema error"
MISSING_IMAGE = "missing image file"


@dataclass
class Line:
    """One non-blank line of a post file, converted: ``key``/``value`` as they would be sent, and
    ``problem`` (``kind``: one of :data:`INVALID_JSON`, :data:`SCHEMA`, :data:`MISSING_IMAGE`)
    when the line is not a valid post as written."""

    number: int
    key: bytes | None
    value: bytes
    kind: str | None = None
    problem: str | None = None
    gold_label: str | None = None


def convert(line: str, base: Path, number: int = 0, *, check: bool = True) -> Line:
    """One JSONL line -> :class:`Line`.

    Research-format rows (``image`` is a path relative to the file's folder) get the image
    inlined as ``image_b64`` and the gold label kept in ``metadata.gold_label``; a missing image
    file is reported (the post goes on without it). Rows that are not JSON objects are passed
    through untouched (so the worker dead-letters them), reported as invalid JSON. With
    ``check``, the converted post is validated against the ``Post`` schema.
    """
    line = line.rstrip("\r\n")
    raw = line.encode("utf-8", "surrogateescape")  # the line's bytes as they are in the file
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return Line(number, None, raw, INVALID_JSON, f"{INVALID_JSON}: {exc}")
    if not isinstance(obj, dict):
        return Line(number, None, raw, INVALID_JSON, f"{INVALID_JSON}: the value is not a JSON object")
    key = str(obj["id"]).encode() if isinstance(obj.get("id"), (str, int)) else None
    out = Line(number, key, raw)
    if "image" in obj or "label" in obj:
        post: dict[str, Any] = {k: v for k, v in obj.items() if k in _POST_FIELDS}
        meta = dict(post.get("metadata") or {})
        if obj.get("label") is not None:
            meta["gold_label"] = out.gold_label = str(obj["label"])
        if meta:
            post["metadata"] = meta
        image = obj.get("image")
        if isinstance(image, str) and image:
            path = (base / image).resolve()
            try:
                post["image_b64"] = base64.b64encode(path.read_bytes()).decode()
            except OSError as exc:
                out.kind = MISSING_IMAGE
                out.problem = f"{MISSING_IMAGE} {image!r} ({exc.strerror or type(exc).__name__}); sent without its image"
        out.value = json.dumps(post, ensure_ascii=False).encode("utf-8", "surrogateescape")
    if check:
        try:
            Post.model_validate_json(out.value)
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                out.kind, out.problem = INVALID_JSON, f"{INVALID_JSON}: not valid UTF-8 JSON ({exc.errors()[0]['msg']})"
            else:
                out.kind = SCHEMA
                out.problem = f"{SCHEMA}: {schema_message(exc, 3)}" + (f" ({out.problem})" if out.problem else "")
    return out


def convert_line(line: str, base: Path) -> tuple[bytes | None, bytes]:
    """One JSONL line -> ``(key, value)`` (see :func:`convert`)."""
    got = convert(line, base, check=False)
    return got.key, got.value


def read_lines(path: Path, limit: int = 0, *, check: bool = True, skip: Callable[[int], bool] | None = None) -> Iterator[Line]:
    """The first ``limit`` (0: all) non-blank lines of ``path`` as :class:`Line` records;
    lines for which ``skip(number)`` is true are counted but not converted."""
    base = path.parent
    n = 0
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            n += 1
            if skip is None or not skip(number):
                yield convert(line, base, number, check=check)
            if limit and n >= limit:
                return


def count_lines(path: Path, limit: int = 0) -> int:
    """How many non-blank lines ``path`` has (at most ``limit`` when given)."""
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                n += 1
                if limit and n >= limit:
                    break
    return n


def read_posts(path: Path, limit: int = 0) -> Iterator[tuple[bytes | None, bytes]]:
    for got in read_lines(path, limit, check=False):
        yield got.key, got.value


@dataclass
class ProduceReport:
    """What ``mulcot produce`` did: records sent, and the lines warned about (sent anyway) or
    skipped (not sent), each as ``(line number, reason)``."""

    sent: int = 0
    warned: list[tuple[int, str]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def summary(self, topic: str, shown: int = 50) -> list[str]:
        lines = [f"produced {self.sent} posts to {topic} ({len(self.warned)} warned, {len(self.skipped)} skipped)"]
        for what, items in (("warned (sent)", self.warned), ("skipped (not sent)", self.skipped)):
            for number, reason in items[:shown]:
                lines.append(f"  {what}: line {number}: {reason}")
            if len(items) > shown:
                lines.append(f"  ... and {len(items) - shown} more {what.split()[0]} lines")
        return lines


class StrictError(ValueError):
    """``--strict``: the file has a bad line; nothing was sent."""


async def produce_records(settings: Settings, records: Iterable[tuple[bytes | None, bytes]], topic: str, rate: float = 0.0,
                          on_sent: Callable[[bytes | None, bytes], None] | None = None) -> int:  # fmt: skip
    prod = producer(settings)
    try:
        await asyncio.wait_for(prod.start(), 30)
    except Exception as exc:
        try:
            await prod.stop()
        except Exception:
            pass
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.broker}: {describe(exc)}") from None
    n = 0
    futs = []
    t0 = time.perf_counter()
    try:
        for key, value in records:
            if rate > 0:
                wait = t0 + n / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            futs.append(await prod.send(topic, key=key, value=value))
            n += 1
            if on_sent:
                on_sent(key, value)
            if len(futs) >= 1000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
    finally:
        await prod.stop()
    return n


def check_file(path: Path, limit: int = 0) -> None:
    """``--strict``: raise :class:`StrictError` naming the first bad line of ``path``."""
    for got in read_lines(path, limit):
        if got.problem is not None:
            raise StrictError(f"{path}: line {got.number}: {got.problem}; nothing was sent (--strict)")


async def produce_file(settings: Settings, path: Path, topic: str, rate: float = 0.0, limit: int = 0, *,
                       skip_invalid: bool = False, on_line: Callable[[Line, bool], None] | None = None) -> ProduceReport:  # fmt: skip
    """Send the posts of ``path``; ``on_line(line, sent)`` sees every line as it goes. Lines with
    a problem are sent as they are (the worker dead-letters invalid ones) and reported as warned,
    or, with ``skip_invalid``, invalid JSON and schema errors are not sent and reported as skipped."""
    report = ProduceReport()

    def records() -> Iterator[tuple[bytes | None, bytes]]:
        for got in read_lines(path, limit):
            send = not (skip_invalid and got.kind in (INVALID_JSON, SCHEMA))
            if got.problem is not None:
                (report.warned if send else report.skipped).append((got.number, got.problem))
            if on_line is not None:
                on_line(got, send)
            if send:
                yield got.key, got.value

    report.sent = await produce_records(settings, records(), topic, rate)
    return report


__all__ = ["Line", "ProduceReport", "StrictError", "convert", "convert_line", "read_lines", "read_posts", "count_lines",
           "check_file", "produce_records", "produce_file", "INVALID_JSON", "SCHEMA", "MISSING_IMAGE"]
