"""The worker's message types, apart from Faust and from the batch logic.

* :class:`InRecord` - one input record with its Kafka coordinates;
* :class:`OutResult` / :class:`OutDead` - one record for the output / dead-letter topic,
  with the input record it came from (so a sink can fall back to a bounded dead letter);
* :class:`Outcome` - what one batch produced.

:func:`dead_letter` is the one place a dead letter is built. Its size is bounded whatever
the input record holds: the original value is inline only up to ``inline_max`` bytes (else
``sha256`` + a ``kafka://topic/partition/offset`` reference), a key over
:data:`DLQ_KEY_MAX_BYTES` is replaced by its ``sha256`` + the same reference, and the
message is cut at :data:`DLQ_MESSAGE_MAX_CHARS`.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .protocol import MAX_ID, DeadLetter, ErrorCode, Original, SentimentResult, SourceRef

DLQ_KEY_MAX_BYTES = 1024
"""Input keys up to this size are copied into ``DeadLetter.key``; larger ones become ``oversized_key``."""
DLQ_MESSAGE_MAX_CHARS = 2000


@dataclass
class InRecord:
    """One input record with its Kafka coordinates."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None

    @property
    def ref(self) -> str:
        return f"kafka://{self.topic}/{self.partition}/{self.offset}"

    @property
    def coordinates(self) -> str:
        """``topic/partition/offset``: the dead-letter key of a record without a usable id or key."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass
class OutResult:
    key: bytes
    value: bytes
    result: SentimentResult
    event_ms: int
    record: InRecord | None = None
    thumbnail: bytes | None = None  # small JPEG of the post's image (Redis, for the dashboard)
    text: str | None = None  # the post's text (Redis, for the dashboard)


@dataclass
class OutDead:
    key: bytes
    value: bytes
    dead: DeadLetter
    record: InRecord | None = None


@dataclass
class Outcome:
    results: list[OutResult] = field(default_factory=list)
    dead: list[OutDead] = field(default_factory=list)
    inference_s: float = 0.0
    batch_size: int = 0
    early: list[OutResult] = field(default_factory=list)


def _bytes_ref(raw: bytes, rec: InRecord, inline_max: int) -> Original:
    inline = len(raw) <= inline_max
    return Original(
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        data_b64=base64.b64encode(raw).decode() if inline else None,
        ref=None if inline else rec.ref,
    )


def dead_letter(
    rec: InRecord,
    code: ErrorCode,
    message: str,
    post_id: str | None = None,
    *,
    inline_max: int,
    worker: str = "",
) -> OutDead:
    """The dead letter of ``rec``, bounded in size (see the module docstring).

    Its Kafka key is the post id when known, else the input key when it is valid UTF-8 of
    at most :data:`~stream.protocol.MAX_ID` bytes, else ``topic/partition/offset``.
    """
    raw = rec.value or b""
    key_text: str | None = None
    oversized_key = None
    if rec.key is not None:
        if len(rec.key) <= DLQ_KEY_MAX_BYTES:
            key_text = rec.key.decode("utf-8", "replace")
        else:
            oversized_key = _bytes_ref(rec.key, rec, 0)
    if len(message) > DLQ_MESSAGE_MAX_CHARS:
        message = message[: DLQ_MESSAGE_MAX_CHARS - 15] + " ... (cut)"
    dl = DeadLetter(
        error=code,
        message=message,
        post_id=post_id[:MAX_ID] if post_id else None,
        key=key_text,
        oversized_key=oversized_key,
        source=SourceRef(topic=rec.topic, partition=rec.partition, offset=rec.offset, timestamp_ms=rec.timestamp_ms),
        original=_bytes_ref(raw, rec, inline_max),
        first_seen_at=datetime.now(UTC),
        worker=worker,
    )
    return OutDead(dead_letter_key(rec, dl.post_id), dl.model_dump_json().encode(), dl, rec)


def dead_letter_key(rec: InRecord, post_id: str | None) -> bytes:
    """The Kafka key of a dead letter: post id, else a short UTF-8 input key, else ``topic/partition/offset``."""
    if post_id:
        return post_id.encode()
    if rec.key and len(rec.key) <= MAX_ID:
        try:
            rec.key.decode("utf-8")
            return rec.key
        except UnicodeDecodeError:
            pass
    return rec.coordinates.encode()


__all__ = ["InRecord", "OutResult", "OutDead", "Outcome", "dead_letter", "dead_letter_key", "DLQ_KEY_MAX_BYTES"]
