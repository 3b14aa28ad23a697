"""The one delivery mechanism: retry, backoff, fallback and skip for every sink.

Sinks (:mod:`stream.sinks`) only write, and report each item they could not write with its
error. :class:`Delivery` drives them, all the same way:

* an item whose error is *retriable* (:meth:`~stream.sinks.RetryPolicy.is_permanent` is
  false: broker or server unavailable, timeouts, not-leader, Redis loading/OOM/read-only,
  connection errors, anything not known to be permanent) is written again, alone with the
  others that failed, after a backoff (0.2 s doubling to 5 s) - until it succeeds, so a batch
  is acknowledged only once its outputs are durable (back-pressure: no new batch meanwhile);
* an item refused *for good* is replaced by the sink's ``fallback`` (Kafka: the record's
  bounded dead letter, which always fits) and that is written instead; when there is none, or
  the fallback is refused for good too, the item is logged (``SKIPPED: ...``), counted in
  ``mulcot_sink_skipped_total{sink=...}`` and given up, so one record never stalls its
  partition.

The waiting is tenacity's (``AsyncRetrying``) with :meth:`RetryPolicy.backoff`; :func:`until_done`
is the same loop for a step that is retried whole (the batch's processing, when the model
server is unreachable).

The sinks a worker writes to are :data:`SINKS`, built from the settings by :func:`build_sinks`:
adding a sink is its module plus one line there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from .messages import OutDead, OutResult
from .sinks import Failed, Item, KafkaSink, RedisSink, RetryPolicy, Sink, SinkContext, item_name

log = logging.getLogger("mulcot.sinks")

T = TypeVar("T")

SINKS: tuple[Callable[[SinkContext], Sink | None], ...] = (
    KafkaSink.from_context,
    RedisSink.from_context,
)
"""Every sink of the worker, as factories of a :class:`~stream.sinks.SinkContext` (one that
returns None is off under these settings)."""


def build_sinks(ctx: SinkContext, factories: Sequence[Callable[[SinkContext], Sink | None]] = SINKS) -> list[Sink]:
    """The sinks of :data:`SINKS` that are on under ``ctx.settings``."""
    return [sink for make in factories if (sink := make(ctx)) is not None]


class Counters(Protocol):
    """Where retries and skips are counted (the worker's Prometheus metrics)."""

    def retry(self, sink: str) -> None: ...

    def skip(self, sink: str) -> None: ...


class NoCounters:
    def retry(self, sink: str) -> None:
        pass

    def skip(self, sink: str) -> None:
        pass


class _Incomplete(Exception):
    """Items of one attempt are left to retry (with the retriable errors they got)."""

    def __init__(self, failed: list[Failed], total: int) -> None:
        super().__init__(f"{len(failed)} of {total} items failed")
        self.failed = failed
        self.total = total


def _retrying(policy: RetryPolicy, before_sleep: Callable[[RetryCallState], None]) -> AsyncRetrying:
    """Retry any exception (not cancellation) forever, waiting ``policy.backoff(attempt)``."""
    return AsyncRetrying(
        retry=retry_if_exception_type(Exception),
        wait=lambda state: policy.backoff(state.attempt_number - 1),
        before_sleep=before_sleep,
        reraise=True,
    )


async def until_done(
    policy: RetryPolicy, what: str, fn: Callable[[], Awaitable[T]], on_retry: Callable[[BaseException], None] | None = None
) -> T:
    """Await ``fn()`` until it succeeds, with backoff (for a step that must not be skipped)."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            if on_retry is not None:
                on_retry(exc)
            log.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)

    async for attempt in _retrying(policy, before_sleep):
        with attempt:
            result = await fn()
    return result


class Delivery:
    """Writes a batch's results and dead letters to every sink (concurrently); returns when
    each sink has written or given up every item (see the module docstring)."""

    def __init__(self, sinks: Sequence[Sink], *, policy: RetryPolicy | None = None, counters: Counters | None = None) -> None:
        self.sinks = list(sinks)
        self.policy = policy or RetryPolicy()
        self.counters = counters or NoCounters()

    async def deliver(self, results: Sequence[OutResult], dead: Sequence[OutDead] = ()) -> None:
        await asyncio.gather(*(self.deliver_to(sink, results, dead) for sink in self.sinks))

    async def deliver_to(self, sink: Sink, results: Sequence[OutResult], dead: Sequence[OutDead] = ()) -> None:
        pending: list[Item] = [*results, *dead]
        fallbacks: set[int] = set()  # id() of the items that are already a fallback

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.counters.retry(sink.name)
            if isinstance(exc, _Incomplete):
                first = exc.failed[0].error
                log.warning("%s: writing %d of %d items failed (%s: %s); retrying those",
                            sink.name, len(exc.failed), exc.total, type(first).__name__, first)  # fmt: skip

        async for attempt in _retrying(self.policy, before_sleep):
            with attempt:
                retry = await self._attempt(sink, pending, fallbacks)
                if retry:
                    total, pending = len(pending), [f.item for f in retry]
                    raise _Incomplete(retry, total)

    async def _attempt(self, sink: Sink, items: list[Item], fallbacks: set[int]) -> list[Failed]:
        """Write ``items`` once (and at once the fallbacks of those refused for good, skipping
        what has none); return the failures to retry."""
        retry: list[Failed] = []
        while items:
            failed = await self._write(sink, items)
            items = []
            for f in failed:
                if not self.policy.is_permanent(f.error):
                    retry.append(f)
                    continue
                fb = None if id(f.item) in fallbacks else sink.fallback(f.item, f.error)
                if fb is not None:
                    log.error("%s refused %s for good (%s: %s); writing its fallback instead",
                              sink.name, item_name(f.item), type(f.error).__name__, f.error)  # fmt: skip
                    fallbacks.add(id(fb))
                    items.append(fb)
                else:
                    self.counters.skip(sink.name)
                    log.error("SKIPPED: %s", sink.skip_message(f.item, f.error))
        return retry

    @staticmethod
    async def _write(sink: Sink, items: list[Item]) -> list[Failed]:
        results = [i for i in items if isinstance(i, OutResult)]
        dead = [i for i in items if isinstance(i, OutDead)]
        try:
            return await sink.write(results, dead)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a sink that raised: every item failed with it
            return [Failed(i, exc) for i in items]


__all__ = ["Delivery", "SINKS", "build_sinks", "until_done", "Counters", "NoCounters"]
