"""``mulcot serve``'s alerts endpoints (``/api/alerts``, ``/api/alerts/{id}``, the
``/api/alerts/stream`` events) against a real Valkey, read as the read-only user: the alert
is raised by the real detector (its Redis state, in this process) over a synthetic surge."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse

import httpx
import pytest

from stream.alerts import AlertConfig, Detector, RedisState
from stream.protocol import Alert
from stream.store import KeyLayout
from tests.support import alerts_synth as syn


@pytest.fixture(scope="module")
def api(served):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=served.url, timeout=30) as c:
        yield c


def test_alerts_endpoints_and_events(api, served) -> None:  # type: ignore[no-untyped-def]
    got: list[dict] = []
    opened = threading.Event()

    def listen() -> None:
        with httpx.Client(base_url=served.url, timeout=120) as c, c.stream("GET", "/api/alerts/stream") as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            opened.set()
            event: dict = {}
            for line in resp.iter_lines():
                if line.startswith("id: "):
                    event["id"] = line[4:]
                elif line.startswith("event: "):
                    event["event"] = line[7:]
                elif line.startswith("data: "):
                    event["data"] = json.loads(line[6:])
                elif line == "" and "data" in event:
                    got.append(event)
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert opened.wait(10)
    time.sleep(0.3)
    s = served.settings
    cfg = AlertConfig.from_settings(s)
    start_ms = (int(time.time() * 1000) - 4 * 3600_000) // 3600_000 * 3600_000
    obs = syn.observations(syn.small_surge(start_ms))
    state = RedisState(s.redis_url_value, KeyLayout.from_settings(s), cfg)
    det = Detector(cfg, state)
    raised: list[Alert] = []
    for k in range(0, len(obs), 1000):
        det.ingest(obs[k : k + 1000])
        raised += det.run_due()
    state.close()
    assert [(a.kind, a.scope) for a in raised] == [("negative_shift", "topic 07")]
    (alert,) = raised
    t.join(60)
    assert got and got[0]["event"] == "alert" and Alert.model_validate(got[0]["data"]) == alert

    page = api.get("/api/alerts").json()
    assert [Alert.model_validate(a) for a in page["items"]] == [alert] and page["count"] == 1
    assert page["counted_apart"] == {} and page["last_event_id"] == got[0]["id"]
    assert api.get("/api/alerts", params={"scope": " Topic  07"}).json()["count"] == 1
    assert api.get("/api/alerts", params={"kind": "volume_spike"}).json()["count"] == 0
    assert api.get("/api/alerts", params={"scope": "all"}).json()["count"] == 0
    one = api.get("/api/alerts/" + urllib.parse.quote(alert.id, safe=""))
    assert one.status_code == 200 and Alert.model_validate(one.json()["alert"]) == alert
    assert one.json()["examples"] == []  # synthetic posts: their results are not in this cache
    assert api.get("/api/alerts/negative_shift:600s:0:all").status_code == 404
    # resuming after the event replays nothing (it was the newest)
    with httpx.Client(base_url=served.url, timeout=30) as c, c.stream(
            "GET", "/api/alerts/stream", headers={"Last-Event-ID": got[0]["id"]}) as resp:  # fmt: skip
        for line in resp.iter_lines():
            assert not line.startswith("data: ")
            if line.startswith(": ping"):  # 5 s of nothing
                break


@pytest.mark.parametrize("path", ["/api/alerts?recent=0", "/api/alerts?recent=501", "/api/alerts?kind=bad_news",
                                  "/api/alerts?scope=", "/api/alerts?scope=" + "a" * 201, "/api/alerts/stream?after=bogus",
                                  "/api/alerts/" + "x" * 513])  # fmt: skip
def test_alert_inputs_are_bounded(api, path: str) -> None:  # type: ignore[no-untyped-def]
    resp = api.get(path)
    assert resp.status_code == 422, (path, resp.text)
