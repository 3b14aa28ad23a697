"""The poison record of issue 13: a 4.5 MB key with a value that is not JSON, on every
partition, followed by valid posts. Before the fix its ~9 MB dead letter was refused by the
producer and the batch was re-sent forever (duplicated results, stalled partitions)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter

from stream.kafka import producer
from stream.protocol import DeadLetter, ErrorCode
from tests.support.stream_helpers import create_topics, post, produce, read_topic, wait_redis

BIG_KEY = b"K" * (4_500_000)


def send_poison_then_posts(settings, n_per_partition: int, prefix: str = "v") -> list[str]:  # type: ignore[no-untyped-def]
    """One poison record on each partition, then ``n_per_partition`` valid posts on each."""

    async def run() -> list[str]:
        prod = producer(settings)
        await prod.start()
        ids = []
        try:
            for p in range(settings.partitions):
                await (await prod.send(settings.input_topic, key=BIG_KEY, value=b"\x00 not json at all", partition=p))
            futs = []
            for p in range(settings.partitions):
                for i in range(n_per_partition):
                    key, value = post(f"{prefix}{p}-{i}")
                    futs.append(await prod.send(settings.input_topic, key=key, value=value, partition=p))
                    ids.append(key.decode())
            await asyncio.gather(*futs)
        finally:
            await prod.stop()
        return ids

    return asyncio.run(run())


def test_oversized_key_record_does_not_stall_any_partition(make_settings, start_worker) -> None:
    s = make_settings(max_batch=16, partitions=4)
    create_topics(s)
    worker = start_worker(s)
    produce(s, [post("first")])  # the worker is up and has its partitions
    assert not wait_redis(s, ["first"], timeout=90, worker=worker), worker.tail()
    t0 = time.monotonic()
    ids = send_poison_then_posts(s, 10)
    missing = wait_redis(s, ids, timeout=30, worker=worker)
    took = time.monotonic() - t0
    assert not missing, f"{len(missing)} posts stalled behind the poison records: {sorted(missing)[:8]}\n{worker.tail()}"

    dl = [DeadLetter.model_validate_json(m.value) for m in read_topic(s, s.dlq_topic, 4, timeout=20)]
    assert sorted(d.source.partition for d in dl) == [0, 1, 2, 3]
    for d in dl:
        assert d.error is ErrorCode.INVALID_JSON and d.key is None
        assert d.oversized_key.size == len(BIG_KEY) and d.oversized_key.sha256 == hashlib.sha256(BIG_KEY).hexdigest()
        assert d.oversized_key.ref == f"kafka://{s.input_topic}/{d.source.partition}/{d.source.offset}"
        assert d.original.data_b64 is not None  # the small value stays inline
    time.sleep(1.0)  # let any duplicate that a retry would send arrive
    out = read_topic(s, s.output_topic, len(ids) + 1, timeout=5)
    counts = Counter(m.key.decode() for m in out)
    assert set(counts) == set(ids) | {"first"} and max(counts.values()) == 1, counts.most_common(3)
    assert worker.alive() and "SKIPPED" not in worker.tail(400)
    # operator feedback: warmed before joining the group, then one line per batch
    log = worker.log.read_text(errors="replace")
    assert log.index("loaded and warmed") < log.index("ready: joined group") < log.index("batch: ")
    assert "dead letters, model " in log and "end-to-end ms p50" in log
    assert took < 30, took
    assert worker.stop() == 0
