"""Prometheus metrics of a worker (served on ``metrics_port`` with ``/health`` and ``/ready``
beside ``/metrics``, see :mod:`stream.health`; 0 turns the endpoint off), and of the alert
detector ``mulcot alerts run`` (:class:`AlertMetrics`, on ``alerts_metrics_port``)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("mulcot.metrics")

_LAT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.results = Counter("mulcot_results_total", "posts with a published result", ["label"], registry=r)
        self.dead_letters = Counter("mulcot_dead_letters_total", "posts sent to the dead-letter topic", ["code"], registry=r)
        self.early_labels = Counter(
            "mulcot_early_labels_total", "labels-only results published ahead of the chain (label-first mode)", registry=r
        )
        self.batches = Counter("mulcot_batches_total", "batches processed", registry=r)
        self.batch_size = Histogram(
            "mulcot_batch_size", "posts per batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r
        )
        self.inference_seconds = Histogram("mulcot_inference_seconds", "model time per batch", buckets=_LAT, registry=r)
        self.e2e_seconds = Histogram(
            "mulcot_end_to_end_seconds", "record timestamp -> result ready", buckets=_LAT, registry=r
        )
        self.publish_seconds = Histogram("mulcot_publish_seconds", "Kafka publish + Redis write per batch", buckets=_LAT, registry=r)
        self.retries = Counter("mulcot_sink_retries_total", "retries of Kafka publish or Redis write", ["sink"], registry=r)
        self.skipped = Counter(
            "mulcot_sink_skipped_total", "records a sink refused for good, even as a bounded dead letter (logged, skipped)",
            ["sink"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("mulcot_in_flight_posts", "posts taken but not yet acknowledged", registry=r)
        self.consumer_lag = Gauge(
            "mulcot_consumer_lag", "records of the input topic not yet committed by the group, per partition assigned "
            "to this worker (log end from fetch high watermarks, not only ListOffsets: see stream/health.py)",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.lag_errors = Counter("mulcot_consumer_lag_errors_total", "consumer-lag probes that failed", registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> bool:
        """Serve ``/metrics`` (and ``/health``; ``/ready`` without checks) on ``port``; the worker
        uses :func:`stream.health.attach` instead, which adds the readiness checks."""
        from .health import HealthServer

        return HealthServer(self.registry).start(port, addr)


class AlertMetrics:
    """The alert detector's metrics (``mulcot alerts run``; docs/alerts.md). Every alert kind's
    series exists from the start at 0, so ``increase()`` sees the first alert."""

    def __init__(self) -> None:
        from .protocol import ALERT_KINDS

        self.registry = CollectorRegistry()
        r = self.registry
        self.alerts = Counter("mulcot_alerts_total", "sentiment-shift alerts raised (each alert id once, across restarts)",
                              ["kind"], registry=r)  # fmt: skip
        self.merged = Counter("mulcot_alerts_merged_total", "detections merged into an earlier alert of the same scope and kind",
                              ["kind"], registry=r)  # fmt: skip
        for kind in ALERT_KINDS:
            self.alerts.labels(kind)
            self.merged.labels(kind)
        self.results = Counter(
            "mulcot_alert_results_total", "results read by the alert detector, by outcome: counted, duplicate, relabelled, "
            "late (its slot was already evaluated), rejected_invalid, rejected_timestamp (missing or absurd event time)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.windows = Counter("mulcot_alert_windows_total", "windows evaluated by the alert detector", registry=r)
        self.watermark_seconds = Gauge("mulcot_alert_watermark_seconds", "the alert detector's event-time watermark (epoch s)",
                                       registry=r)  # fmt: skip

    # the detector's counters protocol (stream.alerts.detector.Counters)
    def count_alert(self, kind: str) -> None:
        self.alerts.labels(kind).inc()

    def count_merged(self, kind: str) -> None:
        self.merged.labels(kind).inc()

    def count_results(self, outcome: str, n: int) -> None:
        self.results.labels(outcome).inc(n)

    def count_window(self) -> None:
        self.windows.inc()

    def set_watermark(self, ms: int) -> None:
        self.watermark_seconds.set(ms / 1000)
