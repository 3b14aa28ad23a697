"""``mulcot demo``: embedded Tansu + Valkey, one worker, the bundled samples, live output.

The worker runs as a child process (``python -m stream.cli worker``) exactly as a user
would run it; the demo reads the output and dead-letter topics as results arrive, then
checks the Redis cache and prints a summary. Everything is stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .protocol import DeadLetter, SentimentResult

SAMPLES = Path(__file__).parent / "samples" / "posts.jsonl"


class DemoError(RuntimeError):
    pass


def check_model(spec: str) -> None:
    """Fail with a clear message when ``spec`` is malformed or names a student whose weights
    are not there (``model.loading.check_spec``: before anything heavy is imported)."""
    from model.loading import SpecError, check_spec

    try:
        check_spec(spec)
    except SpecError as exc:
        raise DemoError(str(exc)) from None


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
            console.print(f"  from another terminal while it runs: export MULCOT_BROKER={kafka.bootstrap} "
                          f"MULCOT_REDIS_URL={redis.url}; then e.g. mulcot dead-letters", soft_wrap=True)  # fmt: skip
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


@dataclass
class DemoRun:
    """What one demo run saw: first result and dead letter per post, and the wall time."""

    sent: int
    results: dict[str, SentimentResult] = field(default_factory=dict)
    dead: dict[bytes, DeadLetter] = field(default_factory=dict)
    elapsed_s: float = 0.0
    in_redis: int = 0

    @property
    def done(self) -> int:
        return len(self.results) + len(self.dead)

    @property
    def ok(self) -> bool:
        return self.done == self.sent and self.in_redis == len(self.results)

    def summary(self) -> list[tuple[str, str]]:
        """The summary rows (what, value)."""
        labels = Counter(r.label for r in self.results.values())
        codes = Counter(d.error.value for d in self.dead.values())
        rows = [("posts sent", str(self.sent)), ("results (output topic)", str(len(self.results))),
                ("results in Redis", str(self.in_redis))]  # fmt: skip
        rows += [(f"  {lab}", str(labels.get(lab, 0))) for lab in ("positive", "neutral", "negative")]
        rows.append(("dead letters", str(len(self.dead))))
        rows += [(f"  {code}", str(n)) for code, n in sorted(codes.items())]
        if self.results:
            lat = sorted(r.timings.end_to_end_ms for r in self.results.values())
            any_r = next(iter(self.results.values()))
            rows.append(("student", f"{any_r.model_name} {any_r.model_version}"))
            rows.append(("end-to-end ms p50 / max", f"{lat[len(lat) // 2]:.0f} / {lat[-1]:.0f}"))
        rows.append(("wall time s (incl. model load)", f"{self.elapsed_s:.1f}"))
        return rows


async def run_posts(
    settings, records: list, log_dir: Path, timeout: float,  # type: ignore[type-arg]
    on_result: Callable[[SentimentResult], None] = lambda r: None,
    on_dead: Callable[[bytes, DeadLetter], None] = lambda k, d: None,
) -> DemoRun:  # fmt: skip
    """Start a worker with ``settings``, send ``records``, collect the first result or dead
    letter of each post as it arrives (``on_result`` / ``on_dead`` see each once), stop the
    worker, and count the results in Redis. No printing."""
    from .kafka import consumer, ensure_topics
    from .producer import produce_records
    from .services import WorkerProcess
    from .store import ResultStore

    await ensure_topics(settings)
    run = DemoRun(sent=len(records))
    worker = WorkerProcess(settings.model_copy(update={"work_dir": log_dir, "metrics_port": 0}), log_dir / "worker.log")
    cons = consumer(settings, settings.output_topic, settings.dlq_topic, group_id=None, auto_offset_reset="earliest")
    t0 = time.monotonic()
    try:
        await cons.start()
        await produce_records(settings, records, settings.input_topic)
        while run.done < len(records):
            if not worker.alive():
                raise DemoError(f"the worker exited with code {worker.proc.returncode}:\n{worker.tail(15)}")
            if time.monotonic() - t0 > timeout:
                raise DemoError(f"timed out after {timeout:.0f}s; worker log {worker.log}:\n{worker.tail(15)}")
            batch = await cons.getmany(timeout_ms=300)
            for tp, msgs in batch.items():
                for m in msgs:
                    if tp.topic == settings.output_topic:
                        r = SentimentResult.model_validate_json(m.value)
                        if r.id not in run.results:
                            run.results[r.id] = r
                            on_result(r)
                    elif m.key not in run.dead:
                        run.dead[m.key] = DeadLetter.model_validate_json(m.value)
                        on_dead(m.key, run.dead[m.key])
        run.elapsed_s = time.monotonic() - t0
    finally:
        await cons.stop()
        worker.stop()
    store = ResultStore.from_settings(settings)
    try:
        run.in_redis = sum(store.get(i) is not None for i in run.results)
    finally:
        store.close()
    return run


async def _demo(settings, samples: Path, log_dir: Path, timeout: float, console) -> int:  # type: ignore[no-untyped-def]
    """The demo's printing around :func:`run_posts`: a panel per result, a line per dead letter,
    a progress bar, then the summary table."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .producer import read_posts
    from .render import result_panel

    records = list(read_posts(samples))
    with Progress(
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(), console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("waiting for the worker (loading the student)", total=len(records))

        def on_result(r: SentimentResult) -> None:
            progress.console.print(result_panel(r, footer=False))
            progress.advance(task)
            progress.update(task, description="posts processed")

        def on_dead(key: bytes, d: DeadLetter) -> None:
            progress.console.print(f"[bold red]dead letter[/bold red] {d.post_id or key.decode(errors='replace')}: "
                                   f"[magenta]{d.error.value}[/magenta] - {d.message}")  # fmt: skip
            progress.advance(task)
            progress.update(task, description="posts processed")

        run = await run_posts(settings, records, log_dir, timeout, on_result, on_dead)
    table = Table(title="demo summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    for what, value in run.summary():
        table.add_row(what, value)
    console.print(table)
    console.print("[green]all posts accounted for[/green]" if run.ok else "[red]some posts are missing[/red]")
    return 0 if run.ok else 1

