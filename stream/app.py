"""The Faust worker behind one facade: ``Application(settings).run_worker()``.

One agent consumes the input topic as raw bytes (validation is ours, so invalid JSON
reaches the dead-letter path), batches with ``take_events(max_batch, within=max_latency)``,
hands the batch to :class:`~stream.pipeline.BatchProcessor` (the model runs in an executor
thread, so the event loop keeps heartbeating), publishes results and dead letters with the
post id as key, awaits the broker's acknowledgement, writes Redis, and only then
acknowledges the input records. Faust commits acknowledged offsets, so delivery is
at-least-once; duplicates are harmless because the output topic is compacted by post id
and Redis writes are idempotent.

A batch interrupted by shutdown or a crash is never acknowledged (each record holds an
extra reference until its outputs are durable), so it is consumed again after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .metrics import WorkerMetrics
from .pipeline import BatchProcessor, InRecord, Outcome
from .settings import Settings, load_settings
from .store import AsyncResultWriter, KeyLayout

log = logging.getLogger("mulcot.worker")

_FETCH_WAIT_MS = {"value": 100}


def _patch_faust_fetch_wait() -> None:
    """Faust hard-codes fetch_max_wait_ms=1500; Tansu waits about half of it on every idle
    fetch, which adds ~0.75 s latency. Use the ``fetch_max_wait_ms`` setting instead."""
    from faust.transport.drivers import aiokafka as fa

    cls = fa.AIOKafkaConsumerThread
    if getattr(cls, "_mulcot_patched", False):
        return
    original = cls._create_worker_consumer

    def _create_worker_consumer(self, transport):  # type: ignore[no-untyped-def]
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _FETCH_WAIT_MS["value"]
        return consumer

    cls._create_worker_consumer = _create_worker_consumer
    cls._mulcot_patched = True


def _backoff(attempt: int) -> float:
    return min(0.2 * (2**attempt), 5.0)


class Application:
    """The worker: settings -> Faust app with the sentiment agent, student, sinks, metrics.

    ``student`` may be given (an object implementing ``model.Student``); otherwise it is
    loaded with ``model.load_student(settings.model_spec)`` when the worker starts.
    """

    def __init__(self, settings: Settings | None = None, *, student: Any = None) -> None:
        self.settings = settings or load_settings()
        self.student = student
        self.metrics = WorkerMetrics()
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mulcot-model")
        self.processor: BatchProcessor | None = None
        self.writer: AsyncResultWriter | None = None
        self.faust = self._make_faust_app()

    # --- construction -------------------------------------------------------------------
    def load_student(self) -> Any:
        if self.student is None:
            from model import load_student

            opts = {"device": self.settings.model_device} if self.settings.model_device else {}
            self.student = load_student(self.settings.model_spec, **opts)
        return self.student

    def _credentials(self) -> Any:
        import faust

        s = self.settings
        ctx = s.ssl_context()
        if s.sasl_mechanism:
            return faust.SASLCredentials(
                username=s.sasl_username,
                password=s.sasl_password.get_secret_value() if s.sasl_password else None,
                ssl_context=ctx,
                mechanism=s.sasl_mechanism,
            )
        return ctx

    def _make_faust_app(self):  # type: ignore[no-untyped-def]
        import faust

        _patch_faust_fetch_wait()
        s = self.settings
        _FETCH_WAIT_MS["value"] = s.fetch_max_wait_ms
        datadir = (Path(s.work_dir) / "faust").resolve()
        datadir.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            s.group_id,
            broker=[f"kafka://{b}" for b in s.bootstrap_servers],
            broker_credentials=self._credentials(),
            store="memory://",
            autodiscover=False,
            web_enabled=False,
            topic_disable_leader=True,
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            topic_allow_declare=s.create_topics,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=s.heartbeat_s,
            broker_rebalance_timeout=max(s.session_timeout_s, 10.0),
            broker_request_timeout=max(40.0, s.session_timeout_s + 5),
            broker_commit_interval=s.commit_interval_s,
            broker_max_poll_records=max(500, s.max_batch),
            consumer_auto_offset_reset=s.auto_offset_reset,
            consumer_max_fetch_size=8 * 1024 * 1024,
            producer_linger=s.producer_linger_ms / 1000.0,
            producer_max_batch_size=1024 * 1024,
            producer_max_request_size=8 * 1024 * 1024,
            producer_acks=-1,
            stream_buffer_maxsize=max(4096, 2 * s.max_batch),
            datadir=str(datadir),
            tabledir=str(datadir / "tables"),
        )
        source = app.topic(
            s.input_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        within = s.max_latency_ms / 1000.0

        @app.agent(source, name="sentiment", concurrency=s.concurrency)
        async def sentiment(stream):  # type: ignore[no-untyped-def]
            async for events in stream.take_events(s.max_batch, within=within):
                for ev in events:  # hold each record until its outputs are durable
                    ev.message.incref()
                self.metrics.in_flight.inc(len(events))
                await self.handle(events)
                for ev in events:
                    ev.ack()
                self.metrics.in_flight.dec(len(events))

        @app.task
        async def _on_start() -> None:  # runs once the app is started
            log.info(
                "worker %s: %s -> %s (+ %s), model %s, batch %d within %d ms",
                self.worker_name, s.input_topic, s.output_topic, s.dlq_topic,
                getattr(self.student, "name", s.model_spec), s.max_batch, s.max_latency_ms,
            )  # fmt: skip

        self.agent = sentiment
        return app

    # --- the batch ----------------------------------------------------------------------
    async def _ensure_sinks(self) -> None:
        if self.processor is None:
            self.processor = BatchProcessor.from_settings(
                self.settings, self.load_student(), self.executor, self.worker_name
            )
        if self.writer is None:
            self.writer = AsyncResultWriter(self.settings.redis_url_value, KeyLayout.from_settings(self.settings))

    async def handle(self, events) -> Outcome:  # type: ignore[no-untyped-def]
        """Process one batch of Faust events end to end; returns only when outputs are durable."""
        await self._ensure_sinks()
        assert self.processor is not None and self.writer is not None
        records = [
            InRecord(
                value=ev.value if isinstance(ev.value, (bytes, type(None))) else bytes(ev.value),
                key=ev.key if isinstance(ev.key, (bytes, type(None))) else str(ev.key).encode(),
                topic=ev.message.topic,
                partition=ev.message.partition,
                offset=ev.message.offset,
                timestamp_ms=int(ev.message.timestamp * 1000) if ev.message.timestamp else None,
            )
            for ev in events
        ]
        attempt = 0
        t_proc = time.perf_counter()
        while True:
            try:
                outcome = await self.processor.process(
                    records, on_labels=self._publish_early if self.settings.label_first else None
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception:  # not expected: the processor turns bad input into dead letters
                log.exception("batch processing failed; retrying")
                await asyncio.sleep(_backoff(attempt))
                attempt += 1
        t0 = time.perf_counter()
        await asyncio.gather(self._publish(outcome), self._write_redis(outcome))
        m = self.metrics
        t1 = time.perf_counter()
        m.publish_seconds.observe(t1 - t0)
        log.debug("batch of %d: process %.1f ms (model %.1f ms), publish+redis %.1f ms",
                  len(records), (t0 - t_proc) * 1000, outcome.inference_s * 1000, (t1 - t0) * 1000)
        m.batches.inc()
        m.batch_size.observe(len(records))
        if outcome.results:
            m.inference_seconds.observe(outcome.inference_s)
        for r in outcome.results:
            m.results.labels(r.result.label).inc()
            m.e2e_seconds.observe(r.result.timings.end_to_end_ms / 1000.0)
        for d in outcome.dead:
            m.dead_letters.labels(d.dead.error.value).inc()
            log.warning(
                "dead letter %s at %s/%d/%d: %s",
                d.dead.error.value, d.dead.source.topic, d.dead.source.partition, d.dead.source.offset, d.dead.message,
            )  # fmt: skip
        return outcome

    async def _publish_early(self, early: list) -> None:  # type: ignore[type-arg]
        """Label-first mode: labels-only results to Kafka and Redis before the chains exist
        (nothing is acknowledged yet; the full results follow with the same keys)."""
        early_outcome = Outcome(results=early)
        await asyncio.gather(self._publish(early_outcome), self._write_redis(early_outcome))
        self.metrics.early_labels.inc(len(early))

    async def _publish(self, outcome: Outcome) -> None:
        s = self.settings
        msgs = [(s.output_topic, r.key, r.value) for r in outcome.results]
        msgs += [(s.dlq_topic, d.key, d.value) for d in outcome.dead]
        if not msgs:
            return
        attempt = 0
        while True:
            try:
                producer = self.faust.producer
                futs = [await producer.send(topic, key, value, None, None, None) for topic, key, value in msgs]
                await asyncio.gather(*futs)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker down, timeouts: retry (duplicates are keyed, harmless)
                self.metrics.retries.labels("kafka").inc()
                log.warning("publishing %d records failed (%s); retrying", len(msgs), exc)
                await asyncio.sleep(_backoff(attempt))
                attempt += 1

    async def _write_redis(self, outcome: Outcome) -> None:
        if not outcome.results:
            return
        assert self.writer is not None
        items = [(r.result, r.value, r.event_ms) for r in outcome.results]
        attempt = 0
        while True:
            try:
                await self.writer.write(items)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.retries.labels("redis").inc()
                log.warning("writing %d results to Redis failed (%s); retrying", len(items), exc)
                await asyncio.sleep(_backoff(attempt))
                attempt += 1

    # --- running ------------------------------------------------------------------------
    def run_worker(self) -> None:
        """Run the worker in the foreground until SIGINT/SIGTERM (blocking)."""
        from faust.worker import Worker

        from .kafka import ensure_topics

        s = self.settings
        self.load_student()
        if s.create_topics:
            asyncio.run(ensure_topics(s))
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.metrics.serve(s.metrics_port)
        worker = Worker(
            self.faust,
            loglevel=s.log_level,
            quiet=True,
            redirect_stdouts=False,
            override_logging=True,
        )
        worker.execute_from_commandline()


__all__ = ["Application"]
