"""Synthetic result streams for the alert detector's tests and its tuning (never real data).

:func:`stream` draws, for each of ``aspects`` aspects, a Poisson process of posts at a rate
drawn uniformly from ``rate`` posts per hour (fixed per aspect), each labelled negative /
positive / neutral with the given shares. A :class:`Change` alters one aspect for a stretch of
time: its negative share (the other labels keep their ratio) and/or its rate. Aspects are
spelt with varying case and spacing (``"Topic 07"``, ``" topic  07"``...), as producers do;
the Redis layout folds them into one.

``python -m tests.support.alerts_synth`` prints the tuning table of docs/alerts.md: alerts on
no-change days for several seeds, and the surge's detection at several start offsets.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from stream.alerts.windows import Observation
from stream.store import aspect_key_part

START_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z
SPELLINGS = ("Topic {:02d}", "topic {:02d}", " TOPIC  {:02d} ", "Topic\t{:02d}")
LABELS = ("positive", "neutral", "negative")


@dataclass(frozen=True)
class Change:
    """Aspect number ``aspect`` from ``start_s`` (seconds after the stream's start) for
    ``duration_s``: negative share ``negative`` (None: unchanged) and ``rate_factor`` x posts."""

    aspect: int
    start_s: float
    duration_s: float = 600.0
    negative: float | None = None
    rate_factor: float = 1.0


@dataclass(frozen=True)
class Post:
    post_id: str
    aspect: str  # as spelt by the producer
    label: str
    event_ms: int


def aspect_name(i: int) -> str:
    return f"topic {i:02d}"


def stream(hours: float, *, seed: int, aspects: int = 40, rate: tuple[float, float] = (60.0, 300.0),
           negative: float = 0.2, positive: float = 0.6, changes: Sequence[Change] = (),
           fixed_rates: dict[int, float] | None = None, start_ms: int = START_MS) -> list[Post]:  # fmt: skip
    """The posts of ``hours`` hours, in event-time order (see the module docstring)."""
    rng = np.random.default_rng(seed)
    rates = rng.uniform(rate[0], rate[1], aspects)
    for i, r in (fixed_rates or {}).items():
        rates[i] = r
    span = hours * 3600.0
    neutral = 1.0 - negative - positive
    posts: list[Post] = []
    for a in range(aspects):
        times = rng.uniform(0.0, span, rng.poisson(rates[a] * hours))
        mine = [c for c in changes if c.aspect == a]
        for c in mine:  # extra posts of a volume change
            if c.rate_factor > 1:
                extra = rng.poisson(rates[a] * (c.rate_factor - 1) * c.duration_s / 3600.0)
                times = np.concatenate([times, rng.uniform(c.start_s, c.start_s + c.duration_s, extra)])
        times.sort()
        neg = np.full(len(times), negative)
        for c in mine:
            if c.negative is not None:
                neg[(times >= c.start_s) & (times < c.start_s + c.duration_s)] = c.negative
        u = rng.uniform(size=len(times))  # negative below neg, then positive, then neutral
        pos_cut = neg + (1.0 - neg) * positive / (positive + neutral)
        labels = np.where(u < neg, 2, np.where(u < pos_cut, 0, 1))
        spelt = rng.integers(len(SPELLINGS), size=len(times))
        names = [s.format(a) for s in SPELLINGS]
        for k in range(len(times)):
            posts.append(Post(f"a{a:02d}-{k:05d}", names[spelt[k]], LABELS[labels[k]], start_ms + int(times[k] * 1000)))
    posts.sort(key=lambda p: (p.event_ms, p.post_id))
    return posts


def observations(posts: Iterable[Post]) -> list[Observation]:
    """The posts as the detector counts them (aspects folded as the Redis layout folds them)."""
    return [Observation(p.post_id, p.label, aspect_key_part(p.aspect) or None, p.event_ms) for p in posts]


def result_json(p: Post, *, partition: int = 0, offset: int = 0, model: str = "synthetic") -> str:
    """One ``SentimentResult`` JSON line for a post (event time in ``source.timestamp_ms``)."""
    from datetime import UTC, datetime

    probs = {k: 0.1 for k in ("positive", "neutral", "negative")}
    probs[p.label] = 0.8
    processed = datetime.fromtimestamp(p.event_ms / 1000 + 1.5, UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({
        "schema_version": 1, "id": p.post_id, "aspect": p.aspect, "label": p.label, "confidence": 0.8,
        "probabilities": probs, "chain": None, "model_name": model, "model_version": "1",
        "timings": {"queued_ms": 1.0, "inference_ms": 1.0, "end_to_end_ms": 1500.0}, "processed_at": processed,
        "source": {"topic": "posts", "partition": partition, "offset": offset, "timestamp_ms": p.event_ms},
    })  # fmt: skip


def surge(start_s: float, aspect: int = 7) -> Change:
    """The issue's surge: 70% negative for 10 minutes on one aspect (at 180 posts an hour)."""
    return Change(aspect, start_s, 600.0, negative=0.7)


def spike(start_s: float, aspect: int = 11) -> Change:
    """The issue's volume spike: 5x the posts of one aspect for 10 minutes, same shares."""
    return Change(aspect, start_s, 600.0, rate_factor=5.0)


SMALL_SURGE_AT = 2 * 3600 + 150  # the live tests' stream: 3 hours, 8 aspects, the surge 2 h 02 min 30 s in


def small_surge(start_ms: int, seed: int = 21) -> list[Post]:
    """The live tests' smaller stream (3 hours, 8 aspects): the same surge of aspect 7 at 180 posts an hour."""
    return stream(3, seed=seed, aspects=8, changes=[surge(SMALL_SURGE_AT)], fixed_rates={7: 180.0}, start_ms=start_ms)


def run(posts: Sequence[Post], config, clock: float | None = None):  # type: ignore[no-untyped-def]
    """The detector (as ``mulcot alerts replay`` runs it) over ``posts``; ``(alerts, report)``."""
    from stream.alerts.replay import replay

    end = (posts[-1].event_ms / 1000 + 3600) if clock is None and posts else clock or time.time()
    return replay(observations(posts), config, clock=lambda: end)


def tuning_table(config, seeds: int = 10, hours: float = 24.0, offsets: Sequence[float] = (0, 75, 150, 225, 290)) -> str:  # type: ignore[no-untyped-def]
    """False alarms on ``seeds`` no-change days; the surge and the spike at several offsets
    within a 5-minute hop (seconds after 4 h 00 of a 6-hour stream)."""
    lines = ["| run | alerts | of which right |", "| --- | --- | --- |"]
    total = 0
    t0 = time.perf_counter()
    for seed in range(seeds):
        alerts, _ = run(stream(hours, seed=100 + seed), config)
        total += len(alerts)
        lines.append(f"| no change, {hours:g} h, seed {100 + seed} | {len(alerts)} | - |")
    lines.append(f"| no change, all {seeds} seeds | {total} | - |")
    for kind, make, fixed in (("negative_shift", surge, {7: 180.0}), ("volume_spike", spike, {})):
        for off in offsets:
            alerts, _ = run(stream(6, seed=7, changes=[make(4 * 3600 + off)], fixed_rates=fixed), config)
            want = aspect_name(7 if kind == "negative_shift" else 11)
            right = [a for a in alerts if a.kind == kind and a.scope == want]
            lines.append(f"| {kind} at 4 h + {off:g} s, 6 h | {len(alerts)} | {len(right)} |")
    lines.append(f"\n({time.perf_counter() - t0:.0f} s)")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.support.alerts_synth [seeds]
    from stream.alerts.config import AlertConfig
    from stream.settings import load_settings

    print(tuning_table(AlertConfig.from_settings(load_settings()), seeds=int(sys.argv[1]) if len(sys.argv) > 1 else 10))
