"""Reading post files and sending them to Kafka (``mulcot produce``, the demo, the benchmark)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .kafka import BrokerUnavailable, producer
from .settings import Settings

_POST_FIELDS = {"schema_version", "id", "text", "aspect", "image_b64", "image_url", "author", "created_at", "lang", "metadata"}


def convert_line(line: str, base: Path) -> tuple[bytes | None, bytes]:
    """One JSONL line -> ``(key, value)``.

    Research-format rows (``image`` is a path relative to the file's folder) get the image
    inlined as ``image_b64`` and the gold label kept in ``metadata.gold_label``. Rows that
    are not JSON objects are passed through untouched (so the worker dead-letters them).
    """
    raw = line.rstrip("\n").encode()
    try:
        obj = json.loads(line)
    except ValueError:
        return None, raw
    if not isinstance(obj, dict):
        return None, raw
    key = str(obj["id"]).encode() if isinstance(obj.get("id"), (str, int)) else None
    if "image" not in obj and "label" not in obj:
        return key, raw  # already a Post (or an invalid one, sent as is)
    post: dict[str, Any] = {k: v for k, v in obj.items() if k in _POST_FIELDS}
    meta = dict(post.get("metadata") or {})
    if obj.get("label") is not None:
        meta["gold_label"] = str(obj["label"])
    if meta:
        post["metadata"] = meta
    image = obj.get("image")
    if isinstance(image, str) and image:
        path = (base / image).resolve()
        post["image_b64"] = base64.b64encode(path.read_bytes()).decode() if path.exists() else None
        if post["image_b64"] is None:
            post.pop("image_b64")
    return key, json.dumps(post, ensure_ascii=False).encode()


def read_posts(path: Path, limit: int = 0) -> Iterator[tuple[bytes | None, bytes]]:
    base = path.parent
    n = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            yield convert_line(line, base)
            n += 1
            if limit and n >= limit:
                return


async def produce_records(settings: Settings, records, topic: str, rate: float = 0.0, on_sent=None) -> int:
    prod = producer(settings)
    try:
        await asyncio.wait_for(prod.start(), 30)
    except Exception as exc:
        try:
            await prod.stop()
        except Exception:
            pass
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.broker}: {exc or type(exc).__name__}") from None
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


async def produce_file(settings: Settings, path: Path, topic: str, rate: float = 0.0, limit: int = 0) -> int:
    return await produce_records(settings, read_posts(path, limit), topic, rate)
