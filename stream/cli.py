"""The ``mulcot`` command line.

Stream verbs live here; other packages add verbs through the entry-point group
``mulcot.commands`` (for example training's ``distill`` and ``data``), and benchmark
subcommands through ``mulcot.bench``, so this module never imports them.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click

from .protocol import ErrorCode
from .settings import Settings, SettingsError, settings_from

PLUGIN_GROUP = "mulcot.commands"
BENCH_GROUP = "mulcot.bench"


class PluginGroup(click.Group):
    """A click group that also lists the commands registered under an entry-point group."""

    def __init__(self, *args: Any, plugin_group: str = PLUGIN_GROUP, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.plugin_group = plugin_group

    def _plugins(self) -> dict[str, Any]:
        try:
            return {ep.name: ep for ep in entry_points(group=self.plugin_group)}
        except Exception:  # pragma: no cover - broken metadata
            return {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(n for n in self._plugins() if n not in names)
        return sorted(names)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the verb; a connection failure that reaches here (refused, timeout, another
        protocol, refused credentials) becomes one ``Error:`` line instead of a traceback."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            from .checks import expected_failure

            line = expected_failure(exc)
            if line is None:
                raise
            raise click.ClickException(line) from None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        ep = self._plugins().get(name)
        if ep is None:
            return None
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the other verbs
            return _broken(name, ep.value, exc)
        if not isinstance(obj, click.Command):
            return _broken(name, ep.value, TypeError("entry point is not a click command"))
        return obj


def _broken(name: str, target: str, exc: Exception) -> click.Command:
    @click.command(name, help=f"(unavailable: {target} failed to load: {exc})", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def _cmd(args: Any) -> None:
        raise click.ClickException(f"command {name!r} ({target}) could not be loaded: {type(exc).__name__}: {exc}")

    return _cmd


def _common(f: Any) -> Any:
    f = click.option("--broker", help="Kafka bootstrap servers (env MULCOT_BROKER)")(f)
    f = click.option("--redis-url", help="Redis URL (env MULCOT_REDIS_URL or REDIS_URL)")(f)
    return f


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mulcot-stream", prog_name="mulcot")
def main() -> None:
    """mulcot: streaming multimodal sentiment with reasoning chains.

    Posts (JSON, key = post id) arrive on a Kafka topic; workers label each with
    positive/neutral/negative plus a five-field reasoning chain, publish results to an
    output topic and cache them in Redis. Settings come from MULCOT_* environment
    variables or .env (see `mulcot config`). Start with `mulcot demo`.
    """
    import logging

    # Kafka client errors are reported as one line by the verbs; keep aiokafka from printing
    # through Python's last-resort handler before logging is configured (the worker's Faust
    # logging still receives them).
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())


# --- config ---------------------------------------------------------------------------
@main.command("config")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of a table")
def config_cmd(as_json: bool) -> None:
    """Print the effective settings (env + .env + defaults), secrets masked."""
    s = settings_from()
    values = s.masked()
    if as_json:
        click.echo(json.dumps(values, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    rows = [(name, f"MULCOT_{name.upper()}", value if isinstance(value, str) else json.dumps(value, default=str))
            for name, value in values.items()]  # fmt: skip
    table = Table(title="mulcot settings", show_lines=False)
    table.add_column("setting", no_wrap=True)
    table.add_column("env variable", no_wrap=True)
    table.add_column("value", overflow="fold")
    for row in rows:
        table.add_row(*row)
    # never cut at 80 columns: as wide as the longest row (a terminal's width only when wider),
    # and a terminal narrower than the names folds the values instead of eliding them
    console = Console()
    need = sum(max(len(r[i]) for r in rows + [("setting", "env variable", "value")]) for i in range(3)) + 10
    if not console.is_terminal:
        console = Console(width=max(need, 80))
    console.print(table)


# --- worker ---------------------------------------------------------------------------
@main.command("worker")
@_common
@click.option("--model", "model_spec", help="student spec: default, noop, compact:DIR, hf:MODEL (env MULCOT_MODEL_SPEC)")
@click.option("--max-batch", type=int, help="most posts per model batch (env MULCOT_MAX_BATCH)")
@click.option("--max-latency-ms", type=int, help="longest wait to fill a batch (env MULCOT_MAX_LATENCY_MS)")
@click.option("--metrics-port", type=int, help="Prometheus port, 0 = off (env MULCOT_METRICS_PORT)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warn", "error"]), help="log level")
def worker_cmd(**opts: Any) -> None:
    """Run a worker: consume posts, label them, publish results + dead letters, write Redis.

    Runs in the foreground until Ctrl-C / SIGTERM. Checks Kafka and Redis first (one line and
    exit 1 within seconds when either does not answer), then loads the student. Start several
    with the same group id (MULCOT_GROUP_ID) to share the input partitions. Delivery is at-least-once: offsets
    are committed only after the outputs are acknowledged by Kafka and written to Redis.
    """
    s = settings_from(**opts)
    from .checks import CacheUnavailable, check_kafka, check_redis
    from .demo import DemoError, check_model
    from .kafka import BrokerUnavailable

    try:
        check_model(s.model_spec)  # fail fast, before importing torch
        check_kafka(s)  # and before the student loads: a wrong address is one line in seconds
        check_redis(s)
    except (DemoError, BrokerUnavailable, CacheUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    from .app import Application, quiet_model_loading

    quiet_model_loading(s)
    try:
        app = Application(s)
        app.load_student()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        raise click.ClickException(_model_load_message(s.model_spec, exc)) from None
    try:
        app.run_worker()
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None


def _model_load_message(spec: str, exc: Exception) -> str:
    from model.loading import load_error_message

    return load_error_message(spec, exc)


# --- services -------------------------------------------------------------------------
@main.group("services")
def services_grp() -> None:
    """Embedded Kafka (Tansu) and Redis (Valkey) for local runs."""


@services_grp.command("up")
@_common
@click.option("--log-dir", type=click.Path(path_type=Path), help="where the service logs go (default WORK_DIR/services)")
def services_up(broker: str | None, redis_url: str | None, log_dir: Path | None) -> None:
    """Run Tansu and Valkey in the foreground on the addresses in settings.

    Defaults: broker 127.0.0.1:9092, cache redis://127.0.0.1:6379/0, which every other
    verb also uses, so `mulcot services up & mulcot services wait; mulcot worker &` then
    `mulcot produce FILE` works with no configuration. Ctrl-C / SIGTERM stops both. Storage
    is in memory.
    """
    import signal
    import threading

    from .services import ServiceError, embedded_services

    s = settings_from(broker=broker, redis_url=redis_url)
    log_dir = log_dir or Path(s.work_dir) / "services"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with embedded_services(s.bootstrap_servers[0], s.redis_url_value, log_dir) as (kafka, redis):
            click.echo(f"kafka (tansu)  {kafka.bootstrap}   log {kafka.log_path}")
            click.echo(f"redis (valkey) {redis.url}   log {redis.log_path}")
            click.echo("running; Ctrl-C to stop", err=True)
            while not stop.wait(0.5):
                if not (kafka.running and redis.running):
                    raise click.ClickException("a service exited; see the logs above")
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("stopped", err=True)


@services_grp.command("wait")
@_common
@click.option("--timeout", type=float, default=30.0, show_default=True, help="give up after this many seconds")
def services_wait(broker: str | None, redis_url: str | None, timeout: float) -> None:
    """Wait until Kafka and Redis on the settings' addresses answer (a metadata request and a
    PING); exit 1 with the last reason after TIMEOUT. For scripts, after `mulcot services up &`."""
    import time

    from .checks import CacheUnavailable, check_kafka, check_redis
    from .kafka import BrokerUnavailable

    s = settings_from(broker=broker, redis_url=redis_url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_kafka(s, timeout_s=min(3.0, max(0.5, deadline - time.monotonic())))
            check_redis(s, timeout_s=min(3.0, max(0.5, deadline - time.monotonic())))
            break
        except (BrokerUnavailable, CacheUnavailable) as exc:
            if time.monotonic() >= deadline:
                raise click.ClickException(f"{exc} (waited {timeout:g} s)") from None
            time.sleep(0.3)
    click.echo(f"kafka at {s.broker} and redis at {s.masked()['redis_url']} answer")


# --- produce --------------------------------------------------------------------------
@main.command("produce")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_common
@click.option("--topic", help="topic to write to (default: the input topic setting)")
@click.option("--rate", type=float, default=0.0, help="posts per second (0 = as fast as possible)")
@click.option("--limit", type=int, default=0, help="stop after N posts (0 = all)")
@click.option("--strict", is_flag=True, help="refuse the file at its first bad line (invalid JSON, schema error, "
              "missing image file); nothing is sent")  # fmt: skip
@click.option("--skip-invalid", is_flag=True, help="do not send lines with invalid JSON or a schema error "
              "(default: send them, so the worker dead-letters them with their reason)")  # fmt: skip
def produce_cmd(file: Path, broker: str | None, redis_url: str | None, topic: str | None, rate: float, limit: int,
                strict: bool, skip_invalid: bool) -> None:  # fmt: skip
    """Send the posts of a JSONL file to the input topic (key = post id).

    Lines in the research format ({id, text, aspect, label, image: relative path}) are
    converted: the image file is read and inlined as image_b64, the gold label kept in
    metadata.gold_label. Lines already in the Post format pass through. Every line is checked:
    invalid JSON and schema errors are sent as they are (the worker dead-letters them) unless
    --skip-invalid, a missing image file sends the post without it; each is reported with its
    line number. Progress is shown on stderr, a summary at the end.
    """
    import asyncio

    from .checks import check_kafka
    from .kafka import BrokerUnavailable
    from .producer import StrictError, check_file, count_lines, produce_file
    from .progress import Progress

    s = settings_from(broker=broker, redis_url=redis_url)
    topic = topic or s.input_topic
    try:
        if strict:
            check_file(file, limit)
        check_kafka(s)
    except (StrictError, BrokerUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    issues = [0]
    with Progress(f"produce {file.name}", count_lines(file, limit), unit="posts") as bar:

        def on_line(line: Any, sent: bool) -> None:
            if line.problem is not None:
                issues[0] += 1
                bar.describe(f"produce {file.name} ({issues[0]} with problems)")
            bar.advance(1)

        try:
            report = asyncio.run(produce_file(s, file, topic=topic, rate=rate, limit=limit, skip_invalid=skip_invalid,
                                              on_line=on_line))  # fmt: skip
        except BrokerUnavailable as exc:
            raise click.ClickException(str(exc)) from None
    for line in report.summary(topic):
        click.echo(line)


# --- results --------------------------------------------------------------------------
@main.command("results")
@click.option("--redis-url", help="Redis URL (env MULCOT_REDIS_URL or REDIS_URL)")
@click.option("--post", "post_id", help="one post's result")
@click.option("--recent", type=int, help="the N newest results (default 10)")
@click.option("--aspect", help="the newest results about an aspect (case-insensitive)")
@click.option("--label", type=click.Choice(["positive", "neutral", "negative"]), help="only results with this label")
@click.option("-n", "limit", type=int, default=10, show_default=True, help="how many with --aspect / --label")
@click.option("--wait", "wait_s", type=float, default=0.0, help="wait up to this many seconds until the answer is "
              "complete (--post: its result; else N results), then print it; exit 1 if it is not")  # fmt: skip
@click.option("--follow", "-f", is_flag=True, help="then keep printing new results as they arrive (Ctrl-C to stop)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON array of SentimentResult objects (with --follow: one object per line)")
def results_cmd(redis_url: str | None, post_id: str | None, recent: int | None, aspect: str | None, label: str | None,
                limit: int, wait_s: float, follow: bool, as_json: bool) -> None:  # fmt: skip
    """Show results from the Redis cache (by post, newest, or by aspect and/or label).

    Nothing matching is not an error: it says on stderr which filters it used and where it
    looked, and exits 0 (with --json it prints []). With --wait it waits for a complete answer
    first and exits 1 when the wait runs out. With --follow, prints the matching results first,
    then each new one as the workers write it (from the Redis events stream).
    """
    import redis as _redis

    from .checks import CacheUnavailable, check_redis, redis_message
    from .store import ResultStore

    if post_id is not None and (recent is not None or aspect is not None or label is not None or follow):
        raise click.UsageError("--post cannot be combined with --recent, --aspect, --label or --follow")
    if recent is not None and aspect is not None:
        raise click.UsageError("give at most one of --recent, --aspect (use -n for how many)")
    s = settings_from(redis_url=redis_url)
    try:
        check_redis(s)
    except CacheUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    store = ResultStore.from_settings(s)
    where = f"Redis at {s.masked()['redis_url']} (key prefix {s.redis_prefix!r})"
    n = recent or limit
    try:
        last_event = store.last_event_id() if follow else None
        results = _query(store, post_id, n, aspect, label, wait_s)
        complete = len(results) >= (1 if post_id is not None else n)
        if not results and not as_json:
            click.echo(f"no result for post {post_id!r} in {where} (not processed yet, or expired)" if post_id is not None
                       else _nothing_matched(store, n, aspect, label, where), err=True)  # fmt: skip
    except _redis.exceptions.RedisError as exc:
        raise click.ClickException(redis_message(s, exc)) from None
    if not follow:
        store.close()
    if wait_s and not complete:
        if as_json:
            click.echo(json.dumps([r.model_dump(mode="json") for r in results], indent=2))
        raise click.ClickException(f"waited {wait_s:g} s: {len(results)} of {1 if post_id is not None else n} "
                                   f"results{_filters_text(aspect, label)} in {where}")  # fmt: skip
    if as_json and not follow:
        click.echo(json.dumps([r.model_dump(mode="json") for r in results], indent=2))
        return
    from rich.console import Console

    from .render import result_line, result_panel, results_table

    console = Console()
    if as_json:
        for r in reversed(results):
            click.echo(r.model_dump_json())
    elif results and post_id is not None:
        console.print(result_panel(results[0]))  # the chain at full width (a table column wraps it narrow)
    elif results:
        console.print(results_table(results))
    if follow:
        show = (lambda r: click.echo(r.model_dump_json())) if as_json else (lambda r: console.print(result_line(r)))
        _follow_until_ctrl_c(store, s, last_event, aspect, label, show)


def _follow_until_ctrl_c(store: Any, s: Settings, last_event: str | None, aspect: str | None, label: str | None,
                         show: Any) -> None:
    """``results --follow``: each new matching result through ``show`` until Ctrl-C."""
    import redis as _redis

    from .checks import redis_message

    click.echo(f"following new results{_filters_text(aspect, label)} (Ctrl-C to stop)", err=True)
    # Ctrl-C sets a flag that the loop reads between reads (at most a second apart) instead of
    # raising KeyboardInterrupt wherever the interpreter is: raised inside the Redis client's
    # connection pool it could leave a lock held, and closing the store then hung
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        _follow(store, last_event or "0-0", aspect, label, show, stop)
    except _redis.exceptions.RedisError as exc:
        raise click.ClickException("lost " + redis_message(s, exc).removeprefix("cannot reach ")) from None
    finally:
        signal.signal(signal.SIGINT, previous)
        store.close()


def _query(store: Any, post_id: str | None, n: int, aspect: str | None, label: str | None, wait_s: float) -> list[Any]:
    """The results asked for; with ``wait_s``, polled until complete or the time runs out."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        if post_id is not None:
            got = store.get(post_id)
            results = [got] if got else []
        else:
            results = store.matching(n, aspect, label)
        if len(results) >= (1 if post_id is not None else n) or time.monotonic() >= deadline:
            return results
        time.sleep(0.5)


def _filters_text(aspect: str | None, label: str | None) -> str:
    parts = [f"aspect={aspect!r}" if aspect is not None else "", f"label={label!r}" if label else ""]
    shown = ", ".join(p for p in parts if p)
    return f" ({shown})" if shown else ""


def _nothing_matched(store: Any, n: int, aspect: str | None, label: str | None, where: str) -> str:
    filters = [f"newest {n}"] + ([f"aspect {aspect!r} (case-insensitive)"] if aspect is not None else []) + (
        [f"label {label!r}"] if label else [])  # fmt: skip
    msg = f"no results matched; filters: {', '.join(filters)}; looked in {where}."
    total = store.indexed()
    if not total:
        return msg + " The cache holds no results yet: is a worker running, and were posts produced to its input topic?"
    msg += f" The cache holds {total} results."
    if aspect is not None:
        names = store.aspects()
        if names:
            msg += " Aspects with results include: " + ", ".join(repr(a) for a in names) + "."
    return msg


def _follow(store: Any, last: str, aspect: str | None, label: str | None, emit: Any, stop: threading.Event) -> None:
    """Print each new result (after events entry ``last``) that matches the filters, until ``stop``."""
    while not stop.is_set():
        entries = store.events_after(last, block_ms=1000, count=200)
        if not entries:
            continue
        last = entries[-1][0]
        for r in store.new_results(entries, aspect, label):
            emit(r)


# --- label ----------------------------------------------------------------------------
@main.command("label")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", default="-", show_default=True, help="results: one SentimentResult JSON per line (or CSV with "
              "--format csv); - for stdout")  # fmt: skip
@click.option("--dead-letters", "dead_letters", type=click.Path(dir_okay=False), help="dead letters, one DeadLetter JSON "
              "per line (default: OUT with .dead.jsonl; with --out -: one line each on stderr)")  # fmt: skip
@click.option("--model", "model_spec", help="student spec: default, noop, compact:DIR, hf:MODEL (env MULCOT_MODEL_SPEC)")
@click.option("--no-chain", is_flag=True, help="labels and probabilities only (no reasoning chain; much faster)")
@click.option("--batch-size", type=click.IntRange(1, 10_000), help="posts per model batch (env MULCOT_MAX_BATCH)")
@click.option("--limit", type=int, default=0, help="only the first N posts of the file (0 = all)")
@click.option("--resume", is_flag=True, help="continue OUT: skip the ids (and dead-lettered lines) already written")
@click.option("--overwrite", is_flag=True, help="replace OUT (and the dead-letter file) when it exists")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True,
              help="csv: id, label, confidence, the five chain fields (one line each), gold_label")  # fmt: skip
def label_cmd(file: Path, out: str, dead_letters: str | None, model_spec: str | None, no_chain: bool,
              batch_size: int | None, limit: int, resume: bool, overwrite: bool, fmt: str) -> None:  # fmt: skip
    """Label the posts of a JSONL file offline (no Kafka, no Redis), with the worker's student,
    schema validation, image checks and dead-letter codes.

    Lines are Posts or research-format rows (converted as `mulcot produce` does; the gold label
    is kept in the result's `metadata`). Output is flushed after every batch; after a crash,
    run again with --resume to finish the file without repeating a post. Progress (posts/s,
    time left) goes to stderr, then a one-line summary.
    """
    from .demo import DemoError, check_model
    from .label import LabelError, LabelJob, already_done, run_label, to_label
    from .progress import Progress

    s = settings_from(model_spec=model_spec, chain=False if no_chain else None, max_batch=batch_size)
    job = LabelJob(s, file, out=out, fmt=fmt, dead_letters=dead_letters, batch_size=s.max_batch, limit=limit,
                   resume=resume, overwrite=overwrite)  # fmt: skip
    try:
        job.check()
        done = already_done(job)  # --resume: what the last run wrote (a torn last line is cut)
        check_model(s.model_spec)
    except (LabelError, DemoError) as exc:
        raise click.ClickException(str(exc)) from None
    from .app import load_configured_student, quiet_model_loading

    quiet_model_loading(s)
    click.echo(f"loading student {s.model_spec} ...", err=True)
    try:
        student = load_configured_student(s)
    except Exception as exc:
        raise click.ClickException(_model_load_message(s.model_spec, exc)) from None
    try:
        with Progress(f"label {file.name}", to_label(job, done), unit="posts") as bar:
            job.note = bar.note
            report = run_label(job, student, bar, done)
    except LabelError as exc:
        raise click.ClickException(str(exc)) from None
    except BrokenPipeError:  # `--out - | head`: the reader left; what was written stands (--resume needs a file)
        sys.stderr.close()
        sys.exit(1)
    except Exception as exc:
        if not getattr(exc, "transient", False):  # a model server down or refusing us: one line, no traceback
            raise
        from .checks import describe

        raise click.ClickException(f"the student is unavailable: {describe(exc)}; rerun with --resume") from None
    click.echo(report.summary(out if out != "-" else "stdout", str(job.dead_path) if job.dead_path else None), err=True)


# --- dead letters -----------------------------------------------------------------------
@main.command("dead-letters")
@click.option("--broker", help="Kafka bootstrap servers (env MULCOT_BROKER)")
@click.option("--recent", type=click.IntRange(0), default=20, show_default=True, help="the N newest (0: all)")
@click.option("--code", type=click.Choice(sorted(c.value for c in ErrorCode)), help="only dead letters with this error code")
@click.option("--follow", "-f", is_flag=True, help="then keep printing new dead letters as they arrive (Ctrl-C to stop)")
@click.option("--json", "as_json", is_flag=True, help="one JSON array of DeadLetter records (with --follow: one per line)")
def dead_letters_cmd(broker: str | None, recent: int, code: str | None, follow: bool, as_json: bool) -> None:
    """Read the dead-letter topic (MULCOT_DLQ_TOPIC, default posts.dlq) from the broker: each
    invalid post's error code, message, post id, source coordinates and size, and the original
    record when it is inline.

    Newest first; with --follow, oldest first and then each new one as the workers write it.
    A record redelivered after a worker crash is listed once. Nothing found is not an error.
    """
    import asyncio

    from rich.console import Console

    from .checks import check_kafka
    from .deadletters import TopicMissing, entry_block, read_dead_letters
    from .kafka import BrokerUnavailable

    s = settings_from(broker=broker)
    try:
        check_kafka(s)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    console = Console()

    def emit(e: Any) -> None:
        if as_json:
            click.echo(e.dead.model_dump_json())
        else:
            console.print(entry_block(e))

    stop = threading.Event() if follow else None
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) if stop is not None else None
    try:
        if follow:
            click.echo(f"following {s.dlq_topic} on {s.broker}{f' (code {code})' if code else ''} (Ctrl-C to stop)", err=True)
        entries, bad = asyncio.run(read_dead_letters(s, recent=recent or None, code=code, on_entry=emit, stop=stop))
    except TopicMissing:
        entries, bad = [], -1
        click.echo(f"topic {s.dlq_topic} does not exist on {s.broker} (no worker has written dead letters there yet)", err=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if follow:
        return
    if as_json:
        click.echo(json.dumps([e.dead.model_dump(mode="json") for e in entries], indent=2))
    else:
        for e in entries:
            console.print(entry_block(e))
    if not entries and bad >= 0:
        click.echo(f"no dead letters{f' with code {code}' if code else ''} on {s.dlq_topic} at {s.broker}", err=True)
    if bad > 0:
        click.echo(f"warning: {bad} records on {s.dlq_topic} are not dead letters (skipped)", err=True)


# --- serve ----------------------------------------------------------------------------
@main.command("serve")
@click.option("--redis-url", help="Redis URL (env MULCOT_REDIS_URL or REDIS_URL)")
@click.option("--host", help="address to bind (env MULCOT_SERVE_HOST; default 127.0.0.1, this machine only)")
@click.option("--port", type=int, help="port (env MULCOT_SERVE_PORT; default 8765; 0 = any free port)")
def serve_cmd(redis_url: str | None, host: str | None, port: int | None) -> None:
    """Serve the read-only query API and the live dashboard over the Redis result cache.

    The dashboard is at / and the API under /api/ (spec: /api/openapi.json; see
    docs/dashboard.md). Nothing is written to Redis. Binds 127.0.0.1 by default; set
    MULCOT_SERVE_TOKEN to require `Authorization: Bearer <token>` on /api/ (the page
    takes it from its URL: /#token=...), MULCOT_SERVE_CORS_ORIGINS to allow other origins.
    Runs in the foreground until Ctrl-C.
    """
    import ipaddress

    from .checks import CacheUnavailable, check_redis
    from .serve import serve, url_of

    s = settings_from(redis_url=redis_url, serve_host=host, serve_port=port)
    try:
        check_redis(s)
    except CacheUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    try:
        loopback = ipaddress.ip_address(s.serve_host).is_loopback
    except ValueError:
        loopback = s.serve_host == "localhost"
    if not loopback and s.serve_token is None:
        click.echo(f"warning: serving on {s.serve_host} without a token: anyone who can reach it reads the results "
                   "(set MULCOT_SERVE_TOKEN)", err=True)  # fmt: skip
    port = s.serve_port
    if port == 0:
        from .services import free_port

        port = free_port(s.serve_host)
    url = url_of(s.serve_host, port)
    click.echo(f"dashboard {url}   API {url}api/   spec {url}api/openapi.json   (Ctrl-C to stop)")
    serve(s, port=port)


# --- demo -----------------------------------------------------------------------------
@main.command("demo")
@click.option("--model", "model_spec", default=None, help="student spec (default: the default student)")
@click.option("--samples", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSONL of posts (default: the bundled samples)")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="give up after this many seconds")
@click.option("--exit", "exit_after", is_flag=True, help="exit after the summary instead of serving the dashboard until Ctrl-C")
def demo_cmd(model_spec: str | None, samples: Path | None, timeout: float, exit_after: bool) -> None:
    """Run everything locally: embedded Kafka + Redis, a worker with the default student,
    the bundled sample posts in, each result printed as it arrives, a summary at the end.
    The dashboard (`mulcot serve`) runs meanwhile at the printed URL and keeps serving
    after the summary until Ctrl-C (or exit at once with --exit).

    Uses free loopback ports (not your settings' addresses), so it does not clash with a
    running `mulcot services up`. Everything is stopped at the end.
    """
    from .demo import DemoError, run_demo

    try:
        code = run_demo(model_spec=model_spec, samples=samples, timeout=timeout, exit_after=exit_after)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


# --- bench ----------------------------------------------------------------------------
@main.group("bench", cls=PluginGroup, plugin_group=BENCH_GROUP)
def bench_grp() -> None:
    """Benchmarks (print a table, or JSON). More are added via the `mulcot.bench` entry points."""


@bench_grp.command("stream")
@click.option("--posts", type=int, default=5000, show_default=True, help="posts per throughput run")
@click.option("--image-kb", type=int, default=20, show_default=True, help="approximate inline JPEG size (0: text-only posts)")
@click.option("--max-batch", type=int, default=256, show_default=True, help="worker batch size")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def bench_stream(posts: int, image_kb: int, max_batch: int, as_json: bool) -> None:
    """The pipeline's own ceiling with the no-op model: Kafka -> worker -> Kafka + Redis.

    Starts embedded Tansu + Valkey on free ports, measures a raw aiokafka
    consume->produce loop and the worker (model spec `noop`) on the same posts, then
    end-to-end latency p50/p99 at half the worker's throughput.
    """
    from .bench import run_bench

    result = run_bench(posts=posts, image_kb=image_kb, max_batch=max_batch, quiet=as_json)
    if as_json:
        click.echo(json.dumps(result, indent=2))


@bench_grp.command("serve")
@click.option("--results", type=int, default=10_000, show_default=True, help="results written to Redis first")
@click.option("--requests", type=int, default=300, show_default=True, help="sequential requests per row")
@click.option("--rate", type=float, default=50.0, show_default=True, help="results/s written during the last row (and the browser run)")
@click.option("--browser", is_flag=True, help="also open the dashboard in headless Chromium while results arrive")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def bench_serve(results: int, requests: int, rate: float, browser: bool, as_json: bool) -> None:
    """Latency of `mulcot serve`'s API with N results in an embedded Valkey (idle, then
    while results are written), and optionally the dashboard's responsiveness."""
    from .serve.bench import run_bench

    out = run_bench(results=results, requests=requests, rate=rate, browser=browser, quiet=as_json)
    if as_json:
        click.echo(json.dumps(out, indent=2))


# --- alerts ---------------------------------------------------------------------------
from .alerts.cli import alerts as _alerts  # noqa: E402 - registered after main exists

main.add_command(_alerts)


if __name__ == "__main__":  # python -m stream.cli
    main()
