"""Chaos: the stream under crashes, cache outages, hostile input, a poison record and an
overload burst - real Tansu, real Valkey, real worker processes, the no-op student, sizes
that fit 2 cores. Each test records its figures (``make chaos`` prints them, one per line).
Marked slow: not in the default run."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import time
from collections import Counter

import pytest
from PIL import Image

from stream.protocol import DeadLetter, ErrorCode
from stream.services import EmbeddedRedis
from tests.support.stream_helpers import (
    Feeder,
    ImageServer,
    create_topics,
    png_b64,
    post,
    produce,
    read_topic,
    results_by_worker,
    wait_redis,
    wait_until,
)

pytestmark = pytest.mark.slow


def _rss_peak_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _all_messages(settings, topic: str, seconds: float = 6.0) -> list:  # type: ignore[no-untyped-def]
    """Every record of ``topic`` that a consumer from the start reads in ``seconds``."""
    return read_topic(settings, topic, 10**9, timeout=seconds)


def test_kill9_one_of_two_workers(make_settings, start_worker, figures) -> None:
    """Two workers share the partitions; one of them is killed with SIGKILL three times (and
    replaced each time) while posts flow: every post gets its result."""
    s = make_settings(max_batch=16, max_latency_ms=20, commit_interval_s=0.5, session_timeout_s=3, heartbeat_s=0.5)
    create_topics(s)
    workers = [start_worker(s), start_worker(s)]
    feed = Feeder(s, rate=120).start()
    kills = 0
    try:
        wait_until(lambda: len(results_by_worker(s, list(feed.sent))) == 2, 90, "results from both workers", workers[1])
        for k in range(3):
            sent = len(feed.sent)
            wait_until(lambda sent=sent: len(feed.sent) >= sent + 300, 60, "300 more posts")
            victim = workers[k % 2]
            victim.stop(signal.SIGKILL)
            kills += 1
            workers[k % 2] = start_worker(s)
        sent = len(feed.sent)
        wait_until(lambda: len(feed.sent) >= sent + 200, 60, "200 posts after the last kill")
    finally:
        ids = feed.stop()
    survivor = workers[1] if workers[1].alive() else workers[0]
    missing = wait_redis(s, ids, timeout=120, worker=survivor)
    out = _all_messages(s, s.output_topic)
    per_key = Counter(m.key.decode() for m in out)
    figures("posts", len(ids))
    figures("kill -9 of one of two workers", kills)
    figures("lost (no result in Redis)", len(missing))
    figures("missing on the output topic", len(set(ids) - set(per_key)))
    figures("duplicate results on the output topic (at-least-once)", sum(per_key.values()) - len(per_key))
    assert not missing, sorted(missing)[:10]
    assert set(per_key) >= set(ids)


def test_redis_paused_then_restarted(make_settings, start_worker, tmp_path, figures) -> None:
    """Valkey frozen (SIGSTOP) for 12 s, then killed and started again empty: posts that
    arrive meanwhile are held (offsets not committed) and written once it answers."""
    own = EmbeddedRedis(log_dir=tmp_path).start()
    paused = False
    try:
        s = make_settings(redis_url=own.url, max_batch=16)
        create_topics(s)
        w = start_worker(s)
        produce(s, [post(f"a{i}") for i in range(50)])
        assert not wait_redis(s, [f"a{i}" for i in range(50)], timeout=60, worker=w), w.tail()

        os.kill(own.proc.pid, signal.SIGSTOP)
        paused = True
        during_pause = [post(f"b{i}") for i in range(300)]
        produce(s, during_pause)
        time.sleep(12)
        alive_in_pause = w.alive()
        os.kill(own.proc.pid, signal.SIGCONT)
        paused = False
        t0 = time.monotonic()
        missing_b = wait_redis(s, [f"b{i}" for i in range(300)], timeout=90, worker=w)
        after_resume = time.monotonic() - t0

        own.stop()
        produce(s, [post(f"c{i}") for i in range(300)])
        time.sleep(5)
        alive_in_outage = w.alive()
        own = EmbeddedRedis(port=own.port, log_dir=tmp_path).start()  # empty: memory only
        t0 = time.monotonic()
        missing_c = wait_redis(s, [f"c{i}" for i in range(300)], timeout=90, worker=w)
        after_restart = time.monotonic() - t0
        figures("posts sent while Redis was paused 12 s", 300)
        figures("of those written after it resumed", 300 - len(missing_b))
        figures("seconds from resume to the last of them written", f"{after_resume:.1f}")
        figures("posts sent while Redis was down 5 s", 300)
        figures("of those written after it restarted (empty)", 300 - len(missing_c))
        figures("seconds from restart to the last of them written", f"{after_restart:.1f}")
        figures("worker alive through pause and outage", alive_in_pause and alive_in_outage and w.alive())
        assert not missing_b and not missing_c and alive_in_pause and alive_in_outage
        assert w.stop() == 0
    finally:
        if paused:
            os.kill(own.proc.pid, signal.SIGCONT)
        own.stop()


def _image_b64(fmt: str, size: tuple[int, int] = (20, 20)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, "green").save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _hostile(port: int) -> list[tuple[str, bytes | None, bytes, ErrorCode]]:
    """(kind, key, value, expected code): every class of bad input the worker must dead-letter."""
    j = lambda **kw: json.dumps(kw).encode()  # noqa: E731
    url = f"http://127.0.0.1:{port}"
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000), 0).save(bomb, "PNG", optimize=True)
    E = ErrorCode
    return [
        ("not json", b"h1", b"{this is not json", E.INVALID_JSON),
        ("json array", b"h2", b"[1, 2, 3]", E.INVALID_JSON),
        ("json string", b"h3", b'"just a string"', E.INVALID_JSON),
        ("empty value", b"h4", b"", E.INVALID_JSON),
        ("invalid utf-8", b"h5", b'{"id": "x", "text": "\xff\xfe"}', E.INVALID_JSON),
        ("no key, not json", None, b"\x00\x01", E.INVALID_JSON),
        ("4.5 MB key, not json", b"K" * 4_500_000, b"not json", E.INVALID_JSON),
        ("missing id", b"h6", j(text="no id"), E.SCHEMA),
        ("blank id", b"h7", j(id="   ", text="x"), E.SCHEMA),
        ("id with control chars", b"h8", j(id="a\nb", text="x"), E.SCHEMA),
        ("text over 10,000 chars", b"h9", j(id="h9", text="x" * 10_001), E.SCHEMA),
        ("neither text nor image", b"h10", j(id="h10", text="  "), E.SCHEMA),
        ("both image_b64 and image_url", b"h11", j(id="h11", text="x", image_b64=png_b64(), image_url=f"{url}/ok.png"), E.SCHEMA),
        ("bad base64", b"h12", j(id="h12", text="x", image_b64="***"), E.SCHEMA),
        ("metadata over 4 KB", b"h13", j(id="h13", text="x", metadata={"k": "v" * 5000}), E.SCHEMA),
        ("1 MB value (metadata)", b"h14", j(id="h14", text="x", metadata={f"k{i}": "v" * 30_000 for i in range(34)}), E.SCHEMA),
        ("lone surrogate", b"h15", b'{"id": "h15", "text": "bad \\ud800"}', E.SCHEMA),
        ("wrong types", b"h16", j(id=5, text=["a"]), E.SCHEMA),
        ("schema_version 9", b"h17", j(id="h17", text="x", schema_version=9), E.UNSUPPORTED_VERSION),
        ("image over the byte limit", b"h18", j(id="h18", text="x", image_b64=base64.b64encode(b"x" * 250_000).decode()), E.IMAGE_TOO_LARGE),
        ("decompression bomb", b"h19", j(id="h19", text="x", image_b64=base64.b64encode(bomb.getvalue()).decode()), E.IMAGE_TOO_LARGE),
        ("junk image bytes", b"h20", j(id="h20", text="x", image_b64=base64.b64encode(b"not an image").decode()), E.IMAGE_UNREADABLE),
        ("TIFF image", b"h21", j(id="h21", text="x", image_b64=_image_b64("TIFF")), E.IMAGE_UNREADABLE),
        ("BMP image", b"h22", j(id="h22", text="x", image_b64=_image_b64("BMP")), E.IMAGE_UNREADABLE),
        ("truncated PNG", b"h23", j(id="h23", text="x", image_b64=png_b64()[:60]), E.IMAGE_UNREADABLE),
        ("URL 404", b"h24", j(id="h24", text="x", image_url=f"{url}/missing"), E.IMAGE_FETCH_FAILED),
        ("URL over the byte limit", b"h25", j(id="h25", text="x", image_url=f"{url}/big"), E.IMAGE_TOO_LARGE),
        ("URL refused connection", b"h26", j(id="h26", text="x", image_url="http://127.0.0.1:9/x.png"), E.IMAGE_FETCH_FAILED),
        ("ftp URL", b"h27", j(id="h27", text="x", image_url=f"ftp://127.0.0.1:{port}/x.png"), E.IMAGE_URL_FORBIDDEN),
        ("file URL", b"h28", j(id="h28", text="x", image_url="file:///etc/passwd"), E.IMAGE_URL_FORBIDDEN),
        ("localhost by name", b"h29", j(id="h29", text="x", image_url=f"http://localhost:{port}/forbidden-1"), E.IMAGE_URL_FORBIDDEN),
        ("loopback as a decimal", b"h30", j(id="h30", text="x", image_url=f"http://2130706433:{port}/forbidden-2"), E.IMAGE_URL_FORBIDDEN),
        ("private address", b"h31", j(id="h31", text="x", image_url="http://10.0.0.1/x.png"), E.IMAGE_URL_FORBIDDEN),
        ("cloud metadata address", b"h32", j(id="h32", text="x", image_url="http://169.254.169.254/latest/"), E.IMAGE_URL_FORBIDDEN),
        ("IPv6 loopback", b"h33", j(id="h33", text="x", image_url=f"http://[::1]:{port}/forbidden-3"), E.IMAGE_URL_FORBIDDEN),
        ("redirect to metadata", b"h34", j(id="h34", text="x", image_url=f"{url}/redirect"), E.IMAGE_URL_FORBIDDEN),
        ("javascript URL", b"h35", j(id="h35", text="x", image_url="javascript:alert(1)"), E.IMAGE_URL_FORBIDDEN),
    ]  # fmt: skip


def test_every_hostile_input_class(make_settings, start_worker, figures) -> None:
    srv = ImageServer()
    try:
        s = make_settings(image_allow_private_hosts=True, image_host_allowlist=["127.0.0.1"], image_max_bytes=200_000,
                          image_decode="full", max_batch=16)  # fmt: skip
        create_topics(s)
        w = start_worker(s)
        bad = _hostile(srv.port)
        good = [post(i) for i in range(20)]
        produce(s, good[:10] + [(k, v) for _, k, v, _ in bad] + good[10:])
        assert not wait_redis(s, [k.decode() for k, _ in good], timeout=90, worker=w), w.tail()
        dead = [(m.value, DeadLetter.model_validate_json(m.value)) for m in read_topic(s, s.dlq_topic, len(bad), timeout=30)]
        got: dict[str, ErrorCode] = {}  # by the input key each dead letter names
        for _, d in dead:
            key = d.key if d.key is not None else ("<4.5 MB key>" if d.oversized_key else None)
            got[str(key)] = d.error
        right = 0
        wrong = []
        for kind, key, _, code in bad:
            name = "<4.5 MB key>" if key and len(key) > 1024 else (key.decode() if key else "None")
            if got.get(name) is code:
                right += 1
            else:
                wrong.append((kind, got.get(name), code))
        produce(s, [post("after")])
        assert not wait_redis(s, ["after"], timeout=30, worker=w)
        forbidden_hits = sum(n for path, n in srv.hits.items() if path.startswith("/forbidden") or path == "/latest/")
        figures("hostile records", len(bad))
        figures("dead-letter codes covered", len({code for *_, code in bad}))
        figures("dead letters with the right code", f"{right}/{len(bad)}")
        figures("largest dead letter, bytes", max(len(raw) for raw, _ in dead))
        figures("requests that reached forbidden local URLs", forbidden_hits)
        figures("valid posts around them with results", f"{len(good)}/{len(good)}")
        figures("worker alive after", w.alive())
        assert not wrong, wrong
        assert forbidden_hits == 0 and w.alive()
    finally:
        srv.close()


def test_oversized_key_record_then_valid_posts_on_every_partition(make_settings, start_worker, figures) -> None:
    from tests.stream.test_stream_poison import send_poison_then_posts

    s = make_settings(partitions=4)
    create_topics(s)
    w = start_worker(s)
    produce(s, [post("first")])
    assert not wait_redis(s, ["first"], timeout=90, worker=w), w.tail()
    t0 = time.monotonic()
    ids = send_poison_then_posts(s, 50)
    missing = wait_redis(s, ids, timeout=30, worker=w)
    took = time.monotonic() - t0
    time.sleep(1)
    per_key = Counter(m.key.decode() for m in _all_messages(s, s.output_topic))
    dead = read_topic(s, s.dlq_topic, 4, timeout=10)
    figures("poison records (4.5 MB key, value not JSON), one per partition", 4)
    figures("valid posts behind them", len(ids))
    figures("seconds until every valid post had its result", f"{took:.1f}")
    figures("results missing after 30 s", len(missing))
    figures("duplicate results", sum(per_key.values()) - len(per_key))
    figures("dead letters (bounded)", f"{len(dead)}, largest {max(len(m.value) for m in dead)} bytes")
    assert not missing and took < 30
    assert max(per_key.values()) == 1


def test_overload_burst_bounded_rss(make_settings, start_worker, figures) -> None:
    """2,000 posts with ~20 KB images land at once; the worker drains them with bounded memory."""
    from stream.bench import make_posts

    s = make_settings(partitions=4)
    create_topics(s)
    w = start_worker(s)
    produce(s, [post("first")])
    assert not wait_redis(s, ["first"], timeout=90, worker=w), w.tail()
    rss_idle = _rss_peak_mb(w.pid)
    records = make_posts(2000, 20, prefix="burst")
    t0 = time.monotonic()
    produce(s, records)
    produced = time.monotonic() - t0
    missing = wait_redis(s, [k.decode() for k, _ in records], timeout=180, worker=w)
    drained = time.monotonic() - t0
    peak = _rss_peak_mb(w.pid)
    figures("posts in the burst", f"{len(records)} (~{sum(len(v) for _, v in records) / len(records) / 1024:.0f} KB each)")
    figures("seconds to produce the burst", f"{produced:.1f}")
    figures("seconds until all results were in Redis", f"{drained:.1f}")
    figures("posts/s through the worker (incl. produce)", f"{len(records) / drained:.0f}")
    figures("worker peak RSS MB (idle / after the burst)", f"{rss_idle:.0f} / {peak:.0f}")
    assert not missing
    assert peak < 600, peak


def test_redis_refuses_one_result_for_good(make_settings, start_worker, figures) -> None:
    """A result Redis refuses for good (its key holds a hash: WRONGTYPE on every write) is
    skipped with a log line and a metric; the batch and the ones after it are written."""
    import httpx

    from stream.services import free_port
    from stream.store import ResultStore

    port = free_port()
    s = make_settings(metrics_port=port, max_batch=8)
    create_topics(s)
    store = ResultStore.from_settings(s)
    try:
        store.client.hset(store.layout.result("refused"), "not", "a string")
        w = start_worker(s)
        ids = [f"p{i}" for i in range(30)]
        t0 = time.monotonic()
        produce(s, [post(i) for i in range(15)] + [post("refused")] + [post(i) for i in range(15, 30)])
        missing = wait_redis(s, ids, timeout=90, worker=w)
        took = time.monotonic() - t0

        def skipped() -> float:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith('mulcot_sink_skipped_total{sink="redis"}'))

        wait_until(lambda: skipped() >= 1, 30, "the skip to be counted", w)
        figures("posts around the refused one written to Redis", f"{len(ids) - len(missing)}/{len(ids)} in {took:.1f} s")
        figures("mulcot_sink_skipped_total{sink=redis}", skipped())
        figures("SKIPPED log lines", w.log.read_text(errors="replace").count("SKIPPED: Redis refused"))
        assert not missing and "SKIPPED: Redis refused the result of refused" in w.log.read_text(errors="replace")
        assert w.alive()
    finally:
        store.close()
