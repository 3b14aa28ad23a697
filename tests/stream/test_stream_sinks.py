"""The sinks, driven by the one delivery component, against the real broker and cache: a
record refused for good becomes a bounded dead letter or is skipped (logged, counted),
acknowledged records are never re-sent, and a result Redis refuses for good does not block
the others."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from stream.delivery import SINKS, Delivery, build_sinks
from stream.kafka import producer
from stream.messages import InRecord, OutResult, dead_letter
from stream.protocol import DeadLetter, ErrorCode, Probabilities, SentimentResult, Timings
from stream.sinks import KafkaSink, RedisSink, RetryPolicy, SinkContext
from stream.store import AsyncResultWriter, KeyLayout, ResultStore
from tests.support.stream_helpers import create_topics, read_topic


class Counts:
    def __init__(self) -> None:
        self.retries: Counter[str] = Counter()
        self.skips: Counter[str] = Counter()

    def retry(self, sink: str) -> None:
        self.retries[sink] += 1

    def skip(self, sink: str) -> None:
        self.skips[sink] += 1


def _result(i: int, topic: str, pad: int = 0, aspect: str | None = None) -> OutResult:
    rec = InRecord(json.dumps({"id": f"p{i}", "text": "x"}).encode(), f"p{i}".encode(), topic, i % 4, i, int(time.time() * 1000))
    r = SentimentResult(
        id=f"p{i}", aspect=aspect, label="neutral", confidence=0.5,
        probabilities=Probabilities(positive=0.25, neutral=0.5, negative=0.25), chain=None,
        model_name="noop", model_version="1", timings=Timings(queued_ms=0, inference_ms=0, end_to_end_ms=0),
        processed_at="2026-11-29T00:00:00Z", worker="w" + "x" * pad,
    )  # fmt: skip
    return OutResult(r.id.encode(), r.model_dump_json().encode(), r, int(time.time() * 1000), rec)


def test_refused_records_become_bounded_dead_letters_or_are_skipped(make_settings) -> None:
    s = make_settings()
    create_topics(s)
    counts = Counts()

    async def run(max_request: int, results, dead) -> None:  # type: ignore[no-untyped-def]
        prod = producer(s, max_request_size=max_request)
        await prod.start()
        try:
            sink = KafkaSink(lambda t, k, v: prod.send(t, key=k, value=v), s.output_topic, s.dlq_topic)
            await asyncio.wait_for(Delivery([sink], counters=counts).deliver(results, dead), 30)
        finally:
            await prod.stop()

    # a 40 KB result among small ones, producer limit 20 KB: the big one becomes a
    # publish_failed dead letter, the others are published once each
    small = [_result(i, s.input_topic) for i in range(6)]
    big = _result(99, s.input_topic, pad=40_000)
    asyncio.run(run(20_000, small[:3] + [big] + small[3:], []))
    out = read_topic(s, s.output_topic, 6, timeout=15)
    assert Counter(m.key.decode() for m in out) == {f"p{i}": 1 for i in range(6)}  # each once: no re-sends
    dl = [DeadLetter.model_validate_json(m.value) for m in read_topic(s, s.dlq_topic, 1, timeout=15)]
    assert [(d.error, d.post_id) for d in dl] == [(ErrorCode.PUBLISH_FAILED, "p99")]
    assert "MessageSizeTooLarge" in dl[0].message and dl[0].original.ref.startswith("kafka://")
    assert not counts.skips and not counts.retries

    # a dead letter with a 4 MB key: bounded when built (sha256 + reference), it fits
    rec = InRecord(b"\xff not json", b"k" * 4_000_000, s.input_topic, 2, 7, None)
    d = dead_letter(rec, ErrorCode.INVALID_JSON, "not valid JSON", inline_max=s.dlq_inline_max_bytes)
    assert len(d.value) < 4000 and d.key == f"{s.input_topic}/2/7".encode()
    assert d.dead.key is None and d.dead.oversized_key.size == 4_000_000
    assert d.dead.oversized_key.ref == f"kafka://{s.input_topic}/2/7"

    # a producer limit below even the bounded dead letter: logged, counted, skipped - not stuck
    asyncio.run(run(300, [], [d]))
    assert counts.skips == {"kafka": 1}


def test_retry_policy_classification() -> None:
    from aiokafka.errors import (
        KafkaConnectionError,
        MessageSizeTooLargeError,
        NotLeaderForPartitionError,
        RequestTimedOutError,
    )
    from faust.exceptions import ProducerSendError
    from redis.exceptions import BusyLoadingError, ReadOnlyError, ResponseError
    from redis.exceptions import ConnectionError as RConnError

    p = RetryPolicy()
    wrapped = ProducerSendError("Error while sending")
    wrapped.__cause__ = MessageSizeTooLargeError()
    assert p.is_permanent(wrapped) and p.is_permanent(MessageSizeTooLargeError())
    for exc in (KafkaConnectionError(), NotLeaderForPartitionError(), RequestTimedOutError(), TimeoutError(),
                RConnError("refused"), BusyLoadingError(), ReadOnlyError("replica"),
                ResponseError("OOM command not allowed when used memory > 'maxmemory'")):  # fmt: skip
        assert not p.is_permanent(exc), exc
    assert p.is_permanent(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))
    assert [p.backoff(a) for a in (0, 1, 2, 10)] == [0.2, 0.4, 0.8, 5.0]


def test_redis_refusal_skips_only_the_refused_results(make_settings) -> None:
    s = make_settings()
    layout = KeyLayout.from_settings(s)
    store = ResultStore.from_settings(s)
    store.client.hset(layout.result("p2"), "a", "hash where a string belongs")  # WRONGTYPE for p2, every time
    counts = Counts()
    items = [_result(i, s.input_topic, aspect="fine") for i in range(5)]

    async def run() -> None:
        writer = AsyncResultWriter(s.redis_url_value, layout)
        try:
            await asyncio.wait_for(Delivery([RedisSink(writer)], counters=counts).deliver(items), 20)
        finally:
            await writer.aclose()

    try:
        asyncio.run(run())
        assert {r.id for r in store.by_aspect("fine", 10)} == {"p0", "p1", "p3", "p4"}
        assert counts.skips == {"redis": 1} and not counts.retries
    finally:
        store.close()


def test_a_retry_resends_only_the_records_kafka_did_not_acknowledge(make_settings) -> None:
    """The real producer, with a fault injected in front of it: the first attempt of two
    records fails with a retriable error (a timed-out request). The retry sends those two
    only, so every record is on the topic exactly once."""
    from aiokafka.errors import RequestTimedOutError

    s = make_settings()
    create_topics(s)
    counts = Counts()
    failed_once: set[bytes] = set()

    async def run() -> None:
        prod = producer(s)
        await prod.start()

        async def flaky_send(topic: str, key: bytes, value: bytes):  # type: ignore[no-untyped-def]
            if key in (b"p2", b"p5") and key not in failed_once:
                failed_once.add(key)
                raise RequestTimedOutError()
            return await prod.send(topic, key=key, value=value)

        try:
            sink = KafkaSink(flaky_send, s.output_topic, s.dlq_topic)
            delivery = Delivery([sink], counters=counts, policy=RetryPolicy(base_s=0.05))
            await asyncio.wait_for(delivery.deliver([_result(i, s.input_topic) for i in range(8)]), 30)
        finally:
            await prod.stop()

    asyncio.run(run())
    out = read_topic(s, s.output_topic, 9, timeout=3)  # one more than expected: waits the full 3 s for extras
    assert Counter(m.key.decode() for m in out) == {f"p{i}": 1 for i in range(8)}
    assert failed_once == {b"p2", b"p5"} and counts.retries == {"kafka": 1} and not counts.skips


def test_sinks_only_write_and_report_failures(make_settings) -> None:
    """A sink writes each item once and reports the refused one with its error; it neither
    retries nor falls back (the delivery does). The registry builds both sinks from settings."""
    s = make_settings()
    layout = KeyLayout.from_settings(s)
    store = ResultStore.from_settings(s)
    store.client.hset(layout.result("p1"), "a", "hash where a string belongs")
    items = [_result(i, s.input_topic) for i in range(3)]

    async def run():  # type: ignore[no-untyped-def]
        writer = AsyncResultWriter(s.redis_url_value, layout)
        try:
            sinks = build_sinks(SinkContext(s, send=lambda t, k, v: None, writer=writer))
            assert [x.name for x in sinks] == ["kafka", "redis"] and len(SINKS) == 2
            return await RedisSink(writer).write(items)
        finally:
            await writer.aclose()

    try:
        failed = asyncio.run(run())
        assert [f.item.result.id for f in failed] == ["p1"] and "WRONGTYPE" in str(failed[0].error)
        assert RetryPolicy().is_permanent(failed[0].error)
        assert store.get("p0") is not None and store.get("p2") is not None
    finally:
        store.close()


def test_a_failing_step_is_retried_until_it_succeeds() -> None:
    from stream.delivery import until_done

    calls: list[int] = []
    seen: list[str] = []

    async def step() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("model server down")
        return "done"

    got = asyncio.run(until_done(RetryPolicy(base_s=0.01), "step", step, on_retry=lambda e: seen.append(str(e))))
    assert got == "done" and len(calls) == 3 and seen == ["model server down"] * 2


def test_delivery_retries_falls_back_and_skips_for_any_sink() -> None:
    """The one mechanism, for a sink that is neither Kafka nor Redis: a transient failure is
    retried (only that item), a permanent one is replaced by the sink's fallback, and an item
    whose fallback is refused too is skipped and counted - the sink itself only writes."""
    from redis.exceptions import ResponseError

    from stream.sinks import BaseSink, Failed

    items = [_result(i, "t") for i in range(4)]
    calls: list[list[str]] = []
    flaky = {"p1"}

    class ListSink(BaseSink):
        name = "list"

        def __init__(self) -> None:
            self.written: list[str] = []

        async def write(self, results, dead=()):  # type: ignore[no-untyped-def]
            got = [r.result.id for r in results] + [f"dead:{d.dead.post_id}" for d in dead]
            calls.append(got)
            failed = []
            for item, name in zip([*results, *dead], got):
                if name in flaky:
                    flaky.discard(name)
                    failed.append(Failed(item, ConnectionError("down for a moment")))
                elif name in ("p2", "p3", "dead:p3"):
                    failed.append(Failed(item, ResponseError("WRONGTYPE refused for good")))
                else:
                    self.written.append(name)
            return failed

        def fallback(self, item, error):  # type: ignore[no-untyped-def]
            rec = item.record
            return dead_letter(rec, ErrorCode.PUBLISH_FAILED, str(error), item.result.id, inline_max=0) if rec else None

    sink, counts = ListSink(), Counts()
    asyncio.run(Delivery([sink], counters=counts, policy=RetryPolicy(base_s=0.01)).deliver(items))
    assert sorted(sink.written) == ["dead:p2", "p0", "p1"]  # p3's fallback was refused too: skipped
    assert calls[0] == ["p0", "p1", "p2", "p3"] and calls[1] == ["dead:p2", "dead:p3"] and calls[2] == ["p1"]
    assert counts.retries == {"list": 1} and counts.skips == {"list": 1}
