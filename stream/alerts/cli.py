"""``mulcot alerts``: run the live detector, replay it over a results file, read recent alerts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


def _settings(**overrides: Any) -> Any:
    from ..settings import settings_from

    return settings_from(**overrides)


@click.group("alerts")
def alerts() -> None:
    """Sentiment-shift alerts: per aspect and overall, a window whose negative or positive share,
    or whose volume, departs from its trailing baseline beyond chance (docs/alerts.md)."""


@alerts.command("run")
@click.option("--broker", help="Kafka bootstrap servers (env MULCOT_BROKER)")
@click.option("--redis-url", help="Redis URL (env MULCOT_REDIS_URL or REDIS_URL)")
@click.option("--metrics-port", "alerts_metrics_port", type=int, help="Prometheus port, 0 = off (env MULCOT_ALERTS_METRICS_PORT)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warn", "error"]), help="log level")
def run_cmd(**opts: Any) -> None:
    """Run the detector: consume the results topic in its own consumer group, keep its counts
    in Redis, publish alerts to the alerts topic (key: alert id) and Redis.

    Runs in the foreground until Ctrl-C / SIGTERM. Parameters: the MULCOT_ALERTS_* settings
    (`mulcot config`). A restart resumes from Redis and the group's committed offsets.
    """
    import redis as _redis

    from ..kafka import BrokerUnavailable
    from .runner import run_detector

    s = _settings(**opts)
    try:
        run_detector(s)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except _redis.exceptions.ConnectionError as exc:
        raise click.ClickException(f"cannot reach Redis at {s.masked()['redis_url']}: {exc}") from None


@alerts.command("replay")
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write the alerts here (default: standard output)")
def replay_cmd(results: Path, out: Path | None) -> None:
    """Run the detector over RESULTS.jsonl (SentimentResult lines, the output topic's format)
    with no broker and no Redis; one Alert JSON a line.

    Event time: source.timestamp_ms, else processed_at. Lines that are not results, or whose
    event time is absurd (before 2006, more than a day ahead), are counted apart; the summary
    goes to standard error. Parameters: the MULCOT_ALERTS_* settings.
    """
    from .config import AlertConfig
    from .replay import replay, result_lines

    s = _settings()
    fh = open(out, "w", encoding="utf-8") if out else sys.stdout
    try:
        def publish(batch: list[Any]) -> None:
            for a in batch:
                fh.write(a.model_dump_json() + "\n")
            fh.flush()

        found, report = replay(result_lines(results), AlertConfig.from_settings(s), publish=publish)
    finally:
        if out:
            fh.close()
    apart = ", ".join(f"{n} {reason}" for reason, n in sorted(report.rejected.items())) or "none"
    click.echo(f"{report.counted} results counted ({report.duplicate} duplicates, {report.relabelled} relabelled, "
               f"{report.late} late), counted apart: {apart}; {len(found)} alerts"
               + (f" written to {out}" if out else ""), err=True)  # fmt: skip


@alerts.command("recent")
@click.option("--redis-url", help="Redis URL (env MULCOT_REDIS_URL or REDIS_URL)")
@click.option("-n", "limit", type=int, default=10, show_default=True, help="how many")
@click.option("--json", "as_json", is_flag=True, help="one JSON array of Alert objects")
def recent_cmd(redis_url: str | None, limit: int, as_json: bool) -> None:
    """The alerts with the newest windows, from Redis (newest first)."""
    import redis as _redis

    from ..store import ResultStore

    s = _settings(redis_url=redis_url)
    store = ResultStore.from_settings(s)
    try:
        found = store.alerts(limit)
        apart = store.alert_counts()
    except _redis.exceptions.ConnectionError as exc:
        raise click.ClickException(f"cannot reach Redis at {s.masked()['redis_url']}: {exc}") from None
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([a.model_dump(mode="json") for a in found], indent=2))
        return
    if not found:
        click.echo("no alerts in Redis (is `mulcot alerts run` running?)", err=True)
    for a in found:
        click.echo(alert_line(a))
    if apart:
        click.echo("counted apart by the detector: " + ", ".join(f"{k} {v}" for k, v in sorted(apart.items())), err=True)


def alert_line(a: Any) -> str:
    """One line for an alert: when, what, how big, how sure, examples."""
    from datetime import UTC, datetime

    start = datetime.fromtimestamp(a.window_start_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
    end = datetime.fromtimestamp(a.window_end_ms / 1000, UTC).strftime("%H:%M")
    if a.observed.share is not None:
        what = f"{a.observed.share:.0%} of {a.observed.count} posts vs {a.baseline.share:.0%} of {a.baseline.count} before"
    else:
        what = f"{a.observed.count} posts vs {a.expected:.1f} expected ({a.effect:.1f}x)"
    return f"{start}-{end} UTC  {a.kind:<15} {a.scope!r}: {what}; p {a.p_value:.2g}, q {a.q_value:.2g}; e.g. {', '.join(a.examples)}"


__all__ = ["alerts", "alert_line"]
