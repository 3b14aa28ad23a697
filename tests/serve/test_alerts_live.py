"""Sentiment-shift alerts live, on the embedded Tansu and Valkey: a real worker whose student's
label is known per post (tests/support/label_student.py, loaded by the spec
``py:tests.support.label_student:LabelStudent``) labels a synthetic surge produced with
event-time Kafka timestamps, ``mulcot alerts run`` watches the results topic, and the worker is
killed with ``kill -9`` in the middle of the surge and replaced. The one alert the surge gives
(a negative shift of the surging aspect, in a window overlapping it) is on ``sentiment.alerts``
(once: no duplicate key), in Redis, in the metric, at ``/api/alerts`` and on the dashboard
(headless Chromium: the alert, then its example posts' cards), and equals what
``replay`` computes from the results topic, duplicates included (nothing missed, nothing
counted twice)."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from stream.alerts import AlertConfig, replay
from stream.alerts.windows import slot_of
from stream.protocol import Alert
from stream.store import ResultStore
from tests.serve.test_serve_browser import ARTIFACTS, browser  # noqa: F401 - the headless Chromium fixture
from tests.support import alerts_synth as syn
from tests.support.alerts_live import LABEL_STUDENT, detector_proc, produce_timed, read_all
from tests.support.stream_fixtures import services  # noqa: F401
from tests.support.stream_helpers import WorkerProc, create_topics, wait_redis, wait_until

SURGE_AT = syn.SMALL_SURGE_AT
RATE = 300.0  # posts produced per second


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(port: int, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@dataclass
class Live:
    settings: Any
    config: AlertConfig
    posts: list[syn.Post]
    surge: tuple[int, int]
    truth: list[Alert]
    metrics_port: int
    done_at_kill: int
    first: int  # posts produced before the kill


@pytest.fixture(scope="module")
def live(services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:  # noqa: F811
    """The scenario, run once: worker 1 labels the posts up to the middle of the surge and is
    killed with SIGKILL as soon as the first surge post has its result; worker 2 takes over,
    the rest of the stream follows; the detector runs throughout."""
    from stream.settings import load_settings

    kafka, redis_svc = services
    tmp = tmp_path_factory.mktemp("alerts-live")
    tag = uuid.uuid4().hex[:8]
    metrics_port, worker_port = _port(), _port()
    s = load_settings(
        broker=kafka.bootstrap, redis_url=redis_svc.url, input_topic=f"posts-{tag}", output_topic=f"results-{tag}",
        dlq_topic=f"dlq-{tag}", group_id=f"workers-{tag}", redis_prefix=f"l{tag}:", model_spec=LABEL_STUDENT,
        metrics_port=worker_port, partitions=2, work_dir=str(tmp / "work"), alerts_topic=f"alerts-{tag}",
        alerts_group_id=f"alerts-{tag}", alerts_metrics_port=metrics_port,
        alerts_lateness_s=1800,  # 3 event-time hours pass in about a minute here: a generous allowance
    )  # fmt: skip
    cfg = AlertConfig.from_settings(s)
    now_ms = int(time.time() * 1000)
    start_ms = (now_ms - 3 * 3600_000 - 900_000) // 3600_000 * 3600_000  # event time: the last 3-4 hours
    posts = syn.small_surge(start_ms)
    surge = (start_ms + SURGE_AT * 1000, start_ms + (SURGE_AT + 600) * 1000)
    truth, _ = replay(syn.observations(posts), cfg, final=False)  # what the generated stream itself gives
    mid = surge[0] + 300_000
    first = [p for p in posts if p.event_ms < mid]
    rest = [p for p in posts if p.event_ms >= mid]
    surge_ids = [p.post_id for p in first if p.event_ms >= surge[0]]

    create_topics(s)
    w1 = WorkerProc(s, tmp / "worker-1.log")
    det = detector_proc(s, tmp / "alerts.log")
    w2 = None
    store = ResultStore.from_settings(s)
    try:
        # posts go in at a rate the worker keeps up with (3 event-time hours in about 16 s): a
        # backlog read partition by partition would put the partitions' event times far apart
        wait_until(lambda: _ready(worker_port), 180, "worker 1 to join its group", worker=w1)
        produce_timed(s, first, rate=RATE)
        wait_until(lambda: any(store.client.mget([store.layout.result(i) for i in surge_ids])), 180,
                   "the worker to reach the surge", worker=w1)  # fmt: skip
        w1.proc.send_signal(signal.SIGKILL)  # kill -9 in the middle of the surge
        w1.proc.wait(10)
        done_at_kill = sum(1 for v in store.client.mget([store.layout.result(p.post_id) for p in first]) if v)
        w2 = WorkerProc(s, tmp / "worker-2.log")
        assert not wait_redis(s, [p.post_id for p in first], timeout=180, worker=w2)
        produce_timed(s, rest, rate=RATE)
        assert not wait_redis(s, [p.post_id for p in posts], timeout=180, worker=w2)

        # the detector has read everything once its counts hold the newest post and its
        # watermark has closed every window the lateness allowance lets close
        newest = max(p.event_ms for p in posts)
        frontier = slot_of(newest - cfg.lateness_s * 1000, cfg.slot_ms)

        def caught_up() -> bool:
            assert det.alive(), det.tail()
            st = store.client.hgetall(store.layout.alert_state)
            return int(st.get(b"max_ms", 0)) == newest and int(st.get(b"frozen_ms", 0)) == frontier and all(
                int(st.get(f"evaluated:{w}s".encode(), 0)) >= frontier - w * 1000 // cfg.hops for w in cfg.windows_s)

        wait_until(caught_up, 120, "the alert detector to evaluate every closed window")
        yield Live(s, cfg, posts, surge, truth, metrics_port, done_at_kill, len(first))
    finally:
        store.close()
        det.stop()
        for w in (w1, w2):
            if w is not None:
                w.stop(signal.SIGKILL if w.alive() else signal.SIGTERM)


def test_surge_alert_live_with_a_worker_killed_mid_surge(live: Live) -> None:
    s, cfg = live.settings, live.config
    # the generated stream gives exactly the alert
    assert [(a.kind, a.scope) for a in live.truth] == [("negative_shift", "topic 07")]
    assert live.done_at_kill < live.first, "the worker had finished its posts before it was killed"
    # the results topic, duplicates and all, replayed in the order the workers published them
    # (the records' Kafka timestamps): the same alert as live
    records = sorted(read_all(s, s.output_topic), key=lambda r: (r.timestamp, r.partition, r.offset))
    assert len({r.key for r in records}) == len(live.posts)
    expected, report = replay([r.value for r in records], cfg, final=False)
    assert report.counted == len(live.posts) and report.late == 0 and not report.rejected
    store = ResultStore.from_settings(s)
    try:
        found = store.alerts(10)
        assert [a.model_dump_json() for a in found] == [a.model_dump_json() for a in expected]
        assert found == live.truth
        assert store.alert_counts().get("late", 0) == 0
    finally:
        store.close()
    (alert,) = found
    assert alert.kind == "negative_shift" and alert.scope == "topic 07"
    assert alert.window_start_ms < live.surge[1] and live.surge[0] < alert.window_end_ms
    # sentiment.alerts: the alert once, keyed by its id, the value Redis holds
    published = read_all(s, s.alerts_topic, idle_s=2.0)
    assert [(r.key.decode(), Alert.model_validate_json(r.value)) for r in published] == [(alert.id, alert)]
    assert _metric(live.metrics_port, 'mulcot_alerts_total{kind="negative_shift"}') == 1.0
    assert _metric(live.metrics_port, 'mulcot_alert_results_total{outcome="counted"}') == len(live.posts)
    dups = _metric(live.metrics_port, 'mulcot_alert_results_total{outcome="duplicate"}')
    print(f"results on the topic: {len(records)} for {len(live.posts)} posts ({len(records) - len(live.posts)} "
          f"redelivered after the kill); the detector counted {dups:.0f} duplicates once")


def test_surge_alert_on_the_api_and_the_dashboard(live: Live, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from stream.serve import start_background
    from stream.settings import load_settings

    (alert,) = live.truth
    srv = start_background(load_settings(redis_url=live.settings.redis_url_value, redis_prefix=live.settings.redis_prefix), port=0)
    try:
        page_json = _get(srv.url + "api/alerts")
        assert [Alert.model_validate(a) for a in page_json["items"]] == [alert]
        detail = _get(srv.url + "api/alerts/" + urllib.request.quote(alert.id, safe=""))
        assert [e["result"]["id"] for e in detail["examples"]] == alert.examples
        assert all(e["result"]["label"] == "negative" for e in detail["examples"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(srv.url)
        item = page.locator(f"#alerts li.alert[data-id='{alert.id}']")
        item.wait_for(timeout=15_000)
        assert page.locator("#alerts li.alert").count() == 1
        assert "topic 07" in item.inner_text() and "negative share up" in item.inner_text()
        example = alert.examples[0]
        item.locator(f"a.example[data-post='{example}']").click()
        shown = page.locator(f"#alert-examples .card[data-id='{example}']")
        shown.wait_for(timeout=10_000)
        assert shown.locator(".label").inner_text().lower() == "negative"
        assert page.locator("#alert-examples .card").count() == len(alert.examples)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-alerts.png"), full_page=True)
        assert not errors, errors
        page.close()
    finally:
        srv.stop()
