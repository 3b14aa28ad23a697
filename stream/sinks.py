"""Where a batch's outputs go: sinks that only write, and report what they could not.

A sink's ``write(results, dead)`` writes every item once and returns a :class:`Failed` for
each item it could not write, with the error; it never retries, sleeps, falls back or skips.
All of that is :mod:`stream.delivery`'s, the one component that drives every sink (retry with
backoff, the retriable / permanent classification of :class:`RetryPolicy`, fallback, skip).

A sink may also offer ``fallback(item, error)``: what to write instead of an item refused for
good (:class:`KafkaSink`: the bounded dead letter of the refused record, whose original value
and oversized key are kept by reference; see :mod:`stream.messages`), and ``skip_message``:
the log line of an item given up. :class:`BaseSink` has both defaults (no fallback; a generic
line).

* :class:`KafkaSink` - results to the output topic and dead letters to the dead-letter topic,
  keyed by post id; each record is sent once per call, so a retry re-sends only the records
  Kafka did not acknowledge.
* :class:`RedisSink` - results through :class:`~stream.store.AsyncResultWriter` in one
  pipelined round trip, with an error per result (a refused result does not fail the others),
  then the batch's dead-letter counts.

Adding a sink: a class on :class:`BaseSink` with ``name``, ``write`` and a
``from_context(ctx)`` factory (in its own module), plus one line in
:data:`stream.delivery.SINKS`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .messages import OutDead, OutResult, dead_letter
from .protocol import ErrorCode

Item = OutResult | OutDead

# Kafka errors that are about the record itself (aiokafka class names; Faust wraps them in
# ProducerSendError, so the cause chain is searched)
_KAFKA_PERMANENT = {
    "MessageSizeTooLargeError",
    "RecordTooLargeError",
    "RecordListTooLargeError",
    "InvalidTopicError",
    "CorruptRecordException",
    "UnsupportedForMessageFormatError",
    "InvalidRequestError",
    "InvalidTimestampError",
    "PolicyViolationError",
}
# Redis error replies that pass with time (any other error reply is permanent): redis-py
# classes, and the reply prefixes as they appear inside script errors
_REDIS_TRANSIENT_CLASSES = {
    "NoScriptError", "BusyLoadingError", "ReadOnlyError", "TryAgainError", "ClusterDownError", "MasterDownError",
    "AskError", "MovedError", "OutOfMemoryError", "ClusterError",
}  # fmt: skip
_REDIS_TRANSIENT_TEXT = ("LOADING", "OOM ", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "NOREPLICAS", "BUSY ", "NOSCRIPT")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 8:
        out.append(cur)
        cur = cur.__cause__
    return out


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff (``base_s`` doubling to ``cap_s``) and the retriable / permanent classification
    of sink errors; :mod:`stream.delivery` applies it."""

    base_s: float = 0.2
    cap_s: float = 5.0

    def backoff(self, attempt: int) -> float:
        return min(self.base_s * (2**attempt), self.cap_s)

    def is_permanent(self, exc: BaseException) -> bool:
        """True when retrying the same record cannot succeed.

        Retriable: broker or server unavailable, timeouts, not-leader, Redis loading/OOM/
        read-only, connection errors, and anything not known to be permanent. Permanent for
        the record: Kafka record too large, invalid topic, corrupt record, serialization; a
        Redis error reply that is not one of the transient ones (wrong type, value over the
        server's limit, script error)."""
        for e in _chain(exc):
            names = {c.__name__ for c in type(e).__mro__}
            if names & _KAFKA_PERMANENT:
                return True
            if isinstance(e, (TypeError, UnicodeError)):  # serialization of key or value
                return True
            if "ResponseError" in names:  # a Redis error reply (connection errors are not replies)
                if names & _REDIS_TRANSIENT_CLASSES:
                    return False
                return not any(t in str(e).upper() for t in _REDIS_TRANSIENT_TEXT)
        return False


@dataclass(frozen=True)
class Failed:
    """One item a sink could not write, and the error it got."""

    item: Item
    error: BaseException


class Sink(Protocol):
    """A destination of a batch's outputs (see the module docstring)."""

    name: str

    async def write(self, results: Sequence[OutResult], dead: Sequence[OutDead] = ()) -> list[Failed]: ...

    def fallback(self, item: Item, error: BaseException) -> Item | None: ...

    def skip_message(self, item: Item, error: BaseException) -> str: ...


def item_name(item: Item) -> str:
    """How an item is named in log lines: its post id, else its key."""
    post_id = item.result.id if isinstance(item, OutResult) else item.dead.post_id
    return post_id or _short(item.key)


class BaseSink:
    """Defaults of the :class:`Sink` protocol: no fallback, a generic skip line."""

    name = "sink"

    def fallback(self, item: Item, error: BaseException) -> Item | None:
        return None

    def skip_message(self, item: Item, error: BaseException) -> str:
        return f"the {self.name} sink refused {item_name(item)} for good ({type(error).__name__}: {error})"


@dataclass(frozen=True)
class SinkContext:
    """What a sink factory (``from_context``) may use: the settings, the worker's name, its
    Kafka producer's ``send(topic, key, value)`` and Redis writer."""

    settings: Any
    worker: str = ""
    send: Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]] | None = None
    writer: Any = None


class KafkaSink(BaseSink):
    """Results to ``output_topic``, dead letters to ``dlq_topic``, keyed by post id.

    ``send(topic, key, value)`` is a coroutine returning an awaitable of the broker's
    acknowledgement (Faust's and aiokafka's producers both fit).
    """

    name = "kafka"

    def __init__(
        self,
        send: Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]],
        output_topic: str,
        dlq_topic: str,
        *,
        worker: str = "",
    ) -> None:
        self.send = send
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.worker = worker

    @classmethod
    def from_context(cls, ctx: SinkContext) -> KafkaSink:
        assert ctx.send is not None, "the Kafka sink needs the worker's producer"
        return cls(ctx.send, ctx.settings.output_topic, ctx.settings.dlq_topic, worker=ctx.worker)

    async def write(self, results: Sequence[OutResult], dead: Sequence[OutDead] = ()) -> list[Failed]:
        """Send every record once, then await the acknowledgements; the ones not acknowledged
        come back with their error."""
        msgs: list[tuple[str, Item]] = [(self.output_topic, r) for r in results]
        msgs += [(self.dlq_topic, d) for d in dead]
        failed: list[Failed] = []
        sent: list[tuple[Item, Awaitable[Any]]] = []
        for topic, item in msgs:
            try:
                sent.append((item, await self.send(topic, item.key, item.value)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported, classified by the delivery
                failed.append(Failed(item, exc))
        acks = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        for (item, _), ack in zip(sent, acks):
            if isinstance(ack, asyncio.CancelledError):
                raise ack
            if isinstance(ack, BaseException):
                failed.append(Failed(item, ack))
        return failed

    def fallback(self, item: Item, error: BaseException) -> Item | None:
        """The bounded dead letter that replaces a refused record (None without its input record)."""
        rec = item.record
        if rec is None:
            return None
        reason = f"{type(error).__name__}: {error}"
        if isinstance(item, OutResult):
            return dead_letter(rec, ErrorCode.PUBLISH_FAILED, f"the result could not be published: {reason}",
                               item.result.id, inline_max=0, worker=self.worker)  # fmt: skip
        d = item.dead
        return dead_letter(rec, d.error, f"{d.message} [the full dead letter could not be published: {reason}]",
                           d.post_id, inline_max=0, worker=self.worker)  # fmt: skip

    def skip_message(self, item: Item, error: BaseException) -> str:
        return (f"{self.dlq_topic} refused the bounded dead letter {_short(item.key)} for good "
                f"({type(error).__name__}: {error}); the input record is not retried")  # fmt: skip


class RedisSink(BaseSink):
    """Results to Redis through ``writer`` (:class:`~stream.store.AsyncResultWriter`), then the
    batch's dead-letter counts (the dashboard's; a counter, so a retry after a lost reply may
    count a batch twice)."""

    name = "redis"

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def from_context(cls, ctx: SinkContext) -> RedisSink:
        assert ctx.writer is not None, "the Redis sink needs the worker's Redis writer"
        return cls(ctx.writer)

    async def write(self, results: Sequence[OutResult], dead: Sequence[OutDead] = ()) -> list[Failed]:
        """The results (idempotent writes), then the batch's dead-letter counts and the dead letters
        themselves in the bounded ``dead_recent`` list."""
        failed: list[Failed] = []
        if results:
            try:
                errors = await self.writer.write_each([(r.result, r.value, r.event_ms, r.thumbnail, r.text) for r in results])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the round trip failed: every result with it
                errors = [exc] * len(results)
            failed += [Failed(r, e) for r, e in zip(results, errors) if isinstance(e, BaseException)]
        codes: dict[str, int] = {}
        for d in dead:
            codes[d.dead.error.value] = codes.get(d.dead.error.value, 0) + 1
        count_dead = getattr(self.writer, "count_dead", None)
        push_dead = getattr(self.writer, "push_dead", None)  # the bounded list the dashboard shows
        if dead and (count_dead is not None or push_dead is not None):
            # a retry after a lost reply may count or list a batch's dead letters twice
            try:
                if count_dead is not None:
                    await count_dead(codes)
                if push_dead is not None:
                    await push_dead([d.dead for d in dead])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported for each dead letter of the batch
                failed += [Failed(d, exc) for d in dead]
        return failed

    def skip_message(self, item: Item, error: BaseException) -> str:
        what = "the result of" if isinstance(item, OutResult) else "counting the dead letter of"
        where = "it is on the output topic" if isinstance(item, OutResult) else "it is on the dead-letter topic"
        return f"Redis refused {what} {item_name(item)} for good ({type(error).__name__}: {error}); {where}"


def _short(key: bytes, n: int = 80) -> str:
    text = key[:n].decode("utf-8", "replace")
    return text + (f"... ({len(key)} bytes)" if len(key) > n else "")


__all__ = ["RetryPolicy", "Failed", "Sink", "BaseSink", "SinkContext", "KafkaSink", "RedisSink", "item_name"]
