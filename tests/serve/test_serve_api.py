"""``mulcot serve``'s API against a real Valkey filled by the real worker (see conftest)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter

import httpx
import pytest
from PIL import Image

from stream.protocol import SentimentResult
from stream.serve.api import ResultItem, ResultsPage, Stats
from stream.store import ResultStore


@pytest.fixture(scope="module")
def api(served):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=served.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def store(served):  # type: ignore[no-untyped-def]
    s = ResultStore.from_settings(served.settings)
    yield s
    s.close()


def test_health(api) -> None:  # type: ignore[no-untyped-def]
    got = api.get("/api/health").json()
    assert got["status"] == "ok" and got["redis"] == "ok" and got["results_indexed"] >= 40 and got["events"] >= 40


def test_recent_results_are_the_stored_ones(api, served, store) -> None:  # type: ignore[no-untyped-def]
    page = ResultsPage.model_validate(api.get("/api/results", params={"recent": 500}).json())
    ids = [it.result.id for it in page.items]
    assert set(served.ids) <= set(ids) and len(ids) == len(set(ids)) == page.count
    assert ids[: len(ids)] == store.recent_ids(len(ids))  # newest first, as the index
    one = page.items[ids.index("s-7")]
    assert one.result == store.get("s-7")
    assert one.text == served.bodies["s-7"]["text"]  # the post's text is kept beside the result
    assert api.get("/api/results", params={"recent": 5}).json()["count"] == 5


def test_filters(api, served, store) -> None:  # type: ignore[no-untyped-def]
    everything = [store.get(i) for i in served.ids]
    for label in ("positive", "neutral", "negative"):
        page = api.get("/api/results", params={"recent": 500, "label": label}).json()
        got = {it["result"]["id"] for it in page["items"]}
        assert got >= {r.id for r in everything if r.label == label}
        assert all(it["result"]["label"] == label for it in page["items"])
        assert page["filters"] == {"recent": 500, "aspect": None, "label": label}
    coffee = {r.id for r in everything if (r.aspect or "").lower() == "coffee"}
    assert coffee
    page = api.get("/api/results", params={"recent": 500, "aspect": "  COFFEE "}).json()
    assert {it["result"]["id"] for it in page["items"]} == coffee
    both = api.get("/api/results", params={"recent": 500, "aspect": "coffee", "label": "negative"}).json()
    assert {it["result"]["id"] for it in both["items"]} == {r.id for r in everything if r.id in coffee and r.label == "negative"}
    none = api.get("/api/results", params={"aspect": "no such aspect"}).json()
    assert none["count"] == 0 and none["items"] == []


def test_one_result_and_its_thumbnail(api, served, store) -> None:  # type: ignore[no-untyped-def]
    item = ResultItem.model_validate(api.get("/api/results/s-3").json())
    assert item.result == store.get("s-3") and item.text == served.bodies["s-3"]["text"]
    resp = api.get("/api/results/s-3/thumbnail")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(resp.content)) as img:
        assert img.format == "JPEG" and img.size == (120, 90)  # small images are not scaled up
    assert api.get("/api/results/nope").status_code == 404
    assert api.get("/api/results/nope/thumbnail").status_code == 404
    text_only = [i for i in served.ids if "image" not in served.bodies[i] and "image_b64" not in served.bodies[i]]
    for pid in text_only[:1]:
        assert api.get(f"/api/results/{pid}/thumbnail").status_code == 404


def test_stats_count_every_result_and_dead_letter(api, served, store) -> None:  # type: ignore[no-untyped-def]
    stats = Stats.model_validate(api.get("/api/stats", params={"window": 60, "last": 10}).json())
    assert len(stats.buckets) == 10 and stats.buckets[-1].start <= time.time() < stats.buckets[-1].start + 60
    total = Counter()
    for b in stats.buckets:
        total.update(b.counts)
        assert b.total == sum(b.counts.values())
        assert b.total == 0 or abs(sum(b.shares.values()) - 1) < 1e-9
    labels = Counter(store.get(i).label for i in store.recent_ids(10_000))
    assert dict(total) == dict(labels)  # the posts were produced in the last few minutes
    assert stats.dead_letters == served.dead_codes and sum(stats.dead_letters.values()) >= 3
    coffee = Stats.model_validate(api.get("/api/stats", params={"window": 3600, "last": 2, "aspect": "Coffee"}).json())
    want = Counter(r.label for r in (store.get(i) for i in served.ids) if (r.aspect or "").lower() == "coffee")
    got = Counter()
    for b in coffee.buckets:
        got.update(b.counts)
    assert +got == want


@pytest.mark.parametrize(
    "path",
    [
        "/api/results?recent=0", "/api/results?recent=501", "/api/results?label=happy", "/api/results?aspect=" + "a" * 201,
        "/api/results?aspect=", "/api/stats?window=61", "/api/stats?last=0", "/api/stats?last=100000",
        "/api/results/" + "x" * 257, "/api/stream?after=bogus",
    ],
)  # fmt: skip
def test_inputs_are_bounded(api, path: str) -> None:  # type: ignore[no-untyped-def]
    resp = api.get(path)
    assert resp.status_code == 422, (path, resp.text)


def test_read_only_and_safe_defaults(api, served) -> None:  # type: ignore[no-untyped-def]
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert api.request(method, "/api/results").status_code == 405
    assert "access-control-allow-origin" not in api.get("/api/health", headers={"Origin": "http://evil.example"}).headers
    assert api.get("/").headers["content-security-policy"].startswith("default-src 'self'")
    spec = api.get("/api/openapi.json").json()
    assert set(spec["paths"]) == {"/api/dead-letters", "/api/health", "/api/results", "/api/results/{post_id}", "/api/results/{post_id}/thumbnail",
                                  "/api/stats", "/api/stream", "/api/alerts", "/api/alerts/stream",
                                  "/api/alerts/{alert_id}"}  # fmt: skip
    assert all(set(ops) == {"get"} for ops in spec["paths"].values())
    assert api.get("/static/../api.py").status_code == 404


def test_bearer_token(served) -> None:  # type: ignore[no-untyped-def]
    from stream.serve import start_background
    from stream.settings import load_settings

    s = load_settings(redis_url=served.ro_redis_url, redis_prefix=served.settings.redis_prefix,
                      serve_token="s3cret", serve_cors_origins=["http://dash.example"])  # fmt: skip
    assert s.masked()["serve_token"] == "********"
    srv = start_background(s, port=0)
    try:
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/api/results").status_code == 401
            assert c.get("/api/results", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/api/results/s-1/thumbnail").status_code == 401
            ok = c.get("/api/results", headers={"Authorization": "Bearer s3cret", "Origin": "http://dash.example"})
            assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://dash.example"
            assert c.get("/api/health").status_code == 200 and c.get("/").status_code == 200  # no data in either
    finally:
        srv.stop()


def test_stream_sends_new_results(api, served, store) -> None:  # type: ignore[no-untyped-def]
    """/api/stream: the results of posts produced after it opened arrive as events, once each."""
    got: list[dict] = []
    ids: list[str] = []
    opened = threading.Event()

    def listen() -> None:
        with httpx.Client(base_url=served.url, timeout=60) as c, c.stream("GET", "/api/stream") as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            opened.set()
            event: dict = {}
            for line in resp.iter_lines():
                if line.startswith("id: "):
                    event["id"] = line[4:]
                elif line.startswith("data: "):
                    event["data"] = json.loads(line[6:])
                elif line == "" and "data" in event:
                    got.append(event)
                    event = {}
                    if ids and {e["data"]["result"]["id"] for e in got} >= set(ids):
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert opened.wait(10)
    time.sleep(0.3)
    ids.extend(served.produce(6, prefix="sse"))
    t.join(60)
    assert not t.is_alive(), f"stream did not deliver {ids}; got {[e['data']['result']['id'] for e in got]}"
    by_id = {e["data"]["result"]["id"]: e for e in got}
    assert set(ids) <= set(by_id)
    for pid in ids:
        assert SentimentResult.model_validate(by_id[pid]["data"]["result"]) == store.get(pid)
        assert by_id[pid]["data"]["text"] == served.bodies[pid]["text"]
    # resuming after an event id replays what followed it
    first = by_id[ids[0]]["id"]
    with httpx.Client(base_url=served.url, timeout=30) as c, c.stream("GET", "/api/stream", headers={"Last-Event-ID": first}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:])["result"]["id"] in ids[1:] + [i for i in served.bodies if i.startswith("sse")]
                break
