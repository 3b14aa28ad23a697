"""``mulcot demo``: embedded Tansu + Valkey, one worker, the bundled samples, live output.

The worker runs as a child process (``python -m stream.cli worker``) exactly as a user
would run it; the demo reads the output and dead-letter topics as results arrive, then
checks the Redis cache and prints a summary. Everything is stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from .protocol import DeadLetter, SentimentResult

SAMPLES = Path(__file__).parent / "samples" / "posts.jsonl"


class DemoError(RuntimeError):
    pass


def check_model(spec: str) -> None:
    """Fail with a clear message when ``spec`` is malformed or names the default student
    whose weights are not there (before anything heavy is imported)."""
    from model import loading
    from model.loading import SpecError, parse_spec

    DEFAULT_WEIGHTS = loading.DEFAULT_WEIGHTS

    try:
        kind, target, _ = parse_spec(spec)
    except SpecError as exc:
        raise DemoError(str(exc)) from None
    if kind == "compact" and not Path(target).is_dir():
        raise DemoError(f"student weights folder {target!r} (spec {spec!r}) does not exist")
    if kind == "default" and not DEFAULT_WEIGHTS.exists():
        raise DemoError(
            f"the default student is not available: {DEFAULT_WEIGHTS} does not exist. "
            "Its weights come from the training work (see docs/model.md and docs/training.md); "
            "until they are there, use --model noop to run the pipeline with a model-free placeholder"
        )


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def run_demo(model_spec: str | None = None, samples: Path | None = None, timeout: float = 600.0,
             exit_after: bool = True) -> int:  # fmt: skip
    from rich.console import Console

    from .services import ServiceError, embedded_services
    from .settings import load_settings

    spec = model_spec or os.environ.get("MULCOT_MODEL_SPEC") or "default"
    check_model(spec)
    samples = samples or SAMPLES
    console = Console()
    base = load_settings(model_spec=spec)
    log_dir = (Path(base.work_dir) / "demo").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]mulcot demo[/bold]: student [cyan]{spec}[/cyan], posts from {samples}")
    try:
        with embedded_services(log_dir=log_dir) as (kafka, redis):
            console.print(f"  kafka (tansu) {kafka.bootstrap}, redis (valkey) {redis.url}, logs in {log_dir}")
            settings = load_settings(
                broker=kafka.bootstrap, redis_url=redis.url, model_spec=spec, group_id="mulcot-demo",
                metrics_port=0, max_batch=8, max_latency_ms=200,
            )  # fmt: skip
            from .serve import start_dashboard, wait_for_ctrl_c  # the dashboard (stream/serve, H2)

            dash = start_dashboard(settings)
            console.print(f"  dashboard [bold]{dash.url}[/bold]  (open it to watch the results arrive)")
            try:
                code = asyncio.run(_demo(settings, samples, log_dir, timeout, console))
                if not exit_after:
                    wait_for_ctrl_c(console, dash.url)
                return code
            finally:
                dash.stop()
    except ServiceError as exc:
        raise DemoError(str(exc)) from None


async def _demo(settings, samples: Path, log_dir: Path, timeout: float, console) -> int:  # type: ignore[no-untyped-def]
    from rich.panel import Panel
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .kafka import consumer, ensure_topics
    from .producer import produce_records, read_posts
    from .render import chain_text, label_text
    from .store import ResultStore

    await ensure_topics(settings)
    records = list(read_posts(samples))
    env = dict(os.environ)
    env.update(
        MULCOT_BROKER=settings.broker, MULCOT_REDIS_URL=settings.redis_url_value, MULCOT_MODEL_SPEC=settings.model_spec,
        MULCOT_GROUP_ID=settings.group_id, MULCOT_METRICS_PORT="0", MULCOT_MAX_BATCH=str(settings.max_batch),
        MULCOT_MAX_LATENCY_MS=str(settings.max_latency_ms), MULCOT_WORK_DIR=str(log_dir),
    )  # fmt: skip
    env.pop("REDIS_URL", None)
    worker_log = log_dir / "worker.log"
    log_fh = open(worker_log, "ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "worker"], env=env, stdout=log_fh, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    cons = consumer(settings, settings.output_topic, settings.dlq_topic, group_id=None, auto_offset_reset="earliest")
    results: dict[str, SentimentResult] = {}
    dead: dict[bytes, DeadLetter] = {}
    t0 = time.monotonic()
    try:
        await cons.start()
        await produce_records(settings, records, settings.input_topic)
        with Progress(
            SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), console=console,
        ) as progress:  # fmt: skip
            task = progress.add_task("waiting for the worker (loading the student)", total=len(records))
            while len(results) + len(dead) < len(records):
                if worker.poll() is not None:
                    raise DemoError(f"the worker exited with code {worker.returncode}:\n{_tail(worker_log)}")
                if time.monotonic() - t0 > timeout:
                    raise DemoError(f"timed out after {timeout:.0f}s; worker log {worker_log}:\n{_tail(worker_log)}")
                batch = await cons.getmany(timeout_ms=300)
                for tp, msgs in batch.items():
                    for m in msgs:
                        if tp.topic == settings.output_topic:
                            r = SentimentResult.model_validate_json(m.value)
                            if r.id in results:
                                continue
                            results[r.id] = r
                            progress.console.print(_result_panel(r, chain_text, label_text, Panel))
                        else:
                            d = DeadLetter.model_validate_json(m.value)
                            if m.key in dead:
                                continue
                            dead[m.key] = d
                            progress.console.print(
                                f"[bold red]dead letter[/bold red] {d.post_id or m.key.decode(errors='replace')}: "
                                f"[magenta]{d.error.value}[/magenta] - {d.message}"
                            )
                        progress.update(task, completed=len(results) + len(dead), description="posts processed")
        elapsed = time.monotonic() - t0
    finally:
        await cons.stop()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
        log_fh.close()

    store = ResultStore.from_settings(settings)
    try:
        in_redis = sum(store.get(i) is not None for i in results)
    finally:
        store.close()
    labels = Counter(r.label for r in results.values())
    codes = Counter(d.error.value for d in dead.values())
    lat = sorted(r.timings.end_to_end_ms for r in results.values())
    table = Table(title="demo summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("posts sent", str(len(records)))
    table.add_row("results (output topic)", str(len(results)))
    table.add_row("results in Redis", str(in_redis))
    for lab in ("positive", "neutral", "negative"):
        table.add_row(f"  {lab}", str(labels.get(lab, 0)))
    table.add_row("dead letters", str(len(dead)))
    for code, n in sorted(codes.items()):
        table.add_row(f"  {code}", str(n))
    if results:
        any_r = next(iter(results.values()))
        table.add_row("student", f"{any_r.model_name} {any_r.model_version}")
        table.add_row("end-to-end ms p50 / max", f"{lat[len(lat) // 2]:.0f} / {lat[-1]:.0f}")
    table.add_row("wall time s (incl. model load)", f"{elapsed:.1f}")
    console.print(table)
    ok = len(results) + len(dead) == len(records) and in_redis == len(results)
    console.print("[green]all posts accounted for[/green]" if ok else "[red]some posts are missing[/red]")
    return 0 if ok else 1


def _result_panel(r: SentimentResult, chain_text, label_text, Panel):  # type: ignore[no-untyped-def]
    from rich.text import Text

    title = Text.assemble(r.id, "  ", label_text(r.label), f"  {r.confidence:.2f}")
    if r.aspect:
        title.append(f"  aspect: {r.aspect}", style="cyan")
    return Panel(chain_text(r), title=title, title_align="left", expand=True)
