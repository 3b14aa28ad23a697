"""The Redis key layout, TTLs and idempotent writes, on a real Valkey."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from stream.protocol import SentimentResult
from stream.store import KeyLayout, ResultStore


def _r(pid: str, label: str = "positive", aspect: str | None = None, version: str = "1") -> SentimentResult:
    probs = {"positive": 0.1, "neutral": 0.1, "negative": 0.1}
    probs[label] = 0.8
    return SentimentResult(
        id=pid, aspect=aspect, label=label, confidence=0.8, probabilities=probs,
        chain={"text_analysis": "t", "image_analysis": "i", "conflict_resolution": "c", "final_conclusion": "f",
               "prediction": label},
        model_name="m", model_version=version, timings={"queued_ms": 0, "inference_ms": 0, "end_to_end_ms": 0},
        processed_at=datetime.now(UTC),
    )  # fmt: skip


@pytest.fixture
def store(services):  # type: ignore[no-untyped-def]
    _, redis = services
    layout = KeyLayout(prefix=f"t{uuid.uuid4().hex[:6]}:", result_ttl_s=300, recent_max=5, aspect_recent_max=3,
                       count_windows_s=[60, 3600], count_retention=10)  # fmt: skip
    s = ResultStore(redis.url, layout)
    yield s
    s.close()


def _snapshot(store: ResultStore) -> dict:
    c = store.client
    out = {}
    for key in c.scan_iter(match=store.layout.prefix + "*"):
        t = c.type(key).decode()
        if t == "string":
            out[key] = c.get(key)
        elif t == "zset":
            out[key] = c.zrange(key, 0, -1, withscores=True)
        elif t == "hash":
            out[key] = c.hgetall(key)
        out[(key, "ttl")] = c.ttl(key) > 0
    return out


def test_layout(store: ResultStore) -> None:
    p = store.layout.prefix
    t = 1_700_000_123_456
    assert store.put(_r("a", aspect="  The Coffee "), event_ms=t)
    c = store.client
    assert c.type(f"{p}result:a") == b"string"
    assert SentimentResult.model_validate_json(c.get(f"{p}result:a")).id == "a"
    assert 0 < c.ttl(f"{p}result:a") <= 300
    assert c.zscore(f"{p}recent", "a") == t
    assert c.zscore(f"{p}aspect:the coffee", "a") == t and 0 < c.ttl(f"{p}aspect:the coffee") <= 300
    sec = t // 1000
    assert c.hgetall(f"{p}counts:60s:{sec - sec % 60}") == {b"positive": b"1"}
    assert c.hgetall(f"{p}counts:3600s:{sec - sec % 3600}") == {b"positive": b"1"}
    assert 0 < c.ttl(f"{p}counts:60s:{sec - sec % 60}") <= 600
    assert [r.id for r in store.by_aspect("the COFFEE")] == ["a"]
    assert store.get("a").label == "positive" and store.get("nope") is None


def test_idempotent_and_bounded(store: ResultStore) -> None:
    for i in range(8):
        store.put(_r(f"p{i}", label=("positive", "neutral", "negative")[i % 3], aspect="x"), event_ms=1_700_000_000_000 + i)
    before = _snapshot(store)
    for i in range(8):  # the same posts again (at-least-once redelivery)
        assert not store.put(_r(f"p{i}", label=("positive", "neutral", "negative")[i % 3], aspect="x"), event_ms=1_700_000_000_000 + i)
    assert _snapshot(store) == before
    assert store.recent_ids(100) == [f"p{i}" for i in range(7, 2, -1)]  # newest 5 kept
    assert [r.id for r in store.by_aspect("x", 100)] == ["p7", "p6", "p5"]  # newest 3 kept


def test_new_model_replaces_and_moves_counters(store: ResultStore) -> None:
    t = 1_700_000_000_000
    store.put(_r("a", label="positive", version="1"), event_ms=t)
    assert store.put(_r("a", label="negative", version="2"), event_ms=t)
    assert store.get("a").label == "negative" and store.get("a").model_version == "2"
    sec = t // 1000
    counts = store.client.hgetall(f"{store.layout.prefix}counts:60s:{sec - sec % 60}")
    assert counts == {b"positive": b"0", b"negative": b"1"}


def test_counts_api(store: ResultStore) -> None:
    now = 1_700_000_000
    store.put(_r("a", label="neutral"), event_ms=now * 1000)
    store.put(_r("b", label="neutral"), event_ms=(now - 60) * 1000)
    got = store.counts(60, last=2, now_s=now)
    assert [c["neutral"] for _, c in got] == [1, 1]
    with pytest.raises(ValueError):
        store.counts(5)


def test_label_first_full_result_replaces_labels_only_never_the_reverse(store: ResultStore) -> None:
    t = 1_700_000_000_000
    label_only = _r("a", label="neutral").model_copy(update={"chain": None})
    full = _r("a", label="neutral")
    assert store.put(label_only, event_ms=t)
    assert store.get("a").chain is None
    assert store.put(full, event_ms=t)  # the chain arrives
    assert store.get("a").chain is not None
    assert not store.put(label_only, event_ms=t)  # a redelivered early label changes nothing
    assert not store.put(full, event_ms=t)
    assert store.get("a").chain is not None
    sec = t // 1000
    assert store.client.hgetall(f"{store.layout.prefix}counts:60s:{sec - sec % 60}") == {b"neutral": b"1"}


def test_dashboard_keys(store: ResultStore) -> None:
    """thumb:{id} and text:{id} with the result's TTL, per-aspect counts, one events entry per
    state change (none for a redelivery), and dead-letter counts."""
    import asyncio

    from stream.store import AsyncResultWriter

    p, c = store.layout.prefix, store.client
    t = 1_700_000_123_456
    jpeg = b"\xff\xd8 a thumbnail"
    assert store.put(_r("a", aspect="Coffee"), event_ms=t, thumbnail=jpeg, text="x" * 5000)
    assert store.put(_r("b"), event_ms=t + 1)
    assert store.thumbnail("a") == jpeg and store.thumbnail("b") is None
    assert 0 < c.ttl(f"{p}thumb:a") <= 300 and 0 < c.ttl(f"{p}text:a") <= 300
    assert len(store.text("a")) == 1000 and store.text("a").endswith("\u2026") and store.text("b") is None
    sec = t // 1000
    assert c.hgetall(f"{p}acounts:60s:{sec - sec % 60}:coffee") == {b"positive": b"1"}
    assert store.counts(60, 1, now_s=sec, aspect="COFFEE")[0][1]["positive"] == 1
    assert store.counts(60, 1, now_s=sec)[0][1]["positive"] == 2
    assert [pid for _, pid in store.events_after("0")] == ["a", "b"]
    last = store.last_event_id()
    assert not store.put(_r("a", aspect="Coffee"), event_ms=t, thumbnail=jpeg)  # redelivery: no new event
    assert store.put(_r("a", label="negative", aspect="Coffee", version="2"), event_ms=t)  # new model: one event
    assert [pid for _, pid in store.events_after(last)] == ["a"]
    assert c.hgetall(f"{p}acounts:60s:{sec - sec % 60}:coffee") == {b"positive": b"0", b"negative": b"1"}

    async def count() -> None:
        w = AsyncResultWriter(store_url(store), store.layout)
        await w.count_dead({"invalid_json": 2, "schema": 1, "model_error": 0})
        await w.count_dead({"invalid_json": 1})
        await w.aclose()

    asyncio.run(count())
    assert store.dead_letter_counts() == {"invalid_json": 3, "schema": 1}


def store_url(store: ResultStore) -> str:
    kw = store.client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


def test_both_faces_read_the_same_and_clamp_counts(store: ResultStore) -> None:
    """The sync face (the CLI) and the async face (mulcot serve) run the one read model: the
    same results, filters and counts; a negative count reads as 0 and unknown keys are ignored
    by both."""
    import asyncio

    import redis.asyncio as aioredis

    from stream.store import AsyncResultStore

    now = 1_700_000_000
    for i, label in enumerate(["positive", "negative", "positive", "neutral"]):
        store.put(_r(f"f{i}", label=label, aspect="Tea" if i % 2 else None), event_ms=(now - 10 + i) * 1000, text=f"t{i}")
    bucket = store.layout.counts(60, now - now % 60)
    store.client.hset(bucket, mapping={"neutral": -3, "bogus": 7})

    async def read_async():  # type: ignore[no-untyped-def]
        client = aioredis.from_url(store_url(store))
        try:
            a = AsyncResultStore(client, store.layout)
            return (await a.run(a.reads.counts(60, 1, now_s=now)), [it.post_id for it in await a.run(a.reads.newest(10, label="positive"))],
                    [it.post_id for it in await a.run(a.reads.newest(10, aspect="TEA"))])  # fmt: skip
        finally:
            await client.aclose()

    counts, positive, tea = asyncio.run(read_async())
    assert counts == store.counts(60, 1, now_s=now) == [(now - now % 60, {"positive": 2, "neutral": 0, "negative": 1})]
    assert positive == [r.id for r in store.matching(10, label="positive")] == ["f2", "f0"]
    assert tea == [r.id for r in store.by_aspect("tea")] == ["f3", "f1"]
    entries = store.events_after("0")
    assert [r.id for r in store.new_results(entries + entries[:1], label="positive")] == ["f2", "f0"]
    assert store.indexed() == 4 and store.aspects() == ["tea"]


def _alert(n: int):  # type: ignore[no-untyped-def]
    from stream.protocol import Alert, AlertFigures

    fig = AlertFigures(start_ms=n * 600_000, end_ms=(n + 1) * 600_000, count=30, positive=5, neutral=4, negative=21, share=0.7, per_hour=180)
    return Alert(id=f"negative_shift:600s:{n * 600_000}:aspect:tea", kind="negative_shift", scope="tea", aspect="tea", window_s=600,
                 window_start_ms=n * 600_000, window_end_ms=(n + 1) * 600_000, observed=fig, baseline=fig, expected=6.0,
                 effect=0.5, p_value=1e-9, q_value=1e-8, test="t", examples=["f0"])  # fmt: skip


def test_both_faces_read_the_same_alerts(store: ResultStore) -> None:
    """The alert reads are the read model's too: the newest alerts, one alert, the counts
    apart and the alerts:events follow agree on both faces; an announced alert that expired is
    left out of the follow, and its entry still moves the reader on."""
    import asyncio

    import redis.asyncio as aioredis

    from stream.alerts import AlertConfig, RedisState
    from stream.store import AsyncResultStore

    state = RedisState(store_url(store), store.layout, AlertConfig())
    try:
        alerts = [_alert(n) for n in (1, 2, 3)]
        for a in alerts:
            assert state.put_alert(a)[0]
        state.count_rejected({"invalid": 2})
    finally:
        state.close()
    store.client.delete(store.layout.alert(alerts[2].id))  # announced, then expired

    async def read_async():  # type: ignore[no-untyped-def]
        client = aioredis.from_url(store_url(store))
        try:
            a = AsyncResultStore(client, store.layout)
            return (await a.run(a.reads.alerts_page(10)), await a.run(a.reads.alert_events_after("0-0", None)),
                    await a.run(a.reads.last_alert_event_id()))  # fmt: skip
        finally:
            await client.aclose()

    (last, raws, apart), follow, newest = asyncio.run(read_async())
    assert [r.id for r in store.alerts(10)] == [a.id for a in alerts[1::-1]] == [json.loads(r)["id"] for r in raws]
    assert store.alert(alerts[0].id) == alerts[0] and store.alert(alerts[2].id) is None
    assert apart == store.alert_counts() == {"rejected_invalid": 2}
    assert last == newest == follow[-1][0] and follow[-1][1] == b""  # the expired one: its entry id, no alert
    assert [json.loads(r)["id"] for _, r in follow[:-1]] == [a.id for a in alerts[:2]]
    assert store.run(store.reads.alert_events_after(newest, None)) == []
