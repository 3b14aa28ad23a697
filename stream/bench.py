"""``mulcot bench stream``: the pipeline's own ceiling, with the no-op student.

In one run, on embedded Tansu + Valkey (free loopback ports):

1. raw: a plain aiokafka consume -> produce loop (consumer group, batches, awaited acks,
   offset commits) over N preloaded posts - what the broker and client allow;
2. worker: the real worker (``python -m stream.cli worker``, model spec ``noop``) over N
   preloaded posts: validation, image decoding, the (no-op) model off the loop, results
   to Kafka and Redis, at-least-once commits;
3. latency: posts sent at half the worker's measured rate for a few seconds; end-to-end
   latency = arrival of the result at a downstream consumer - the post's record timestamp.

Throughput is taken from the output records' timestamps (first to last), the same way for
both loops. Posts carry ~``image_kb`` KB JPEG images inline (base64).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import platform
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _jpeg(target_kb: int, seed: int) -> bytes:
    """A photo-like JPEG of about ``target_kb`` KB at 320 x 240 (like the research images:
    at most 320 px, quality 85): gradients, shapes and a little noise, quality tuned to size."""
    from PIL import Image, ImageDraw, ImageFilter

    rnd = random.Random(seed)
    w, h = 320, 240
    img = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    d = ImageDraw.Draw(img)
    for _ in range(40):
        x, y = rnd.randrange(w), rnd.randrange(h)
        r = rnd.randrange(8, 60)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noise = Image.effect_noise((w, h), 40).convert("RGB")
    img = Image.blend(img, noise, 0.25)
    best = b""
    for q in range(95, 10, -5):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        best = buf.getvalue()
        if len(best) <= target_kb * 1024 * 1.1:
            break
    return best


def make_posts(n: int, image_kb: int, prefix: str = "b") -> list[tuple[bytes, bytes]]:
    images = [base64.b64encode(_jpeg(image_kb, seed)).decode() for seed in range(8)] if image_kb > 0 else []
    texts = ["what a great day at the beach", "the train is late again", "meeting at 10 in room 4",
             "love this new phone", "worst service ever", "the museum opens on monday"]  # fmt: skip
    out = []
    for i in range(n):
        pid = f"{prefix}{i}"
        body: dict[str, Any] = {"id": pid, "text": f"{texts[i % len(texts)]} #{i}"}
        if images:
            body["image_b64"] = images[i % len(images)]
        if i % 4 == 0:
            body["aspect"] = "train"
        out.append((pid.encode(), json.dumps(body).encode()))
    return out


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


async def _raw_loop(settings, src: str, dst: str, n: int) -> float:  # type: ignore[no-untyped-def]
    from .kafka import consumer, producer

    cons = consumer(settings, src, group_id=f"raw-{os.getpid()}", max_poll_records=1000)
    prod = producer(settings)
    await cons.start()
    await prod.start()
    done = 0
    try:
        while done < n:
            got = await cons.getmany(timeout_ms=500, max_records=1000)
            futs = []
            for msgs in got.values():
                for m in msgs:
                    futs.append(await prod.send(dst, key=m.key, value=m.value))
            await asyncio.gather(*futs)
            if futs:
                await cons.commit()
            done += len(futs)
    finally:
        await cons.stop()
        await prod.stop()
    return await _rate_from_timestamps(settings, dst, n)


async def _rate_from_timestamps(settings, topic: str, n: int) -> float:  # type: ignore[no-untyped-def]
    from .kafka import consumer

    cons = consumer(settings, topic, group_id=None)
    await cons.start()
    ts: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(ts) < n and time.monotonic() < deadline:
            got = await cons.getmany(timeout_ms=300, max_records=5000)
            for msgs in got.values():
                ts.extend(m.timestamp for m in msgs)
    finally:
        await cons.stop()
    if len(ts) < 2:
        return 0.0
    span = (max(ts) - min(ts)) / 1000.0
    return (len(ts) - 1) / span if span > 0 else float("inf")


async def _wait_redis(settings, n: int, timeout: float, worker: subprocess.Popen, first: dict | None = None) -> int:  # type: ignore[no-untyped-def]
    """Wait for ``n`` results in Redis; ``first`` gets the worker's CPU seconds and the count
    when the first results appear (so start-up is not counted as per-post CPU)."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(settings.redis_url_value)
    deadline = time.monotonic() + timeout
    count = 0
    try:
        while time.monotonic() < deadline:
            count = await r.zcard(f"{settings.redis_prefix}recent")
            if first is not None and count and "cpu" not in first:
                first.update(cpu=_proc_cpu_s(worker.pid), count=count)
            if count >= n:
                break
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with code {worker.returncode}")
            await asyncio.sleep(0.1)
    finally:
        await r.aclose()
    return count


async def _latency(settings, records, rate: float) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    from .kafka import consumer
    from .producer import produce_records

    cons = consumer(settings, settings.output_topic, group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=20)
    await cons.start()
    await cons.seek_to_end()
    # make sure the consumer has its position before the first post is sent
    for tp in cons.assignment():
        await cons.position(tp)
    want = {k.decode() for k, _ in records}
    lat: list[float] = []
    worker_e2e: list[float] = []
    seen: set[str] = set()

    async def collect() -> None:
        from .protocol import SentimentResult

        deadline = time.monotonic() + len(records) / rate + 60
        while len(seen) < len(want) and time.monotonic() < deadline:
            got = await cons.getmany(timeout_ms=100, max_records=5000)
            now_ms = time.time() * 1000
            for msgs in got.values():
                for m in msgs:
                    key = m.key.decode()
                    if key in want and key not in seen:
                        seen.add(key)
                        r = SentimentResult.model_validate_json(m.value)
                        lat.append(now_ms - r.source.timestamp_ms)
                        worker_e2e.append(r.timings.end_to_end_ms)

    task = asyncio.create_task(collect())
    await produce_records(settings, records, settings.input_topic, rate=rate)
    await task
    await cons.stop()
    return lat, worker_e2e


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _worker(ws, log_dir: Path, mode: str):  # type: ignore[no-untyped-def]
    """The real worker process with the no-op student (:class:`stream.services.WorkerProcess`)."""
    from .services import WorkerProcess

    return WorkerProcess(ws.model_copy(update={"image_decode": mode, "log_level": "warn", "metrics_port": 0}),
                         log_dir / "worker.log")  # fmt: skip


def _measure_worker(ws, records, log_dir: Path, mode: str, say: Callable[[str], None], latency_seconds: float,
                    image_kb: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]  # fmt: skip
    """One worker (``image_decode=mode``) over ``records`` preloaded on its topics: its rate and
    CPU ms per post; with ``latency_seconds``, then the latency phase at half that rate."""
    from .kafka import ensure_topics
    from .producer import produce_records

    posts = len(records)
    asyncio.run(ensure_topics(ws))
    say(f"worker (noop student, image_decode={mode}) ...")
    asyncio.run(produce_records(ws, records, ws.input_topic))
    worker = _worker(ws, log_dir, mode)
    try:
        first: dict = {}
        got = asyncio.run(_wait_redis(ws, posts, 300, worker.proc, first))
        cpu_ms = (_proc_cpu_s(worker.pid) - first["cpu"]) * 1000 / max(1, posts - first["count"])
        if got < posts:
            raise RuntimeError(f"only {got}/{posts} results in Redis; see {worker.log}")
        out: dict[str, Any] = {"rate": asyncio.run(_rate_from_timestamps(ws, ws.output_topic, posts)), "cpu_ms": cpu_ms}
        if latency_seconds:
            out["lat_rate"] = lat_rate = max(1.0, out["rate"] / 2)
            n_lat = max(50, min(int(lat_rate * latency_seconds), 20_000))
            say(f"latency at {lat_rate:.0f} posts/s ({n_lat} posts) ...")
            out["lat"], out["worker_e2e"] = asyncio.run(_latency(ws, make_posts(n_lat, image_kb, prefix="L"), lat_rate))
        return out
    finally:
        worker.stop()


def measure_stream(posts: int = 5000, image_kb: int = 20, max_batch: int = 256, latency_seconds: float = 8.0,
                   say: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:  # fmt: skip
    """Run the three measurements (see the module docstring) and return their figures;
    ``say`` gets one progress line per phase. No printing of its own."""
    from .kafka import ensure_topics
    from .producer import produce_records
    from .services import embedded_services
    from .settings import load_settings

    log_dir = Path(tempfile.mkdtemp(prefix="mulcot-bench-"))
    started = datetime.now(UTC)
    load0 = os.getloadavg()[0]
    with embedded_services(log_dir=log_dir) as (kafka, redis):
        s = load_settings(
            broker=kafka.bootstrap, redis_url=redis.url, model_spec="noop", group_id="bench-workers",
            input_topic="bench.posts", output_topic="bench.results", dlq_topic="bench.dlq", metrics_port=0,
            max_batch=max_batch, max_latency_ms=50, work_dir=str(log_dir), partitions=4, log_level="warn",
        )  # fmt: skip
        raw_s = s.model_copy(update={"input_topic": "raw.in", "output_topic": "raw.out", "dlq_topic": "raw.dlq"})
        asyncio.run(ensure_topics(raw_s))
        say(f"generating {posts} posts with ~{image_kb} KB images ..." if image_kb else f"generating {posts} text-only posts ...")
        records = make_posts(posts, image_kb)
        avg_bytes = sum(len(v) for _, v in records) / len(records)

        say("raw aiokafka consume->produce loop ...")
        asyncio.run(produce_records(raw_s, records, raw_s.input_topic))
        cpu0 = time.process_time()
        raw_rate = asyncio.run(_raw_loop(raw_s, raw_s.input_topic, raw_s.output_topic, posts))
        raw_cpu_ms = (time.process_time() - cpu0) * 1000 / posts  # includes reading the timestamps back

        # the worker twice over the same posts: decoding every image's pixels (image_decode=full,
        # what a student that reads pixels costs) and the default (auto: the no-op student does
        # not read pixels, so image headers are checked only) - the latency phase runs on the latter
        workers: dict[str, dict[str, Any]] = {}
        for mode in ("full", "auto"):
            ws = s if mode == "auto" else s.model_copy(update={
                "input_topic": "bench.full.posts", "output_topic": "bench.full.results", "dlq_topic": "bench.full.dlq",
                "group_id": "bench-full", "redis_prefix": "full:"})  # fmt: skip
            workers[mode] = _measure_worker(ws, records, log_dir, mode, say, latency_seconds if mode == "auto" else 0.0, image_kb)
    rate, lat_rate, lat, worker_e2e = (workers["auto"][k] for k in ("rate", "lat_rate", "lat", "worker_e2e"))
    worker_cpu_ms, full_rate = workers["auto"]["cpu_ms"], workers["full"]["rate"]
    return {
        "posts": posts,
        "post_bytes_avg": round(avg_bytes),
        "image_kb": image_kb,
        "max_batch": max_batch,
        "posts_per_s": round(rate, 1),
        "raw_posts_per_s": round(raw_rate, 1),
        "ratio": round(rate / raw_rate, 3) if raw_rate else None,
        "latency_rate_posts_per_s": round(lat_rate, 1),
        "latency_posts": len(lat),
        "p50_ms": round(_pct(lat, 0.50), 1),
        "p99_ms": round(_pct(lat, 0.99), 1),
        "worker_cpu_ms_per_post": round(worker_cpu_ms, 3),
        "full_decode_posts_per_s": round(full_rate, 1),
        "full_decode_ratio": round(full_rate / raw_rate, 3) if raw_rate else None,
        "full_decode_worker_cpu_ms_per_post": round(workers["full"]["cpu_ms"], 3),
        "raw_cpu_ms_per_post": round(raw_cpu_ms, 3),
        "load_avg_at_start": round(load0, 2),
        "worker_e2e_p50_ms": round(_pct(worker_e2e, 0.50), 1),
        "worker_e2e_p99_ms": round(_pct(worker_e2e, 0.99), 1),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "broker": "Tansu (embedded, memory://)",
        "cache": "Valkey (embedded)",
    }


def bench_table(result: dict[str, Any]):  # type: ignore[no-untyped-def]
    """The figures of :func:`measure_stream` as a rich table (ratios side by side)."""
    from rich.table import Table

    r = result
    lat_rate = r["latency_rate_posts_per_s"]
    table = Table(title=f"mulcot bench stream ({r['posts']} posts, ~{r['post_bytes_avg'] / 1024:.1f} KB each, noop student)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("raw aiokafka consume->produce, posts/s", f"{r['raw_posts_per_s']:,.0f}")
    table.add_row("worker (Kafka -> worker -> Kafka + Redis), posts/s", f"{r['posts_per_s']:,.0f}")
    table.add_row("ratio worker / raw", f"{r['ratio']}")
    table.add_row("worker decoding every image (image_decode=full), posts/s", f"{r['full_decode_posts_per_s']:,.0f}")
    table.add_row("ratio worker decoding every image / raw", f"{r['full_decode_ratio']}")
    table.add_row(f"end-to-end p50 at {lat_rate:,.0f} posts/s, ms", f"{r['p50_ms']}")
    table.add_row(f"end-to-end p99 at {lat_rate:,.0f} posts/s, ms", f"{r['p99_ms']}")
    table.add_row("worker-side e2e p50 / p99, ms", f"{r['worker_e2e_p50_ms']} / {r['worker_e2e_p99_ms']}")
    table.add_row("worker CPU ms per post (auto / full decode)",
                  f"{r['worker_cpu_ms_per_post']} / {r['full_decode_worker_cpu_ms_per_post']}")  # fmt: skip
    table.add_row("raw loop CPU ms per post", f"{r['raw_cpu_ms_per_post']}")
    table.add_row("load average at start (other jobs)", f"{r['load_avg_at_start']}")
    return table


def run_bench(posts: int = 5000, image_kb: int = 20, max_batch: int = 256, quiet: bool = False,
              latency_seconds: float = 8.0) -> dict[str, Any]:  # fmt: skip
    """``mulcot bench stream``: :func:`measure_stream`, progress on stderr and the table on stdout
    unless ``quiet``; returns the figures."""
    from rich.console import Console

    progress = Console(stderr=True, quiet=quiet)
    result = measure_stream(posts, image_kb, max_batch, latency_seconds, say=progress.print)
    if not quiet:
        Console().print(bench_table(result))
    return result
