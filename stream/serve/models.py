"""The query API's response models (its OpenAPI spec) and the JSON the handlers send.

The handlers splice the JSON the worker stored into their responses without parsing it again;
these models describe what comes out (:func:`item_bytes`, :func:`page_bytes`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..protocol import Alert, DeadLetter, SentimentResult

Label = Literal["positive", "neutral", "negative"]


class ResultItem(BaseModel):
    result: SentimentResult
    text: str | None = Field(None, description="the post's text (first 1,000 characters), when kept")


class ResultsPage(BaseModel):
    count: int = Field(..., ge=0)
    last_event_id: str = Field(..., description="id of the newest events entry when read; pass it as `after` to /api/stream")
    filters: dict[str, Any]
    items: list[ResultItem]


class Bucket(BaseModel):
    start: int = Field(..., description="bucket start, epoch seconds")
    counts: dict[str, int]
    total: int
    shares: dict[str, float]


class Stats(BaseModel):
    window: int
    aspect: str | None
    buckets: list[Bucket]
    dead_letters: dict[str, int] = Field(..., description="dead letters by error code, as counted by the workers")
    results_indexed: int = Field(..., description="ids in the recent index (bounded by recent_max)")


class DeadLettersPage(BaseModel):
    count: int = Field(..., ge=0)
    kept: int = Field(..., ge=0, description="dead letters kept in Redis (the newest dead_letters_max)")
    filters: dict[str, Any]
    items: list[DeadLetter] = Field(..., description="newest first; originals over 4 KiB by reference only")


class AlertsPage(BaseModel):
    count: int = Field(..., ge=0)
    last_event_id: str = Field(..., description="id of the newest alerts:events entry when read; pass it as `after` to /api/alerts/stream")
    filters: dict[str, Any]
    counted_apart: dict[str, int] = Field(..., description="results the detector counted apart: late, rejected_invalid, rejected_timestamp")
    items: list[Alert]


class AlertDetail(BaseModel):
    alert: Alert
    examples: list[ResultItem] = Field(..., description="the results of the alert's example posts still in the cache")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: str
    results_indexed: int | None = None
    events: int | None = None


class Problem(BaseModel):
    detail: Any


def item_bytes(raw: bytes, text: bytes | None) -> bytes:
    """A ResultItem as JSON from the stored result JSON and text (the result is not re-parsed)."""
    t = json.dumps(text.decode("utf-8", "replace")).encode() if text else b"null"
    return b'{"result":' + raw + b',"text":' + t + b"}"


def page_bytes(head: dict[str, Any], items: list[bytes]) -> bytes:
    """A page as JSON: the fields of ``head``, then ``items`` (JSON documents) spliced in."""
    return json.dumps(head)[:-1].encode() + b',"items":[' + b",".join(items) + b"]}"


def bucket(start: int, counts: dict[str, int]) -> dict[str, Any]:
    """A :class:`Bucket` of the counts read (:func:`stream.store.label_counts`)."""
    total = sum(counts.values())
    return {"start": start, "counts": counts, "total": total,
            "shares": {lab: (k / total if total else 0.0) for lab, k in counts.items()}}  # fmt: skip


__all__ = ["ResultItem", "ResultsPage", "Bucket", "Stats", "DeadLettersPage", "AlertsPage", "AlertDetail", "Health", "Problem", "Label",
           "item_bytes", "page_bytes", "bucket"]
