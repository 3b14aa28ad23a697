"""The Faust worker behind one facade: ``Application(settings).run_worker()``.

One agent consumes the input topic as raw bytes (validation is ours, so invalid JSON
reaches the dead-letter path), batches with ``take_events(max_batch, within=max_latency)``,
hands the batch to :class:`~stream.pipeline.BatchProcessor` (the model runs in an executor
thread, so the event loop keeps heartbeating), publishes results and dead letters with the
post id as key, awaits the broker's acknowledgement, writes Redis, and only then
acknowledges the input records. Faust commits acknowledged offsets, so delivery is
at-least-once; duplicates are harmless because the output topic is compacted by post id
and Redis writes are idempotent. The sinks are :data:`stream.delivery.SINKS`; their errors are
retried or, when permanent for one record, turned into a bounded dead letter (or skipped,
logged and counted) by :class:`stream.delivery.Delivery`.

A batch interrupted by shutdown or a crash is never acknowledged (each record holds an
extra reference until its outputs are durable), so it is consumed again after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .delivery import Delivery, build_sinks, until_done
from .kafka import MAX_BATCH, MAX_REQUEST
from .messages import InRecord, Outcome
from .metrics import WorkerMetrics
from .pipeline import BatchProcessor
from .settings import Settings, load_settings
from .sinks import RetryPolicy, SinkContext
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


class _SinkCounters:
    """The sinks' retry and skip counts, into the worker's Prometheus metrics."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def retry(self, sink: str) -> None:
        self.metrics.retries.labels(sink).inc()

    def skip(self, sink: str) -> None:
        skipped = getattr(self.metrics, "skipped", None)
        if skipped is not None:
            skipped.labels(sink).inc()


def model_threads(student: Any, settings: Settings) -> int:
    """Threads that run the student's calls. One, unless the student says it takes calls from
    several threads at once (``thread_safe``: an HF student with the batched engine, whose slots
    the posts of concurrent calls share); then one per batch in flight (``concurrency``), so
    consecutive Kafka batches overlap on the device instead of queueing behind each other."""
    return max(1, settings.concurrency) if getattr(student, "thread_safe", False) else 1


def quiet_model_loading(settings: Settings) -> None:
    """Keep the libraries' progress bars and load-time warnings (tqdm bars of transformers and
    its GGUF reader, a transformers tokenizer warning) out of the worker's log: call before
    the student's libraries are imported. Off with ``log_level=debug``; an explicit
    ``TQDM_DISABLE`` / ``TRANSFORMERS_VERBOSITY`` in the environment wins."""
    if settings.log_level == "debug":
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def load_configured_student(settings: Settings) -> Any:
    """``model.load_student(settings.model_spec)`` with the settings' device and API key (the
    worker's student; ``mulcot label`` loads it the same way)."""
    from model import load_student

    opts = {"device": settings.model_device} if settings.model_device else {}
    if settings.model_spec == "default" or settings.model_spec.startswith("compact:"):
        opts["ocr"] = settings.ocr  # the compact student reads text in pictures for its chains
        opts["conclusion"] = settings.conclusion
    key = getattr(settings, "openai_api_key", None)
    if key is not None and settings.model_spec.startswith("openai:"):
        opts["api_key"] = key.get_secret_value()
    return load_student(settings.model_spec, **opts)


class Application:
    """The worker: settings -> Faust app with the sentiment agent, student, sinks, metrics.

    ``student`` may be given (an object implementing ``model.Student``); otherwise it is
    loaded with ``model.load_student(settings.model_spec)`` when the worker starts.

    Readiness (for health endpoints): ``warmed`` is set once the student is loaded and has
    run on a dummy post (chain writer included), before the worker joins its group;
    ``ready`` is set once the worker has joined the group and got its partitions (after
    every rebalance), and cleared when partitions are revoked (a rebalance under way).
    """

    def __init__(self, settings: Settings | None = None, *, student: Any = None) -> None:
        self.settings = settings or load_settings()
        self.student = student
        self.metrics = WorkerMetrics()
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self.executor: ThreadPoolExecutor | None = None  # sized once the student is loaded (model_threads)
        self.processor: BatchProcessor | None = None
        self.writer: AsyncResultWriter | None = None
        self.policy = RetryPolicy()
        self.delivery: Delivery | None = None
        self.warmed = threading.Event()
        self.ready = threading.Event()
        self.faust = self._make_faust_app()

    # --- construction -------------------------------------------------------------------
    def load_student(self) -> Any:
        if self.student is None:
            self.student = load_configured_student(self.settings)
        return self.student

    def warm_up(self) -> float:
        """Load the student and run it once on a dummy post - ``classify`` and, with chains on,
        ``explain`` (the chain writer loads lazily in some backends) - so the first real batch
        does not pay for it. Sets ``warmed``; returns the seconds it took."""
        from model import PostInput

        t0 = time.perf_counter()
        student = self.load_student()
        image = None
        if getattr(student, "reads_pixels", True):
            from PIL import Image

            image = Image.new("RGB", (64, 48), (128, 128, 128))
        post = [PostInput(text="warm-up post", image=image, aspect=None, id="warm-up")]
        preds = student.classify(post)
        if self.settings.chain:
            student.explain(post, preds)
        took = time.perf_counter() - t0
        self.warmed.set()
        log.info("student %s loaded and warmed in %.1f s (%s on a dummy post)",
                 getattr(student, "name", self.settings.model_spec), took,
                 "classify + explain" if self.settings.chain else "classify")  # fmt: skip
        return took

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
            consumer_max_fetch_size=MAX_REQUEST,
            producer_linger=s.producer_linger_ms / 1000.0,
            producer_max_batch_size=MAX_BATCH,
            producer_max_request_size=MAX_REQUEST,
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

        @app.on_partitions_revoked.connect
        async def _revoked(app, revoked, **kw) -> None:  # type: ignore[no-untyped-def]
            self.ready.clear()

        @app.on_partitions_assigned.connect
        async def _assigned(app, assigned, **kw) -> None:  # type: ignore[no-untyped-def]
            parts = sorted(tp.partition for tp in assigned if tp.topic == s.input_topic)
            self.ready.set()
            log.info("ready: joined group %s, partitions %s of %s", s.group_id, parts, s.input_topic)

        self.agent = sentiment
        return app

    # --- the batch ----------------------------------------------------------------------
    async def _ensure_sinks(self) -> None:
        if self.processor is None:
            student = self.load_student()
            threads = model_threads(student, self.settings)
            self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mulcot-model")
            log.info("model threads: %d (student %s thread-safe, concurrency %d)", threads,
                     "is" if getattr(student, "thread_safe", False) else "is not", self.settings.concurrency)
            self.processor = BatchProcessor.from_settings(self.settings, student, self.executor, self.worker_name)
        if self.writer is None:
            self.writer = AsyncResultWriter(self.settings.redis_url_value, KeyLayout.from_settings(self.settings))
        if self.delivery is None:

            async def send(topic: str, key: bytes, value: bytes):  # type: ignore[no-untyped-def]
                return await self.faust.producer.send(topic, key, value, None, None, None)

            ctx = SinkContext(self.settings, worker=self.worker_name, send=send, writer=self.writer)
            self.delivery = Delivery(build_sinks(ctx), policy=self.policy, counters=_SinkCounters(self.metrics))

    async def handle(self, events) -> Outcome:  # type: ignore[no-untyped-def]
        """Process one batch of Faust events end to end; returns only when outputs are durable."""
        await self._ensure_sinks()
        assert self.processor is not None
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
        t_proc = time.perf_counter()
        on_labels = self._publish_early if self.settings.label_first else None

        def retried(exc: BaseException) -> None:  # not expected: bad input becomes dead letters
            log.error("batch processing failed", exc_info=exc)

        outcome = await until_done(self.policy, "batch processing",
                                   lambda: self.processor.process(records, on_labels=on_labels), on_retry=retried)  # fmt: skip
        t0 = time.perf_counter()
        await self._deliver(outcome)
        t1 = time.perf_counter()
        self._account(outcome, len(records), t1 - t0)
        log.info("%s", batch_line(outcome, len(records), (t0 - t_proc) * 1000, (t1 - t0) * 1000))
        return outcome

    async def _deliver(self, outcome: Outcome) -> None:
        """Results and dead letters to every sink; returns when durable (or skipped)."""
        assert self.delivery is not None
        await self.delivery.deliver(outcome.results, outcome.dead)

    def _account(self, outcome: Outcome, n: int, publish_s: float) -> None:
        m = self.metrics
        m.publish_seconds.observe(publish_s)
        m.batches.inc()
        m.batch_size.observe(n)
        if outcome.results:
            m.inference_seconds.observe(outcome.inference_s)
        labels: dict[str, int] = {}
        observe = m.e2e_seconds.observe
        for r in outcome.results:  # one labelled-counter update per label, not per post
            labels[r.result.label] = labels.get(r.result.label, 0) + 1
            observe(r.result.timings.end_to_end_ms / 1000.0)
        for label, k in labels.items():
            m.results.labels(label).inc(k)
        for d in outcome.dead:
            m.dead_letters.labels(d.dead.error.value).inc()
            log.warning(
                "dead letter %s at %s/%d/%d: %s",
                d.dead.error.value, d.dead.source.topic, d.dead.source.partition, d.dead.source.offset, d.dead.message,
            )  # fmt: skip

    async def _publish_early(self, early: list) -> None:  # type: ignore[type-arg]
        """Label-first mode: labels-only results to Kafka and Redis before the chains exist
        (nothing is acknowledged yet; the full results follow with the same keys)."""
        await self._deliver(Outcome(results=early))
        self.metrics.early_labels.inc(len(early))

    # --- running ------------------------------------------------------------------------
    def run_worker(self) -> None:
        """Run the worker in the foreground until SIGINT/SIGTERM (blocking)."""
        from faust.worker import Worker

        from .health import attach
        from .kafka import ensure_topics

        s = self.settings
        if not logging.getLogger().handlers:  # Faust sets up logging only when it starts; warm-up logs before
            logging.basicConfig(level=s.log_level.upper().replace("WARN", "WARNING"),
                                format="[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s")  # fmt: skip
        attach(self)  # /metrics, /health, /ready (answering while the student loads) + consumer lag
        self.warm_up()  # before the worker joins the group: the first batch pays no loading
        if s.create_topics:
            asyncio.run(ensure_topics(s))
        asyncio.set_event_loop(asyncio.new_event_loop())
        worker = Worker(
            self.faust,
            loglevel=s.log_level,
            quiet=True,
            redirect_stdouts=False,
            override_logging=True,
        )
        worker.execute_from_commandline()


def batch_line(outcome: Outcome, n: int, process_ms: float, publish_ms: float) -> str:
    """The one log line of a batch: posts, labels, dead letters, model ms, end-to-end ms."""
    from collections import Counter

    labels = Counter(r.result.label for r in outcome.results)
    e2e = sorted(r.result.timings.end_to_end_ms for r in outcome.results)
    e2e_text = f"end-to-end ms p50 {e2e[len(e2e) // 2]:.0f} max {e2e[-1]:.0f}" if e2e else "end-to-end ms -"
    return (
        f"batch: {n} posts, {len(outcome.results)} results "
        f"(positive {labels['positive']}, neutral {labels['neutral']}, negative {labels['negative']}), "
        f"{len(outcome.dead)} dead letters, model {outcome.inference_s * 1000:.1f} ms, "
        f"process {process_ms:.1f} ms, publish {publish_ms:.1f} ms, {e2e_text}"
    )


__all__ = ["Application", "batch_line", "load_configured_student", "quiet_model_loading"]
