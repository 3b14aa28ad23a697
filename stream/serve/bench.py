"""``mulcot bench serve``: latency of the query API with N results in Redis.

Starts an embedded Valkey on a free port, writes ``results`` results with the worker's
write script (thumbnail and text included, as the worker writes them), starts the API
(uvicorn, one process) in this process's background thread, and times sequential GETs
from one client over loopback: idle, then while a writer adds ``rate`` results per second.
Optionally (``--browser``) opens the dashboard in headless Chromium while results arrive
at ``rate`` per second and reports the cards kept in the page and its longest main-thread
task. Prints a table (or JSON).
"""

from __future__ import annotations

import io
import json
import statistics
import threading
import time
from datetime import UTC, datetime
from typing import Any

LABELS = ("positive", "neutral", "negative")
ASPECTS = ("coffee", "the new phone", "museum", "japan", "weather")


def _result(i: int) -> Any:
    from ..protocol import SentimentResult

    label = LABELS[i % 3]
    probs = {lab: 0.1 for lab in LABELS}
    probs[label] = 0.8
    return SentimentResult(
        id=f"bench-{i}", aspect=ASPECTS[i % len(ASPECTS)] if i % 3 else None, label=label, confidence=0.8,
        probabilities=probs, has_image=True, model_name="bench", model_version="1",
        chain={"text_analysis": "The text praises the morning light and the quiet street." * 2,
               "image_analysis": "A sunny park with people walking; bright colours.",
               "conflict_resolution": "Text and image agree.", "final_conclusion": f"Overall {label}.",
               "prediction": label},
        timings={"queued_ms": 3, "inference_ms": 40, "end_to_end_ms": 60}, processed_at=datetime.now(UTC),
    )  # fmt: skip


def _thumb() -> bytes:
    from PIL import Image

    from ..images import thumbnail

    img = Image.effect_noise((640, 480), 50).convert("RGB")
    out = thumbnail(img)
    assert out is not None
    buf = io.BytesIO(out)
    return buf.getvalue()


def fill(store: Any, n: int, start: int = 0, thumb: bytes | None = None, now_ms: int | None = None) -> None:
    """Write results ``start .. start+n-1`` with the worker's script, pipelined."""
    from ..store import _WRITE_LUA

    sha = store.client.script_load(_WRITE_LUA)
    now_ms = now_ms or int(time.time() * 1000)
    for lo in range(start, start + n, 500):
        pipe = store.client.pipeline(transaction=False)
        for i in range(lo, min(lo + 500, start + n)):
            r = _result(i)
            keys, args = store.layout.write_args(r, r.model_dump_json().encode(), now_ms - (start + n - i) * 10, thumb,
                                                 f"post {i}: a morning in the park, coffee in hand")  # fmt: skip
            pipe.evalsha(sha, len(keys), *keys, *args)
        pipe.execute()


def _timed(client: Any, path: str, n: int) -> list[float]:
    out = []
    client.get(path)  # warm
    for _ in range(n):
        t0 = time.perf_counter()
        resp = client.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 200, (path, resp.status_code, resp.text[:200])
    return out


def _summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50_ms": ms[len(ms) // 2], "p95_ms": ms[int(len(ms) * 0.95) - 1], "p99_ms": ms[int(len(ms) * 0.99) - 1],
            "mean_ms": statistics.fmean(ms), "n": len(ms)}  # fmt: skip


def run_bench(results: int = 10_000, requests: int = 300, rate: float = 50.0, browser: bool = False,
              quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    import tempfile
    from pathlib import Path

    import httpx

    from ..services import EmbeddedRedis
    from ..settings import load_settings
    from ..store import ResultStore
    from . import start_background

    out: dict[str, Any] = {"results_in_redis": results, "requests_per_row": requests, "write_rate_per_s": rate, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(log_dir=Path(tmp)).start()
        try:
            s = load_settings(redis_url=redis.url, serve_port=0)
            store = ResultStore.from_settings(s)
            thumb = _thumb()
            t0 = time.perf_counter()
            fill(store, results, thumb=thumb)
            out["fill_s"] = time.perf_counter() - t0
            srv = start_background(s, port=0)
            paths = {
                "GET /api/results?recent=50": "/api/results?recent=50",
                "GET /api/results?recent=50&label=negative": "/api/results?recent=50&label=negative",
                "GET /api/results?recent=50&aspect=coffee": "/api/results?recent=50&aspect=coffee",
                "GET /api/results/{id}": f"/api/results/bench-{results - 7}",
                "GET /api/results/{id}/thumbnail": f"/api/results/bench-{results - 7}/thumbnail",
                "GET /api/stats?window=60&last=30": "/api/stats?window=60&last=30",
            }
            try:
                with httpx.Client(base_url=srv.url, timeout=30) as c:
                    for name, path in paths.items():
                        out["rows"][name] = _summary(_timed(c, path, requests))
                    stop = threading.Event()
                    writer = threading.Thread(target=_writer, args=(s, results, rate, stop, thumb), daemon=True)
                    writer.start()
                    try:
                        name = f"GET /api/results?recent=50 while {rate:g} results/s are written"
                        out["rows"][name] = _summary(_timed(c, "/api/results?recent=50", requests))
                        if browser:
                            out["browser"] = _browser(srv.url, seconds=15)
                    finally:
                        stop.set()
                        writer.join(10)
            finally:
                srv.stop()
                store.close()
        finally:
            redis.stop()
    if not quiet:
        _print(out)
    return out


def _writer(settings: Any, start: int, rate: float, stop: threading.Event, thumb: bytes) -> None:
    from ..store import ResultStore

    store = ResultStore.from_settings(settings)
    i, t0 = start, time.perf_counter()
    try:
        while not stop.is_set():
            fill(store, 5, start=i, thumb=thumb, now_ms=int(time.time() * 1000))  # 5 per tick, as a worker batch
            i += 5
            wait = t0 + (i - start) / rate - time.perf_counter()
            if wait > 0:
                stop.wait(wait)
    finally:
        store.close()


def _browser(url: str, seconds: float) -> dict[str, Any]:
    """Open the dashboard while results arrive; cards kept, results received, longest task."""
    import shutil

    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)  # Playwright polls with eval
        page.add_init_script(
            "window.__long = []; new PerformanceObserver(l => l.getEntries().forEach(e => window.__long.push(e.duration)))"
            ".observe({type: 'longtask', buffered: true});"
        )
        page.goto(url)
        page.wait_for_selector("#conn.on", timeout=15_000)
        page.evaluate("window.__long = []")
        time.sleep(seconds)
        got = page.evaluate(
            "({cards: document.querySelectorAll('#feed .card').length, rate: document.getElementById('rate').textContent,"
            " longest: Math.max(0, ...window.__long), long_tasks: window.__long.length})"
        )
        b.close()
    got["seconds"] = seconds
    return got


def _print(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # a table, not cut at 80 columns when piped
    t = Table(title=f"mulcot serve: {out['results_in_redis']:,} results in Redis, {out['requests_per_row']} sequential requests per row")
    for col in ("request", "p50 ms", "p95 ms", "p99 ms", "mean ms", "p50 / 50 ms target"):
        t.add_column(col, justify="left" if col == "request" else "right")
    for name, row in out["rows"].items():
        ratio = f"{row['p50_ms'] / 50:.2f}" if "recent=50" in name and "label" not in name and "aspect" not in name else ""
        t.add_row(name, f"{row['p50_ms']:.1f}", f"{row['p95_ms']:.1f}", f"{row['p99_ms']:.1f}", f"{row['mean_ms']:.1f}", ratio)
    console.print(t)
    if "browser" in out:
        b = out["browser"]
        console.print(f"dashboard in headless Chromium for {b['seconds']:g} s at {out['write_rate_per_s']:g} results/s: "
                        f"{b['cards']} cards kept, live rate shown {b['rate']}/s, {b['long_tasks']} long tasks "
                        f"(> 50 ms), longest {b['longest']:.0f} ms")  # fmt: skip
    console.print(f"(filling Redis took {out['fill_s']:.1f} s)")


def main(**kw: Any) -> None:
    print(json.dumps(run_bench(**kw), indent=2))


__all__ = ["run_bench", "fill"]
