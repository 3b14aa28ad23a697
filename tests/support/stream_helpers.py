"""Helpers of the stream tests (imported by the tests and conftest)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

from stream.kafka import consumer, ensure_topics
from stream.producer import produce_records
from stream.services import WorkerProcess
from stream.settings import Settings
from stream.store import ResultStore

ROOT = Path(__file__).resolve().parents[2]


def settings_env(s: Settings) -> dict[str, str]:
    """The environment that makes a child process see exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULCOT_") and k != "REDIS_URL"}
    env.update(s.env())
    env["OMP_NUM_THREADS"] = "1"
    return env


class WorkerProc(WorkerProcess):
    """The tests' worker: :class:`stream.services.WorkerProcess` from the repository root, one OpenMP thread."""

    def __init__(self, settings: Settings, log: Path, **env: str) -> None:
        super().__init__(settings, log, cwd=ROOT, **{"OMP_NUM_THREADS": "1", **env})


def png_b64(size: tuple[int, int] = (32, 32), colour: str = "red") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def post(i: int | str, **kw: Any) -> tuple[bytes, bytes]:
    pid = f"p{i}" if isinstance(i, int) else i
    body = {"id": pid, "text": f"post number {i}: a sunny day", **kw}
    return pid.encode(), json.dumps(body).encode()


def produce(settings: Settings, records: list[tuple[bytes | None, bytes]], rate: float = 0.0) -> int:
    return asyncio.run(produce_records(settings, records, settings.input_topic, rate=rate))


def create_topics(settings: Settings) -> None:
    asyncio.run(ensure_topics(settings))


def read_topic(settings: Settings, topic: str, want: int, timeout: float = 60.0) -> list[Any]:
    """Read ``topic`` from the start until ``want`` records (or timeout); returns the messages."""

    async def run() -> list[Any]:
        cons = consumer(settings, topic, group_id=None, auto_offset_reset="earliest")
        await cons.start()
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < want and time.monotonic() < deadline:
                got = await cons.getmany(timeout_ms=200)
                for msgs in got.values():
                    out.extend(msgs)
        finally:
            await cons.stop()
        return out

    return asyncio.run(run())


def wait_redis(settings: Settings, ids: list[str], timeout: float = 60.0, worker: WorkerProc | None = None) -> set[str]:
    """Wait until every id has ``result:{id}`` in Redis; returns the ids still missing."""
    store = ResultStore.from_settings(settings)
    missing = set(ids)
    deadline = time.monotonic() + timeout
    try:
        while missing and time.monotonic() < deadline:
            keys = sorted(missing)
            vals = store.client.mget([store.layout.result(i) for i in keys])
            missing -= {k for k, v in zip(keys, vals) if v}
            if missing:
                if worker is not None and not worker.alive():
                    raise AssertionError(f"worker exited ({worker.proc.returncode}):\n{worker.tail()}")
                time.sleep(0.2)
    finally:
        store.close()
    return missing


class Feeder:
    """Produces posts p0, p1, ... at ``rate`` per second in a background thread until stopped."""

    def __init__(self, settings: Settings, rate: float = 40.0, prefix: str = "p") -> None:
        import threading

        self.settings = settings
        self.rate = rate
        self.prefix = prefix
        self.sent: list[str] = []
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        from stream.kafka import producer

        async def go() -> None:
            prod = producer(self.settings)
            await prod.start()
            try:
                t0 = time.perf_counter()
                i = 0
                while not self._stop.is_set():
                    pid = f"{self.prefix}{i}"
                    body = {"id": pid, "text": f"post number {i}: a sunny day"}
                    await (await prod.send(self.settings.input_topic, key=pid.encode(), value=json.dumps(body).encode()))
                    self.sent.append(pid)
                    i += 1
                    wait = t0 + i / self.rate - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
            finally:
                await prod.stop()

        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise self.error
        return list(self.sent)


def results_by_worker(settings: Settings, ids: list[str]) -> dict[str, int]:
    from collections import Counter

    store = ResultStore.from_settings(settings)
    try:
        vals = store.client.mget([store.layout.result(i) for i in ids]) if ids else []
        return dict(Counter(json.loads(v)["worker"] for v in vals if v))
    finally:
        store.close()


def wait_until(cond, timeout: float, what: str, worker: WorkerProc | None = None) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    deadline = time.monotonic() + timeout
    while not cond():
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker exited ({worker.proc.returncode}) while waiting for {what}:\n{worker.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)
    if os.environ.get("MULCOT_TEST_TIMING"):
        print(f"[{time.monotonic() - t0:5.1f}s] {what}")


def committed_total(settings: Settings) -> int:
    """Sum over the input partitions of the worker group's committed offsets."""
    from aiokafka import TopicPartition

    async def run() -> int:
        cons = consumer(settings, group_id=settings.group_id, enable_auto_commit=False)
        await cons.start()
        try:
            parts = cons.partitions_for_topic(settings.input_topic) or set()
            if not parts:
                await cons._client.force_metadata_update()
                parts = cons.partitions_for_topic(settings.input_topic) or set()
            total = 0
            for p in parts:
                off = await cons.committed(TopicPartition(settings.input_topic, p))
                total += off or 0
            return total
        finally:
            await cons.stop()

    return asyncio.run(run())


class ImageServer:
    """A real local HTTP server counting requests by path (``hits``) and recording their Host
    headers (``hosts``): /ok.png (the image ``png``), /big (over the byte limit), /redirect (302 to
    the cloud metadata address), anything else 404; a query string does not change the route."""

    def __init__(self) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), "blue").save(buf, "PNG")
        png = self.png = buf.getvalue()
        self.hits: Counter[str] = Counter()
        self.hosts: list[str] = []
        hits, hosts = self.hits, self.hosts

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                hits[self.path] += 1
                hosts.append(self.headers.get("Host", ""))
                route = self.path.split("?", 1)[0]
                if route == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                    self.end_headers()
                    return
                body, code = {"/ok.png": (png, 200), "/big": (b"x" * 300_000, 200)}.get(route, (b"nope", 404))
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
