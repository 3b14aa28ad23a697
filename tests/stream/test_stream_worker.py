"""The worker end to end: real Tansu, real Valkey, the worker as a subprocess (noop student)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import signal
import time

from PIL import Image

from stream.protocol import DeadLetter, ErrorCode, SentimentResult
from stream.store import ResultStore
from tests.support.stream_helpers import (
    Feeder,
    ImageServer,
    committed_total,
    create_topics,
    png_b64,
    post,
    produce,
    read_topic,
    results_by_worker,
    wait_redis,
    wait_until,
)


def _bomb_png_b64() -> str:
    """A tiny PNG that decodes to 12000 x 12000 pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (12000, 12000), 0).save(buf, "PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def test_happy_path_and_every_dead_letter_code(make_settings, start_worker) -> None:
    srv = ImageServer()
    try:
        s = make_settings(
            image_allow_private_hosts=True,  # the image server is on loopback
            image_host_allowlist=["127.0.0.1"],
            image_max_bytes=200_000,
            image_max_pixels=50_000_000,
            max_batch=16,
            image_decode="full",  # decode pixels although the no-op student does not read them
        )
        create_topics(s)
        worker = start_worker(s)
        img = png_b64()
        good = []
        for i in range(30):
            kind = i % 3
            if kind == 0:
                good.append(post(i, image_b64=img))
            elif kind == 1:
                good.append(post(i, aspect=f"aspect {i % 2}"))
            else:
                good.append(post(i, image_url=f"http://127.0.0.1:{srv.port}/ok.png", aspect="coffee"))
        bad = [
            (b"k-json", b"{this is not json", ErrorCode.INVALID_JSON),
            (b"k-array", b"[1, 2, 3]", ErrorCode.INVALID_JSON),
            (b"k-schema", json.dumps({"text": "no id"}).encode(), ErrorCode.SCHEMA),
            (b"k-long", json.dumps({"id": "long", "text": "x" * 10_001}).encode(), ErrorCode.SCHEMA),
            (b"k-ver", json.dumps({"id": "v9", "text": "hi", "schema_version": 9}).encode(), ErrorCode.UNSUPPORTED_VERSION),
            (b"k-b64", json.dumps({"id": "b64", "text": "hi", "image_b64": "***"}).encode(), ErrorCode.SCHEMA),
            (b"k-bytes", json.dumps({"id": "bytes", "text": "hi", "image_b64": base64.b64encode(b"x" * 250_000).decode()}).encode(), ErrorCode.IMAGE_TOO_LARGE),
            (b"k-bomb", json.dumps({"id": "bomb", "text": "hi", "image_b64": _bomb_png_b64()}).encode(), ErrorCode.IMAGE_TOO_LARGE),
            (b"k-junk", json.dumps({"id": "junk", "text": "hi", "image_b64": base64.b64encode(b"not an image").decode()}).encode(), ErrorCode.IMAGE_UNREADABLE),
            (b"k-404", json.dumps({"id": "f404", "text": "hi", "image_url": f"http://127.0.0.1:{srv.port}/missing"}).encode(), ErrorCode.IMAGE_FETCH_FAILED),
            (b"k-big", json.dumps({"id": "fbig", "text": "hi", "image_url": f"http://127.0.0.1:{srv.port}/big"}).encode(), ErrorCode.IMAGE_TOO_LARGE),
            (b"k-ftp", json.dumps({"id": "ftp", "text": "hi", "image_url": "ftp://127.0.0.1/x.png"}).encode(), ErrorCode.IMAGE_URL_FORBIDDEN),
            (b"k-host", json.dumps({"id": "host", "text": "hi", "image_url": f"http://localhost:{srv.port}/ok.png"}).encode(), ErrorCode.IMAGE_URL_FORBIDDEN),
            (b"k-file", json.dumps({"id": "file", "text": "hi", "image_url": "file:///etc/hostname"}).encode(), ErrorCode.IMAGE_URL_FORBIDDEN),
        ]  # fmt: skip
        # bad records in the middle: the worker must keep going
        records = good[:15] + [(k, v) for k, v, _ in bad] + good[15:]
        produce(s, records)
        ids = [k.decode() for k, _ in good]
        missing = wait_redis(s, ids, timeout=90, worker=worker)
        assert not missing, f"no result for {sorted(missing)}\n{worker.tail()}"

        out = read_topic(s, s.output_topic, len(good))
        results = {m.key.decode(): SentimentResult.model_validate_json(m.value) for m in out}
        assert set(results) == set(ids)
        for key, r in results.items():
            assert r.id == key
            assert r.chain is not None and r.chain.prediction == r.label
            assert r.model_name == "noop"
            assert abs(sum(r.probabilities.model_dump().values()) - 1) < 1e-6
            assert r.source is not None and r.source.topic == s.input_topic
        assert results["p1"].aspect == "aspect 1" and not results["p1"].has_image
        assert results["p0"].has_image and results["p2"].has_image
        store = ResultStore.from_settings(s)
        try:  # the sink stores a small JPEG of each image (inline and fetched); none for text-only posts
            assert store.thumbnail("p0")[:2] == b"\xff\xd8" and store.thumbnail("p2")[:2] == b"\xff\xd8"
            assert store.thumbnail("p1") is None
            assert store.text("p1") == "post number 1: a sunny day"  # the post's text beside the result
            assert int(store.client.hget(store.layout.dead_letters, "invalid_json")) == 2
        finally:
            store.close()

        dl_msgs = read_topic(s, s.dlq_topic, len(bad))
        by_key = {}
        for m in dl_msgs:
            d = DeadLetter.model_validate_json(m.value)
            by_key[d.key] = d
        assert len(by_key) == len(bad), sorted(by_key)
        originals = {k.decode(): v for k, v, _ in bad}
        for key, _, code in bad:
            d = by_key[key.decode()]
            assert d.error is code, (key, d.error, d.message)
            assert d.message
            assert d.source.topic == s.input_topic and d.source.offset >= 0
            raw = originals[key.decode()]
            assert d.original.size == len(raw) and d.original.sha256 == hashlib.sha256(raw).hexdigest()
            if len(raw) <= s.dlq_inline_max_bytes:
                assert base64.b64decode(d.original.data_b64) == raw
            else:  # huge originals travel as a reference to the input record
                assert d.original.data_b64 is None
                assert d.original.ref == f"kafka://{s.input_topic}/{d.source.partition}/{d.source.offset}"
        assert by_key["k-schema"].post_id is None and by_key["k-ver"].post_id == "v9"
        assert "id" in by_key["k-schema"].message

        # still alive after all that, and still working
        produce(s, [post("after")])
        assert not wait_redis(s, ["after"], timeout=30, worker=worker)
        assert worker.alive()
        assert worker.stop(signal.SIGTERM) == 0
    finally:
        srv.close()


def test_redis_state_and_metrics(make_settings, start_worker) -> None:
    from stream.services import free_port

    port = free_port()
    s = make_settings(result_ttl_s=120, concurrency=2, metrics_port=port)  # two batches in flight
    create_topics(s)
    worker = start_worker(s)
    produce(s, [post(i, aspect="Coffee " if i % 2 else None) for i in range(20)] + [(b"bad", b"{")])
    ids = [f"p{i}" for i in range(20)]
    assert not wait_redis(s, ids, timeout=60, worker=worker), worker.tail()
    store = ResultStore.from_settings(s)
    try:
        assert set(store.recent_ids(100)) == set(ids)
        assert {r.id for r in store.by_aspect("coffee", 100)} == {f"p{i}" for i in range(1, 20, 2)}
        assert 0 < store.ttl("p3") <= 120
        total = store.counts(60, last=2)
        assert sum(sum(c.values()) for _, c in total) == 20
    finally:
        store.close()
    import httpx

    def metric(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def scraped() -> bool:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return metric(text, "mulcot_results_total{") == 20 and metric(text, "mulcot_dead_letters_total{") == 1

    wait_until(scraped, 30, "Prometheus counters to show 20 results and 1 dead letter", worker)
    # offsets are committed once outputs are durable: all 21 records (20 posts + 1 dead letter)
    wait_until(lambda: committed_total(s) == 21, 30, "the group's committed offsets to reach 21", worker)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'mulcot_dead_letters_total{code="invalid_json"} 1.0' in text
    assert "mulcot_inference_seconds_count" in text and "mulcot_end_to_end_seconds_bucket" in text


def _count(settings) -> int:  # type: ignore[no-untyped-def]
    store = ResultStore.from_settings(settings)
    try:
        return int(store.client.zcard(store.layout.recent))
    finally:
        store.close()


# default run (10-20 s on a quiet 2-core machine): two worker start-ups plus a session timeout: 15-40 s on 2 cores
def test_restart_mid_stream_loses_nothing(make_settings, start_worker) -> None:
    """kill -9 the worker while posts are flowing; a new worker must finish every post."""
    s = make_settings(max_batch=8, max_latency_ms=20, commit_interval_s=0.5, session_timeout_s=3, heartbeat_s=0.5)
    create_topics(s)
    w1 = start_worker(s)
    feed = Feeder(s, rate=100).start()
    try:
        wait_until(lambda: _count(s) >= 40, 60, "40 results from the first worker", w1)
        w1.stop(signal.SIGKILL)  # crash mid-stream: in-flight batches are never acknowledged
        sent_at_crash = len(feed.sent)
        w2 = start_worker(s)
        wait_until(lambda: len(feed.sent) >= sent_at_crash + 100, 60, "100 more posts sent after the crash")
    finally:
        ids = feed.stop()
    missing = wait_redis(s, ids, timeout=90, worker=w2)
    assert not missing, f"{len(missing)} of {len(ids)} posts lost after the restart: {sorted(missing)[:10]}\n{w2.tail()}"
    by_worker = results_by_worker(s, ids)
    assert any(k.endswith(f":{w2.proc.pid}") for k in by_worker), by_worker  # the new worker did part of it
    assert len(by_worker) == 2, by_worker
    out = read_topic(s, s.output_topic, len(ids), timeout=30)
    assert {m.key.decode() for m in out} == set(ids)  # every post on the output topic (duplicates allowed)
    assert _count(s) == len(ids)  # and in Redis exactly once
    assert w2.stop() == 0


# default run (10-20 s on a quiet 2-core machine): two worker start-ups plus two rebalances: 20-40 s on 2 cores
def test_two_workers_share_partitions_through_join_and_leave(make_settings, start_worker) -> None:
    s = make_settings(
        max_batch=8, max_latency_ms=20, commit_interval_s=0.5, partitions=4, session_timeout_s=3, heartbeat_s=0.5
    )
    create_topics(s)
    w1 = start_worker(s)
    feed = Feeder(s, rate=100).start()
    tag2 = None
    try:
        wait_until(lambda: _count(s) >= 20, 60, "20 results from the first worker", w1)
        w2 = start_worker(s)  # join: a rebalance while traffic flows
        tag2 = f":{w2.proc.pid}"
        tag1 = f":{w1.proc.pid}"

        def both_active() -> bool:
            got = results_by_worker(s, list(feed.sent))
            return any(k.endswith(tag2) for k in got) and any(k.endswith(tag1) for k in got)

        wait_until(both_active, 60, "results from both workers", w2)
        sent_when_both = len(feed.sent)
        wait_until(lambda: len(feed.sent) >= sent_when_both + 50, 30, "50 more posts with both workers up")
        assert w1.stop(signal.SIGTERM) == 0  # leave: the second worker takes every partition
        sent_at_leave = len(feed.sent)
        wait_until(lambda: len(feed.sent) >= sent_at_leave + 100, 60, "100 more posts after the first worker left")
    finally:
        ids = feed.stop()
    missing = wait_redis(s, ids, timeout=90, worker=w2)
    assert not missing, f"{len(missing)} of {len(ids)} posts lost: {sorted(missing)[:10]}\n{w2.tail()}"
    after_leave = results_by_worker(s, ids[sent_at_leave:])
    assert set(after_leave) == {k for k in after_leave if k.endswith(tag2)}, after_leave  # only w2 is left
    assert len(results_by_worker(s, ids)) == 2
    assert _count(s) == len(ids)
    assert w2.stop() == 0


def test_redis_outage_holds_offsets_until_written(make_settings, start_worker, tmp_path) -> None:
    """Redis down: the worker retries the batch (back-pressure: no later batch is taken and no
    offset is committed past it) and keeps running; when Redis is back, every post is written."""
    from stream.services import EmbeddedRedis

    own = EmbeddedRedis(log_dir=tmp_path).start()
    try:
        s = make_settings(redis_url=own.url, max_batch=8)
        create_topics(s)
        w = start_worker(s)
        produce(s, [post(i) for i in range(10)])
        assert not wait_redis(s, [f"p{i}" for i in range(10)], timeout=60, worker=w), w.tail()
        own.stop()
        produce(s, [post(i) for i in range(10, 30)])
        wait_until(lambda: "writing" in w.tail(200) and "failed" in w.tail(200), 60, "the worker to retry Redis", w)
        time.sleep(2)
        assert w.alive()  # retrying, not crashed
        own = EmbeddedRedis(port=own.port, log_dir=tmp_path).start()  # empty: memory only
        missing = wait_redis(s, [f"p{i}" for i in range(10, 30)], timeout=60, worker=w)
        assert not missing, f"{sorted(missing)}\n{w.tail()}"
        assert w.stop() == 0
    finally:
        own.stop()


def test_label_first_mode(make_settings, start_worker) -> None:
    """MULCOT_LABEL_FIRST: each post gets a labels-only record, then the full one (same key);
    Redis ends with the full results."""
    s = make_settings(label_first=True, max_batch=8)
    create_topics(s)
    worker = start_worker(s)
    n = 12
    produce(s, [post(i, image_b64=png_b64()) for i in range(n)])
    ids = [f"p{i}" for i in range(n)]
    assert not wait_redis(s, ids, timeout=60, worker=worker), worker.tail()
    out = read_topic(s, s.output_topic, 2 * n)
    by_key: dict[str, list[SentimentResult]] = {}
    for m in out:  # per key, in partition (publish) order
        by_key.setdefault(m.key.decode(), []).append(SentimentResult.model_validate_json(m.value))
    assert set(by_key) == set(ids)
    for key, recs in by_key.items():
        assert recs[0].chain is None and recs[-1].chain is not None, key
        assert recs[0].label == recs[-1].label
    store = ResultStore.from_settings(s)
    try:
        wait_until(lambda: all(store.get(i).chain is not None for i in ids), 30, "full results in Redis", worker)
    finally:
        store.close()


# default run (10-20 s on a quiet 2-core machine): builds a tiny random Qwen2.5-VL and runs it on CPU: about a minute on 2 cores
def test_worker_with_a_real_torch_student(make_settings, start_worker, tmp_path) -> None:
    """The worker with a real (tiny, random) HF student: torch runs in the model thread while
    the Faust loop keeps the group alive; every post gets a label with a chain."""
    from model.backends.tiny.build import build_tiny_qwen2_5_vl

    path = build_tiny_qwen2_5_vl(tmp_path / "tiny-qwen")
    s = make_settings(model_spec=f"hf:{path}", max_batch=4, max_latency_ms=100)
    create_topics(s)
    worker = start_worker(s)
    n = 6
    produce(s, [post(i, image_b64=png_b64((64, 48))) if i % 2 else post(i, aspect="sun") for i in range(n)])
    ids = [f"p{i}" for i in range(n)]
    assert not wait_redis(s, ids, timeout=240, worker=worker), worker.tail()
    store = ResultStore.from_settings(s)
    try:
        for i in ids:
            r = store.get(i)
            assert r.model_name.startswith("hf:") and r.chain is not None and r.chain.prediction == r.label
            assert r.chain.raw  # the model really generated text
    finally:
        store.close()
    assert worker.stop() == 0
    log = worker.tail(10_000)  # issue 23: no library progress bars or load-time warnings in the worker's log
    assert "Loading weights" not in log and "it/s]" not in log and "[transformers]" not in log, log[:3000]


# default run (about 20-30 s on 2 cores): the tiny Qwen2.5-VL again, with the batched engine on
def test_worker_overlaps_batches_on_a_thread_safe_engine_student(make_settings, start_worker, tmp_path) -> None:
    """An HF student with the batched engine takes calls from several threads (thread_safe), so
    the worker gives it one model thread per batch in flight: with concurrency 2, two Kafka
    batches share the engine's slots; every post still gets its label and chain."""
    from model.backends.tiny.build import build_tiny_qwen2_5_vl

    path = build_tiny_qwen2_5_vl(tmp_path / "tiny-qwen")
    s = make_settings(model_spec=f"hf:{path}", max_batch=3, max_latency_ms=100, concurrency=2)
    create_topics(s)
    worker = start_worker(s, MULCOT_ENGINE="on", MULCOT_ENGINE_SLOTS="4")
    n = 8
    produce(s, [post(i, image_b64=png_b64((64, 48))) if i % 2 else post(i, aspect="sun") for i in range(n)])
    ids = [f"p{i}" for i in range(n)]
    assert not wait_redis(s, ids, timeout=240, worker=worker), worker.tail()
    assert "model threads: 2 (student is thread-safe, concurrency 2)" in worker.log.read_text(), worker.tail()
    store = ResultStore.from_settings(s)
    try:
        for i in ids:
            r = store.get(i)
            assert r.chain is not None and r.chain.prediction == r.label and r.chain.raw
    finally:
        store.close()
    assert worker.stop() == 0


def test_model_threads_follow_the_students_thread_safety(make_settings) -> None:
    """One model thread for a student that is not thread-safe, whatever the concurrency."""
    from types import SimpleNamespace

    from stream.app import model_threads

    s = make_settings(concurrency=3)
    assert model_threads(SimpleNamespace(), s) == 1
    assert model_threads(SimpleNamespace(thread_safe=False), s) == 1
    assert model_threads(SimpleNamespace(thread_safe=True), s) == 3
    assert model_threads(SimpleNamespace(thread_safe=True), make_settings(concurrency=1)) == 1
