"""Where a batch's outputs go: a Kafka sink and a Redis sink behind one small interface,
and the one retry policy both use.

Every sink failure is classified by :meth:`RetryPolicy.is_permanent`:

* *retriable* - broker or server unavailable, timeouts, not-leader, Redis loading/OOM/
  read-only, connection errors, and anything not known to be permanent: retried with
  backoff (0.2 s doubling to 5 s) until it succeeds, so a batch is acknowledged only once
  its outputs are durable;
* *permanent for this record* - Kafka: record too large, invalid topic, corrupt record,
  serialization; Redis: an error reply that is not one of the transient ones (wrong type,
  value over the server's limit, script error): retrying cannot help.

:class:`KafkaSink` sends each record once and, on a retry, re-sends only the records that
Kafka has not acknowledged. A record refused for good is replaced by its bounded dead
letter (original value and an oversized key by reference; see :mod:`stream.messages`),
which always fits; if even that is refused, the record is logged, counted in
``mulcot_sink_skipped_total{sink="kafka"}`` and skipped, so one record never stalls its
partition. :class:`RedisSink` writes the batch in one round trip; when Redis refuses part
of it for good, it writes post by post, skips (logs and counts) only the refused posts
and keeps retrying the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .messages import OutDead, OutResult, dead_letter
from .protocol import ErrorCode

log = logging.getLogger("mulcot.sinks")

T = TypeVar("T")

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
    """Backoff and the retriable / permanent classification of sink errors."""

    base_s: float = 0.2
    cap_s: float = 5.0

    def backoff(self, attempt: int) -> float:
        return min(self.base_s * (2**attempt), self.cap_s)

    def is_permanent(self, exc: BaseException) -> bool:
        """True when retrying the same record cannot succeed."""
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

    async def run(self, what: str, fn: Callable[[], Awaitable[T]], on_retry: Callable[[BaseException], None] | None = None) -> T:
        """Await ``fn()`` until it succeeds, with backoff (for steps that must not be skipped)."""
        attempt = 0
        while True:
            try:
                return await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged, retried
                if on_retry is not None:
                    on_retry(exc)
                log.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
                await asyncio.sleep(self.backoff(attempt))
                attempt += 1


class Sink(Protocol):
    """A destination of a batch's outputs; ``write`` returns once they are durable (or skipped)."""

    async def write(self, results: Sequence[OutResult], dead: Sequence[OutDead] = ()) -> None: ...


class _Counters(Protocol):
    def retry(self, sink: str) -> None: ...

    def skip(self, sink: str) -> None: ...


class _NoCounters:
    def retry(self, sink: str) -> None:
        pass

    def skip(self, sink: str) -> None:
        pass


@dataclass
class _Msg:
    topic: str
    key: bytes
    value: bytes
    item: OutResult | OutDead
    fallback: bool = False  # already the bounded dead letter of a refused record


class KafkaSink:
    """Results to ``output_topic``, dead letters to ``dlq_topic``; see the module docstring.

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
        policy: RetryPolicy | None = None,
        counters: _Counters | None = None,
        worker: str = "",
    ) -> None:
        self.send = send
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.policy = policy or RetryPolicy()
        self.counters = counters or _NoCounters()
        self.worker = worker

    async def write(self, results: Sequence[OutResult], dead: Sequence[OutDead] = ()) -> None:
        pending = [_Msg(self.output_topic, r.key, r.value, r) for r in results]
        pending += [_Msg(self.dlq_topic, d.key, d.value, d) for d in dead]
        attempt = 0
        while pending:
            failed = await self._send_all(pending)
            pending = []
            retriable: list[BaseException] = []
            for msg, exc in failed:
                if not self.policy.is_permanent(exc):
                    pending.append(msg)
                    retriable.append(exc)
                    continue
                fb = self._fallback(msg, exc)
                if fb is not None:
                    log.error("%s refused record %s (%s: %s); sending its bounded dead letter instead",
                              msg.topic, _short(msg.key), type(exc).__name__, exc)  # fmt: skip
                    pending.append(fb)
                else:
                    self.counters.skip(self.name)
                    log.error("SKIPPED: %s refused the bounded dead letter %s for good (%s: %s); the input record "
                              "is not retried", msg.topic, _short(msg.key), type(exc).__name__, exc)  # fmt: skip
            if retriable:
                self.counters.retry(self.name)
                log.warning("publishing %d of %d records failed (%s); retrying those",
                            len(retriable), len(failed), retriable[0])  # fmt: skip
                await asyncio.sleep(self.policy.backoff(attempt))
                attempt += 1

    async def _send_all(self, msgs: list[_Msg]) -> list[tuple[_Msg, BaseException]]:
        """Send every message once; returns the ones not acknowledged, with their error."""
        failed: list[tuple[_Msg, BaseException]] = []
        sent: list[tuple[_Msg, Awaitable[Any]]] = []
        for m in msgs:
            try:
                sent.append((m, await self.send(m.topic, m.key, m.value)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified by the caller
                failed.append((m, exc))
        acks = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        for (m, _), ack in zip(sent, acks):
            if isinstance(ack, asyncio.CancelledError):
                raise ack
            if isinstance(ack, BaseException):
                failed.append((m, ack))
        return failed

    def _fallback(self, msg: _Msg, exc: BaseException) -> _Msg | None:
        """The bounded dead letter that replaces a refused record (None if it was one already)."""
        rec = msg.item.record
        if msg.fallback or rec is None:
            return None
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(msg.item, OutResult):
            r = msg.item.result
            out = dead_letter(rec, ErrorCode.PUBLISH_FAILED, f"the result could not be published: {reason}",
                              r.id, inline_max=0, worker=self.worker)  # fmt: skip
        else:
            d = msg.item.dead
            out = dead_letter(rec, d.error, f"{d.message} [the full dead letter could not be published: {reason}]",
                              d.post_id, inline_max=0, worker=self.worker)  # fmt: skip
        return _Msg(self.dlq_topic, out.key, out.value, out, fallback=True)


class RedisSink:
    """Results to Redis through ``writer.write(items)`` (:class:`~stream.store.AsyncResultWriter`)."""

    name = "redis"

    def __init__(self, writer: Any, *, policy: RetryPolicy | None = None, counters: _Counters | None = None) -> None:
        self.writer = writer
        self.policy = policy or RetryPolicy()
        self.counters = counters or _NoCounters()

    @staticmethod
    def _item(r: OutResult) -> tuple[Any, ...]:
        return (r.result, r.value, r.event_ms, r.thumbnail, r.text)

    async def write(self, results: Sequence[OutResult], dead: Sequence[OutDead] = ()) -> None:
        """The results (idempotent writes), then the batch's dead-letter counts and the dead letters
        themselves in the bounded ``dead_recent`` list (the dashboard's; a retry after a lost reply
        may count or list a batch's dead letters twice)."""
        await self._write(list(results))
        codes: dict[str, int] = {}
        for d in dead:
            codes[d.dead.error.value] = codes.get(d.dead.error.value, 0) + 1
        count_dead = getattr(self.writer, "count_dead", None)
        if codes and count_dead is not None:
            await self._retry("counting dead letters in Redis", lambda: count_dead(codes))
        push_dead = getattr(self.writer, "push_dead", None)  # the bounded list the dashboard shows
        if dead and push_dead is not None:
            await self._retry("keeping recent dead letters in Redis", lambda: push_dead([d.dead for d in dead]))

    async def _retry(self, what: str, fn: Callable[[], Awaitable[Any]]) -> None:
        attempt = 0
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                if self.policy.is_permanent(exc):
                    self.counters.skip(self.name)
                    log.error("SKIPPED: %s refused for good (%s: %s)", what, type(exc).__name__, exc)
                    return
                self.counters.retry(self.name)
                log.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
                await asyncio.sleep(self.policy.backoff(attempt))
                attempt += 1

    async def _write(self, pending: list[OutResult]) -> None:
        attempt = 0
        while pending:
            try:
                await self.writer.write([self._item(r) for r in pending])
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                error: BaseException = exc
            if self.policy.is_permanent(error):
                pending = await self._one_by_one(pending)
                if not pending:
                    return
            self.counters.retry(self.name)
            log.warning("writing %d results to Redis failed (%s: %s); retrying", len(pending), type(error).__name__, error)
            await asyncio.sleep(self.policy.backoff(attempt))
            attempt += 1

    async def _one_by_one(self, items: list[OutResult]) -> list[OutResult]:
        """Write post by post; skip the ones Redis refuses for good; return those to retry."""
        retry: list[OutResult] = []
        for r in items:
            try:
                await self.writer.write([self._item(r)])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                if self.policy.is_permanent(exc):
                    self.counters.skip(self.name)
                    log.error("SKIPPED: Redis refused the result of %s for good (%s: %s); it is on the output topic",
                              r.result.id, type(exc).__name__, exc)  # fmt: skip
                else:
                    retry.append(r)
        return retry


def _short(key: bytes, n: int = 80) -> str:
    text = key[:n].decode("utf-8", "replace")
    return text + (f"... ({len(key)} bytes)" if len(key) > n else "")


__all__ = ["RetryPolicy", "Sink", "KafkaSink", "RedisSink"]
