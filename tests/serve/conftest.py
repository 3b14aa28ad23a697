"""Fixtures of the dashboard/API tests: the stream tests' real Tansu + Valkey (their
fixtures, from tests/support/stream_fixtures.py), a real worker (``noop`` student, the
same subprocess a user runs) that fills Redis from posts produced to Kafka, and
``mulcot serve`` on a free port, connected to Redis as a read-only ACL user so any write
the API tried would fail."""

from __future__ import annotations

import base64
import io
import json
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.stream_fixtures import services  # noqa: F401 - the stream tests' Tansu + Valkey

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "stream" / "samples" / "posts.jsonl"
ASPECTS = ["Coffee", "the new phone", "Museum"]


def png_b64(colour: tuple[int, int, int], size: tuple[int, int] = (120, 90)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def synthetic_posts(prefix: str, n: int, start: int = 0) -> list[tuple[bytes, bytes, dict[str, Any]]]:
    """``n`` posts with an image, most with an aspect; (key, value, body)."""
    out = []
    for i in range(start, start + n):
        body: dict[str, Any] = {
            "id": f"{prefix}{i}",
            "text": f"post {i}: {('what a lovely morning', 'the queue was endless', 'it rained, as forecast')[i % 3]}",
            "image_b64": png_b64(((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)),
        }
        if i % 4:
            body["aspect"] = ASPECTS[i % len(ASPECTS)]
        out.append((body["id"].encode(), json.dumps(body).encode(), body))
    return out


@dataclass
class Served:
    settings: Any  # the worker's settings (full access)
    url: str  # the API/dashboard base URL, ending in /
    ids: list[str]  # valid posts produced before the fixture returned (all in Redis)
    bodies: dict[str, dict[str, Any]]
    dead_codes: dict[str, int]  # dead letters expected from the samples, by code
    worker: Any
    ro_redis_url: str  # the read-only user's URL the API uses
    counter: list[int] = field(default_factory=lambda: [0])

    def produce(self, n: int, prefix: str = "live") -> list[str]:
        """Produce ``n`` more valid posts; returns their ids."""
        from tests.support.stream_helpers import produce

        start = self.counter[0]
        self.counter[0] += n
        posts = synthetic_posts(f"{prefix}-", n, start)
        produce(self.settings, [(k, v) for k, v, _ in posts])
        for _, _, body in posts:
            self.bodies[body["id"]] = body
        return [body["id"] for _, _, body in posts]


@pytest.fixture(scope="session")
def served(services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:  # noqa: F811
    from stream.producer import read_posts
    from stream.serve import start_background
    from stream.settings import load_settings
    from stream.store import ResultStore
    from tests.support.stream_helpers import WorkerProc, create_topics, produce

    kafka, redis_svc = services
    tmp = tmp_path_factory.mktemp("serve")
    tag = uuid.uuid4().hex[:8]
    settings = load_settings(
        broker=kafka.bootstrap, redis_url=redis_svc.url, input_topic=f"posts-{tag}", output_topic=f"results-{tag}",
        dlq_topic=f"dlq-{tag}", group_id=f"workers-{tag}", redis_prefix=f"s{tag}:", model_spec="noop", metrics_port=0,
        partitions=2, work_dir=str(tmp / "work"), max_latency_ms=100,
    )  # fmt: skip
    create_topics(settings)
    worker = WorkerProc(settings, tmp / "worker.log")
    try:
        samples = list(read_posts(SAMPLES))  # the demo's posts: images, aspects and some bad records
        bodies: dict[str, dict[str, Any]] = {}
        ids: list[str] = []
        for _key, value in samples:
            try:
                body = json.loads(value)
            except ValueError:
                continue
            if isinstance(body, dict) and isinstance(body.get("id"), str):
                bodies[body["id"]] = body
        synth = synthetic_posts("s-", 40)
        for _, _, body in synth:
            bodies[body["id"]] = body
        produce(settings, samples + [(k, v) for k, v, _ in synth])
        store = ResultStore.from_settings(settings)
        deadline = time.monotonic() + 120  # the worker's start (group join) plus the posts
        while time.monotonic() < deadline:  # every record is either a result or a counted dead letter
            if sum(store.dead_letter_counts().values()) + store.client.zcard(store.layout.recent) >= len(samples) + len(synth):
                break
            assert worker.alive(), worker.tail()
            time.sleep(0.3)
        dead_codes = store.dead_letter_counts()
        ids = [i for i in bodies if store.get(i) is not None]
        store.close()
        assert {b["id"] for _, _, b in synth} <= set(ids), worker.tail()
        # the API connects as a read-only user: any write it tried would fail (NOPERM)
        import redis as _redis

        admin = _redis.Redis.from_url(redis_svc.url)
        admin.execute_command("ACL", "SETUSER", f"dash{tag}", "on", f">pw{tag}", "resetkeys", f"~s{tag}:*",
                              "resetchannels", "-@all", "+@read", "+@connection", "-@write")  # fmt: skip
        admin.close()
        ro_url = redis_svc.url.replace("redis://", f"redis://dash{tag}:pw{tag}@")
        app_settings = load_settings(redis_url=ro_url, redis_prefix=settings.redis_prefix, serve_port=0)
        server = start_background(app_settings, port=0)
        try:
            yield Served(settings, server.url, ids, bodies, dead_codes, worker, ro_url)
        finally:
            server.stop()
    finally:
        worker.stop(signal.SIGTERM)
