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
from pathlib import Path

from stream.alerts import AlertConfig, replay
from stream.alerts.windows import slot_of
from stream.protocol import Alert
from stream.store import ResultStore
from tests.serve.test_serve_browser import ARTIFACTS, browser  # noqa: F401 - the headless Chromium fixture
from tests.support import alerts_synth as syn
from tests.support.alerts_live import LABEL_STUDENT, DetectorProc, produce_timed, read_all
from tests.support.stream_helpers import WorkerProc, create_topics, wait_redis, wait_until

SURGE_AT = syn.SMALL_SURGE_AT


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


def test_surge_alert_live_with_a_worker_killed_mid_surge(services, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from stream.serve import start_background
    from stream.settings import load_settings

    kafka, redis_svc = services
    tag = uuid.uuid4().hex[:8]
    metrics_port = _port()
    s = load_settings(
        broker=kafka.bootstrap, redis_url=redis_svc.url, input_topic=f"posts-{tag}", output_topic=f"results-{tag}",
        dlq_topic=f"dlq-{tag}", group_id=f"workers-{tag}", redis_prefix=f"l{tag}:", model_spec=LABEL_STUDENT,
        metrics_port=0, partitions=2, work_dir=str(tmp_path / "work"), alerts_topic=f"alerts-{tag}",
        alerts_group_id=f"alerts-{tag}", alerts_metrics_port=metrics_port,
        alerts_lateness_s=1800,  # 3 event-time hours pass in about a minute here: a generous allowance
    )  # fmt: skip
    cfg = AlertConfig.from_settings(s)
    now_ms = int(time.time() * 1000)
    start_ms = (now_ms - 3 * 3600_000 - 900_000) // 3600_000 * 3600_000  # event time: the last 3-4 hours
    posts = syn.small_surge(start_ms)
    surge = (start_ms + SURGE_AT * 1000, start_ms + (SURGE_AT + 600) * 1000)
    truth, _ = replay(syn.observations(posts), cfg, final=False)  # what the generated stream itself gives
    assert [(a.kind, a.scope) for a in truth] == [("negative_shift", "topic 07")]
    mid = surge[0] + 300_000
    first = [p for p in posts if p.event_ms < mid]
    rest = [p for p in posts if p.event_ms >= mid]
    surge_ids = [p.post_id for p in first if p.event_ms >= surge[0]]

    create_topics(s)
    w1 = WorkerProc(s, tmp_path / "worker-1.log")
    det = DetectorProc(s, tmp_path / "alerts.log")
    w2 = None
    store = ResultStore.from_settings(s)
    try:
        produce_timed(s, first)

        def surge_started() -> bool:
            vals = store.client.mget([store.layout.result(i) for i in surge_ids])
            return any(vals)

        wait_until(surge_started, 180, "the worker to reach the surge", worker=w1)
        w1.proc.send_signal(signal.SIGKILL)  # kill -9 in the middle of the surge
        w1.proc.wait(10)
        done_at_kill = sum(1 for v in store.client.mget([store.layout.result(p.post_id) for p in first]) if v)
        assert done_at_kill < len(first), "the worker had finished before it was killed"
        w2 = WorkerProc(s, tmp_path / "worker-2.log")
        assert not wait_redis(s, [p.post_id for p in first], timeout=180, worker=w2)
        produce_timed(s, rest, rate=400)
        assert not wait_redis(s, [p.post_id for p in posts], timeout=180, worker=w2)

        # the detector has read everything once its counts hold every post and its watermark has
        # closed every window the lateness allowance lets close
        newest = max(p.event_ms for p in posts)
        frontier = slot_of(newest - cfg.lateness_s * 1000, cfg.slot_ms)

        def caught_up() -> bool:
            assert det.alive(), det.tail()
            st = store.client.hgetall(store.layout.alert_state)
            return int(st.get(b"max_ms", 0)) == newest and int(st.get(b"frozen_ms", 0)) == frontier and all(
                int(st.get(f"evaluated:{w}s".encode(), 0)) >= frontier - w * 1000 // cfg.hops for w in cfg.windows_s)

        wait_until(caught_up, 120, "the alert detector to evaluate every closed window")

        # the results topic, duplicates and all, replayed: the same alert as live
        records = read_all(s, s.output_topic)
        assert len({r.key for r in records}) == len(posts)
        expected, report = replay([r.value for r in records], cfg, final=False)
        assert report.counted == len(posts) and report.late == 0 and not report.rejected
        live = store.alerts(10)
        assert [a.model_dump_json() for a in live] == [a.model_dump_json() for a in expected]
        (alert,) = live
        assert alert.kind == "negative_shift" and alert.scope == "topic 07"
        assert alert.window_start_ms < surge[1] and surge[0] < alert.window_end_ms
        assert alert == truth[0]
        assert store.alert_counts().get("late", 0) == 0
        # sentiment.alerts: the alert once, keyed by its id, the value Redis holds
        published = read_all(s, s.alerts_topic, idle_s=2.0)
        assert [(r.key.decode(), Alert.model_validate_json(r.value)) for r in published] == [(alert.id, alert)]
        assert _metric(metrics_port, 'mulcot_alerts_total{kind="negative_shift"}') == 1.0
        assert _metric(metrics_port, 'mulcot_alert_results_total{outcome="counted"}') == len(posts)

        # the query API and the dashboard
        srv = start_background(load_settings(redis_url=redis_svc.url, redis_prefix=s.redis_prefix), port=0)
        try:
            page_json = _get(srv.url + "api/alerts")
            assert [Alert.model_validate(a) for a in page_json["items"]] == [alert]
            detail = _get(srv.url + "api/alerts/" + urllib.request.quote(alert.id))
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
    finally:
        store.close()
        det.stop()
        for w in (w1, w2):
            if w is not None:
                w.stop(signal.SIGKILL if w.alive() else signal.SIGTERM)
