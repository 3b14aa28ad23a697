"""``mulcot alerts run``: the live detector, a process of its own beside the workers.

It consumes the output topic (``sentiment.results``) in its own consumer group
(``alerts_group_id``), keeps its counts in Redis (:class:`~stream.alerts.state.RedisState`),
publishes each alert to the compacted ``alerts_topic`` (key: the alert id) and commits its
offsets only after a poll's results are counted and the windows they closed are evaluated and
published. So a crash re-reads results that are already counted (counted once: by post id)
and repeats at most one window, whose alerts it finds stored and publishes again unchanged.

Why a process of its own and not an agent in the worker: the model worker's hot path stays as
it is (no extra Redis round trip per batch, no second topic in its group), the detector can be
restarted, upgraded or re-tuned without touching the workers, and one detector sees every
partition of the results, which the counts of one scope need. Its state is in Redis, so a
second detector in the same group (failover, or a rolling restart) shares it and raises the
same alerts under the same keys. Workers killed mid-batch redeliver results: counted once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from ..delivery import until_done
from ..metrics import AlertMetrics
from ..protocol import Alert
from ..settings import Settings
from ..sinks import RetryPolicy
from ..store import KeyLayout
from .config import AlertConfig
from .detector import Detector
from .state import RedisState

log = logging.getLogger("mulcot.alerts")

POLL_MS = 1000
MAX_RECORDS = 5000


async def ensure_alerts_topic(settings: Settings, timeout_s: float = 30.0) -> bool:
    """Create the compacted alerts topic (one partition: alerts stay in order) if missing."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

    from ..kafka import BrokerUnavailable

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=int(timeout_s * 1000),
                                **settings.kafka_auth())  # fmt: skip
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (TimeoutError, KafkaConnectionError, OSError) as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {settings.broker}: {exc or type(exc).__name__}") from None
    try:
        if settings.alerts_topic in set(await admin.list_topics()):
            return False
        topic = NewTopic(settings.alerts_topic, 1, settings.replication_factor, topic_configs={"cleanup.policy": "compact"})
        try:
            await admin.create_topics([topic])
        except TopicAlreadyExistsError:
            return False
        except KafkaError as exc:  # some brokers refuse topic configs
            log.warning("creating %s compacted failed (%s); creating it plain", settings.alerts_topic, exc)
            try:
                await admin.create_topics([NewTopic(settings.alerts_topic, 1, settings.replication_factor)])
            except TopicAlreadyExistsError:
                return False
        return True
    finally:
        await admin.close()


class AlertRunner:
    """The live detector: ``AlertRunner(settings).run()`` until :meth:`stop` (or SIGINT/SIGTERM)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = AlertConfig.from_settings(settings)
        self.metrics = AlertMetrics()
        self.state = RedisState(settings.redis_url_value, KeyLayout.from_settings(settings), self.config)
        self.detector = Detector(self.config, self.state, counters=self.metrics)
        self.policy = RetryPolicy()
        self.stopping: asyncio.Event | None = None
        self.assigned = False
        self.producer: Any = None

    def stop(self) -> None:
        if self.stopping is not None:
            self.stopping.set()

    async def _send(self, alerts: list[Alert]) -> None:
        acks = [await self.producer.send(self.settings.alerts_topic, key=a.id.encode(), value=a.model_dump_json().encode())
                for a in alerts]  # fmt: skip
        await asyncio.gather(*acks)

    def _step(self, values: list[bytes | None], loop: asyncio.AbstractEventLoop) -> int:
        """Count one poll's results and evaluate the windows they closed (in a thread; each
        window's alerts are published, and acknowledged by Kafka, before it is marked evaluated)."""

        def publish(alerts: list[Alert]) -> None:
            asyncio.run_coroutine_threadsafe(until_done(self.policy, "publishing alerts", lambda: self._send(alerts)), loop).result()

        if values:
            report = self.detector.ingest(values)
            if report.late or report.rejected:
                log.info("results counted apart: %d late, rejected %s", report.late, dict(report.rejected))
        return len(self.detector.run_due(publish))

    async def _commit(self, cons: Any) -> None:
        """Commit what was read. A failed commit (a rebalance took the partitions meanwhile) is
        logged: whoever reads them next counts those results again, which changes nothing."""
        from aiokafka.errors import KafkaError

        try:
            await cons.commit()
        except KafkaError as exc:
            log.warning("committing the detector's offsets failed (%s: %s); they are read again", type(exc).__name__, exc)

    async def run(self) -> None:
        from aiokafka.errors import KafkaError

        from ..health import HealthServer
        from ..kafka import BrokerUnavailable, consumer, producer

        s = self.settings
        self.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        if s.alerts_metrics_port:
            HealthServer(self.metrics.registry, {"assigned": lambda: self.assigned}).start(s.alerts_metrics_port)
        quiet = logging.getLogger("aiokafka")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # an unreachable broker is reported once, as BrokerUnavailable
        try:
            if s.create_topics:
                await ensure_alerts_topic(s)
            cons = consumer(s, s.output_topic, group_id=s.alerts_group_id, auto_offset_reset=s.auto_offset_reset)
            self.producer = producer(s)
            try:
                await cons.start()
                await self.producer.start()
            except (KafkaError, OSError) as exc:
                await cons.stop()
                await self.producer.stop()
                raise BrokerUnavailable(f"cannot reach Kafka at {s.broker}: {exc or type(exc).__name__}") from None
        finally:
            quiet.setLevel(level)
        log.info("alert detector: %s -> %s, windows %s s, baseline %d s, lateness %d s, FDR %g", s.output_topic,
                 s.alerts_topic, list(s.alerts_windows_s), s.alerts_baseline_s, s.alerts_lateness_s, s.alerts_fdr)  # fmt: skip
        try:
            while not self.stopping.is_set():
                got = await cons.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
                self.assigned = bool(cons.assignment())
                values = [m.value for msgs in got.values() for m in msgs]
                await until_done(self.policy, "alert detector step", lambda v=values: asyncio.to_thread(self._step, v, loop))
                if got:
                    await self._commit(cons)
        finally:
            await cons.stop()
            await self.producer.stop()
            self.state.close()
            log.info("alert detector stopped")


def run_detector(settings: Settings) -> None:
    """Run the live detector in the foreground (blocking) until SIGINT/SIGTERM."""
    logging.basicConfig(level=settings.log_level.upper().replace("WARN", "WARNING"),
                        format="[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s")  # fmt: skip
    asyncio.run(AlertRunner(settings).run())


__all__ = ["AlertRunner", "run_detector", "ensure_alerts_topic"]
