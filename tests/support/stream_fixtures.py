"""Fixtures of the stream tests (and the chaos suite, which imports them): a real Tansu
broker and a real Valkey on free loopback ports (one each per test session), unique topics
per test, and worker subprocesses run exactly as a user runs them (``python -m stream.cli worker``)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.services import EmbeddedKafka, EmbeddedRedis
from stream.settings import Settings, load_settings
from tests.support.stream_helpers import WorkerProc


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedKafka, EmbeddedRedis]]:
    logs = tmp_path_factory.mktemp("services")
    kafka = EmbeddedKafka(log_dir=logs).start()
    try:
        redis = EmbeddedRedis(log_dir=logs).start()
    except BaseException:
        kafka.stop()
        raise
    try:
        yield kafka, redis
    finally:
        redis.stop()
        kafka.stop()


@pytest.fixture
def make_settings(services, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Settings on the test services with topics, group and Redis prefix unique to the test."""
    kafka, redis = services

    def make(**overrides: Any) -> Settings:
        tag = uuid.uuid4().hex[:8]
        base: dict[str, Any] = dict(
            broker=kafka.bootstrap,
            redis_url=redis.url,
            input_topic=f"posts-{tag}",
            output_topic=f"results-{tag}",
            dlq_topic=f"dlq-{tag}",
            group_id=f"workers-{tag}",
            redis_prefix=f"t{tag}:",
            model_spec="noop",
            metrics_port=0,
            partitions=4,
            work_dir=str(tmp_path / "work"),
            log_level="info",
        )
        base.update(overrides)
        return load_settings(**base)

    return make


@pytest.fixture
def start_worker(tmp_path: Path):  # type: ignore[no-untyped-def]
    procs: list[WorkerProc] = []

    def start(settings: Settings, **env: str) -> WorkerProc:
        w = WorkerProc(settings, tmp_path / f"worker-{len(procs)}.log", **env)
        procs.append(w)
        return w

    yield start
    for w in procs:
        w.stop(signal.SIGKILL if w.alive() else signal.SIGTERM)
    for w in procs:
        assert w.proc.poll() is not None, "worker process left running"


