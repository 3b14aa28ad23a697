"""Plain aiokafka helpers for the CLI tools (produce, results, demo, bench) and topic setup.

The worker itself runs on Faust (``stream.app``); these clients share its settings,
including SASL/TLS pass-through. No idempotent producer and no transactions: Tansu (the
embedded broker) fails them with aiokafka 0.14, and the stream is at-least-once anyway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from .checks import BrokerUnavailable  # defined there (no aiokafka import), raised here too
from .settings import Settings

log = logging.getLogger("mulcot.kafka")

MAX_REQUEST = 8 * 1024 * 1024  # largest produce request / partition fetch (the worker's Faust app uses the same)
MAX_BATCH = 1024 * 1024  # producer batch size




def producer(settings: Settings, **kw: Any) -> AIOKafkaProducer:
    opts: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap_servers,
        linger_ms=settings.producer_linger_ms,
        max_batch_size=MAX_BATCH,
        max_request_size=MAX_REQUEST,
        acks="all",
        request_timeout_ms=30_000,
        **settings.kafka_auth(),
    )
    opts.update(kw)
    return AIOKafkaProducer(**opts)


def consumer(settings: Settings, *topics: str, **kw: Any) -> AIOKafkaConsumer:
    opts: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap_servers,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_partition_fetch_bytes=MAX_REQUEST,
        fetch_max_bytes=4 * MAX_REQUEST,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_s * 1000),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **settings.kafka_auth(),
    )
    opts.update(kw)
    return AIOKafkaConsumer(*topics, **opts)


async def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the input, output (compacted) and dead-letter topics if missing; returns those created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=int(timeout_s * 1000), **settings.kafka_auth()
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (TimeoutError, KafkaConnectionError, OSError) as exc:
        from .checks import describe

        raise BrokerUnavailable(f"cannot reach Kafka at {settings.broker}: {describe(exc)}") from None
    try:
        existing = set(await admin.list_topics())
        wanted = {
            settings.input_topic: {},
            settings.output_topic: {"cleanup.policy": "compact"},
            settings.dlq_topic: {},
        }
        new = [
            NewTopic(name, settings.partitions, settings.replication_factor, topic_configs=cfg)
            for name, cfg in wanted.items()
            if name not in existing
        ]
        created = []
        for topic in new:
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:
                # some brokers refuse topic configs; retry plain
                log.warning("creating %s with %s failed (%s); retrying without configs", topic.name, topic.topic_configs, exc)
                try:
                    await admin.create_topics([NewTopic(topic.name, topic.num_partitions, topic.replication_factor)])
                    created.append(topic.name)
                except TopicAlreadyExistsError:
                    pass
        return created
    finally:
        await admin.close()


def ensure_topics_sync(settings: Settings) -> list[str]:
    return asyncio.run(ensure_topics(settings))


__all__ = ["producer", "consumer", "ensure_topics", "ensure_topics_sync", "BrokerUnavailable"]
