"""The worker's HTTP endpoints and its consumer-lag metric.

One small threaded HTTP server on ``metrics_port`` serves:

* ``/metrics`` - the Prometheus metrics of :class:`stream.metrics.WorkerMetrics`;
* ``/health`` - 200 while the process is alive (liveness);
* ``/ready``  - 200 once the student is loaded and warmed and the worker has joined its
  consumer group and got its partitions, 503 otherwise (during start-up and while a rebalance
  is under way), with the reasons as JSON (readiness).

It runs in its own thread, so it answers while the student loads (before the event loop
exists) and while a batch holds the model.

``mulcot_consumer_lag{topic,partition}`` is the lag of this worker's consumer group on each
partition assigned to this worker: end of the log minus the group's committed offset (what
KEDA's Kafka scaler computes too). The end of the log is not taken from ListOffsets alone:
the embedded Tansu broker answers ListOffsets with stale end offsets (after batched produce
it reported 1 for partitions holding 100 records), while the high watermark in its Fetch
answers is right. :class:`LagProbe` therefore uses the largest of the ListOffsets answer, the
high watermark of a one-off fetch at the last known end (its own consumer, no group
membership, partitions paused between probes, at most ``probe_fetch_bytes`` per partition),
and the end it saw before (the log end never moves back). On real Kafka both agree.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("mulcot.health")

Check = Callable[[], bool]


class HealthServer:
    """``/metrics``, ``/health`` and ``/ready`` on one port, in a daemon thread.

    ``checks``: name -> callable; ``/ready`` is 200 when every one returns True."""

    def __init__(self, registry: Any, checks: dict[str, Check] | None = None) -> None:
        self.registry = registry
        self.checks = dict(checks or {})
        self.server: ThreadingHTTPServer | None = None
        self.port = 0

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        state = {}
        for name, check in self.checks.items():
            try:
                state[name] = bool(check())
            except Exception:  # a failing check is "not ready", never a crash
                state[name] = False
        return all(state.values()), state

    def _handler(self):  # type: ignore[no-untyped-def]
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path in ("/health", "/healthz", "/livez"):
                    self._send(200, b'{"status": "alive"}\n', "application/json")
                elif path in ("/ready", "/readyz"):
                    ok, state = outer.readiness()
                    body = json.dumps({"status": "ready" if ok else "not ready", "checks": state}).encode() + b"\n"
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found: try /metrics, /health or /ready\n", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # probes every few seconds: no access log
                pass

        return Handler

    def start(self, port: int, addr: str = "0.0.0.0") -> bool:
        """Serve on ``port`` (0: off); False (logged) when the port cannot be bound."""
        if not port:
            return False
        try:
            self.server = ThreadingHTTPServer((addr, port), self._handler())
        except OSError as exc:
            log.warning("metrics/health endpoint not started on port %d: %s", port, exc)
            return False
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="mulcot-health", daemon=True).start()
        log.info("metrics on http://%s:%d/metrics, health on /health and /ready", addr, self.port)
        return True

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class LagProbe:
    """Consumer lag of ``group_id`` on partitions of ``topic``, robust to stale ListOffsets.

    ``settings`` is a ``stream.settings.Settings`` (broker, security). Call :meth:`update` with the
    partitions to measure; it returns ``{partition: lag}``."""

    def __init__(self, settings: Any, topic: str, group_id: str, *, probe_fetch_bytes: int = 65536) -> None:
        self.settings = settings
        self.topic = topic
        self.group_id = group_id
        self.probe_fetch_bytes = int(probe_fetch_bytes)
        self.consumer: Any = None
        self.ends: dict[int, int] = {}
        self.listed: dict[int, int] = {}

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        s = self.settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=self.group_id,  # for OffsetFetch only: it never subscribes, so never joins
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=self.probe_fetch_bytes,
            fetch_max_bytes=max(self.probe_fetch_bytes, 1024 * 1024),
            **s.kafka_auth(),
        )
        await self.consumer.start()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def update(self, partitions: set[int] | list[int]) -> dict[int, int]:
        from aiokafka import TopicPartition

        if self.consumer is None:
            await self.start()
        c = self.consumer
        tps = [TopicPartition(self.topic, p) for p in sorted(set(partitions))]
        if set(tps) != c.assignment():
            c.assign(tps)
            c.pause(*tps)
        if not tps:
            return {}
        listed = await c.end_offsets(tps)
        committed = {tp: await c.committed(tp) for tp in tps}
        missing = [tp for tp in tps if committed[tp] is None]
        starts = await c.beginning_offsets(missing) if missing else {}
        # one fetch at the last known end of each partition: its answer carries the high watermark
        for tp in tps:
            known = max(self.ends.get(tp.partition, 0), listed.get(tp, 0) or 0, committed[tp] or 0)
            c.seek(tp, known)
        c.resume(*tps)
        try:
            await c.getmany(*tps, timeout_ms=200, max_records=1)
        finally:
            c.pause(*tps)
        out = {}
        for tp in tps:
            hw = c.highwater(tp)
            end = max(listed.get(tp, 0) or 0, hw or 0, self.ends.get(tp.partition, 0))
            self.ends[tp.partition] = end
            self.listed[tp.partition] = listed.get(tp, 0) or 0
            done = committed[tp] if committed[tp] is not None else starts.get(tp, 0)
            out[tp.partition] = max(0, end - done)
        return out


def attach(application: Any, *, lag_interval_s: float = 5.0) -> HealthServer:
    """Serve ``/metrics``, ``/health`` and ``/ready`` for a :class:`stream.app.Application`
    (from now on, before the student loads) and add the consumer-lag task to its Faust app.

    Ready = ``application.warmed`` (student loaded and warmed) and ``application.ready``
    (group joined, partitions assigned) are both set."""
    s = application.settings
    m = application.metrics
    checks: dict[str, Check] = {
        "student_loaded": lambda: _is_set(application, "warmed", fallback=lambda: application.student is not None),
        "group_joined": lambda: _is_set(application, "ready"),
    }
    server = HealthServer(m.registry, checks)
    server.start(s.metrics_port)
    application.health = server
    if s.metrics_port and hasattr(m, "consumer_lag"):
        application.faust.task(_lag_task(application, lag_interval_s))
    return server


def _is_set(obj: Any, name: str, fallback: Callable[[], bool] | None = None) -> bool:
    ev = getattr(obj, name, None)
    if ev is None:
        return fallback() if fallback else False
    return bool(ev.is_set())


def _lag_task(application: Any, interval_s: float):  # type: ignore[no-untyped-def]
    s = application.settings
    m = application.metrics

    async def consumer_lag() -> None:
        probe = LagProbe(s, s.input_topic, s.group_id)
        shown: set[int] = set()
        wait = 1.0  # the first probe soon after start, then one per interval
        try:
            while True:
                await asyncio.sleep(wait)
                wait = interval_s
                try:
                    assigned = {tp.partition for tp in application.faust.consumer.assignment() if tp.topic == s.input_topic}
                    lags = await probe.update(assigned)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the metric is best effort; the worker carries on
                    m.lag_errors.inc()
                    log.debug("consumer lag probe failed: %s", exc)
                    continue
                for p in shown - set(lags):  # revoked: this worker no longer reports it
                    m.consumer_lag.remove(s.input_topic, str(p))
                for p, lag in lags.items():
                    m.consumer_lag.labels(s.input_topic, str(p)).set(lag)
                shown = set(lags)
        finally:
            await probe.stop()

    return consumer_lag


__all__ = ["HealthServer", "LagProbe", "attach"]
