"""What the alert detector counts: one :class:`Observation` per result (post id, label, aspect,
event time), checked event times, and the per-slot aggregates that windows are summed from.

Event time is the result's ``source.timestamp_ms`` (the input record's Kafka timestamp, the
same time the Redis counts hashes use) when present and positive, else its ``processed_at``.
An event time before 2006 or more than a day after the detector's clock is *absurd*: the
result is counted apart (reason ``timestamp``) and never opens a window. A value that is not a
``SentimentResult`` at all is counted apart too (reason ``invalid``). Aspects are normalised as
the Redis layout normalises them (:func:`stream.store.aspect_key_part`).

Time is cut into *slots* of ``slot_s`` seconds (the greatest common divisor of the windows'
hops); every window and every baseline is a whole number of slots, and a slot's
:class:`SlotAgg` is computed once, when the watermark passes the slot's end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..protocol import SentimentResult
from ..store import aspect_key_part

MIN_EVENT_MS = 1_136_073_600_000  # 2006-01-01T00:00:00Z: nothing older is a plausible post
MAX_AHEAD_MS = 86_400_000  # a day after the detector's clock
LABELS = ("positive", "neutral", "negative")
LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}
ALL = ""  # the scope key of every post (an aspect's key is never empty)
EXAMPLES = 5  # example post ids kept per scope and label


@dataclass(frozen=True, slots=True)
class Observation:
    """One result as the detector counts it."""

    post_id: str
    label: str  # positive / neutral / negative
    aspect: str | None  # normalised, or None
    event_ms: int


def event_ms(result: SentimentResult) -> int:
    """The result's event time: ``source.timestamp_ms`` when present and positive, else ``processed_at``."""
    ts = result.source.timestamp_ms if result.source is not None else None
    if ts is not None and ts > 0:
        return int(ts)
    return int(result.processed_at.timestamp() * 1000)


def observe(value: Any, now_ms: int) -> Observation | str:
    """An :class:`Observation` of ``value`` (a SentimentResult, its JSON as bytes/str, or a
    dict), or the reason it is counted apart: ``"invalid"`` or ``"timestamp"``. Never raises."""
    try:
        if isinstance(value, SentimentResult):
            result = value
        elif isinstance(value, (bytes, bytearray, str)):
            result = SentimentResult.model_validate_json(value)
        elif isinstance(value, dict):
            result = SentimentResult.model_validate(value)
        else:
            return "invalid"
        ts = event_ms(result)
    except (ValidationError, ValueError, TypeError, OverflowError, OSError):
        return "invalid"
    if ts < MIN_EVENT_MS or ts > now_ms + MAX_AHEAD_MS:
        return "timestamp"
    aspect = aspect_key_part(result.aspect) if result.aspect else ""
    return Observation(result.id, result.label, aspect or None, ts)


def check_observation(obs: Observation, now_ms: int) -> Observation | str:
    """The same event-time check for an Observation made elsewhere (tests, generators)."""
    if obs.event_ms < MIN_EVENT_MS or obs.event_ms > now_ms + MAX_AHEAD_MS:
        return "timestamp"
    if obs.label not in LABEL_INDEX:
        return "invalid"
    return obs


# --- slots and their aggregates -----------------------------------------------------------


def slot_of(ms: int, slot_ms: int) -> int:
    """Start (ms) of the slot holding event time ``ms``."""
    return ms - ms % slot_ms


def encode_member(obs: Observation) -> str:
    """How one observation is kept in a slot: ``label`` + US + aspect (empty for none)."""
    return f"{obs.label}\x1f{obs.aspect or ''}"


def decode_member(value: str) -> tuple[str, str]:
    label, _, aspect = value.partition("\x1f")
    return label, aspect


class SlotAgg:
    """Per-scope label counts of one slot, with up to :data:`EXAMPLES` example ids per label
    (the smallest ids, so any two detectors pick the same ones). ``scopes``: scope key (``ALL``
    or an aspect) -> ``[positive, neutral, negative, [ids...] x 3]``."""

    __slots__ = ("scopes",)

    def __init__(self, scopes: dict[str, list[Any]] | None = None) -> None:
        self.scopes: dict[str, list[Any]] = scopes or {}

    @classmethod
    def of(cls, members: Iterable[tuple[str, str]]) -> SlotAgg:
        """From ``(post id, encoded member)`` pairs."""
        agg = cls()
        for post_id, value in sorted(members):
            label, aspect = decode_member(value)
            i = LABEL_INDEX.get(label)
            if i is None:
                continue
            for scope in (ALL, aspect) if aspect else (ALL,):
                row = agg.scopes.get(scope)
                if row is None:
                    row = agg.scopes[scope] = [0, 0, 0, [], [], []]
                row[i] += 1
                if len(row[3 + i]) < EXAMPLES:
                    row[3 + i].append(post_id)
        return agg

    def to_json(self) -> str:
        return json.dumps(self.scopes, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> SlotAgg:
        return cls(json.loads(text))


@dataclass
class Tally:
    """Label counts (positive, neutral, negative) of one scope summed over slots."""

    counts: list[int]

    @property
    def total(self) -> int:
        return sum(self.counts)


def tally(aggs: Iterable[SlotAgg]) -> dict[str, Tally]:
    """Sum slot aggregates per scope."""
    out: dict[str, Tally] = {}
    for agg in aggs:
        for scope, row in agg.scopes.items():
            t = out.get(scope)
            if t is None:
                out[scope] = Tally([row[0], row[1], row[2]])
            else:
                c = t.counts
                c[0] += row[0]
                c[1] += row[1]
                c[2] += row[2]
    return out


class PrefixTally:
    """Running per-scope sums over consecutive frozen slots, so the tally of any range of them
    is one subtraction (a window's and its baseline's tallies, for every window, without summing
    the same slots again). Frozen slots never change, so the sums stay right."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.sums: list[dict[str, tuple[int, int, int]]] = []  # sums[i]: slots starts[0..i]

    def cover(self, aggs: dict[int, SlotAgg]) -> None:
        """Sum every slot of ``aggs`` (the data slots of one range; a slot before the summed
        ones that is not among them starts the sums afresh from ``aggs``)."""
        have = set(self.starts)
        if self.starts and any(s < self.starts[-1] and s not in have for s in aggs):
            self.starts, self.sums = [], []
        for s in sorted(aggs):
            if self.starts and s <= self.starts[-1]:
                continue
            prev = dict(self.sums[-1]) if self.sums else {}
            for scope, row in aggs[s].scopes.items():
                p = prev.get(scope, (0, 0, 0))
                prev[scope] = (p[0] + row[0], p[1] + row[1], p[2] + row[2])
            self.starts.append(s)
            self.sums.append(prev)

    def range(self, lo_ms: int, hi_ms: int) -> dict[str, Tally]:
        """The tally of the summed slots with ``lo_ms <= start < hi_ms``."""
        import bisect

        i = bisect.bisect_left(self.starts, lo_ms) - 1
        j = bisect.bisect_left(self.starts, hi_ms) - 1
        if j < 0 or j <= i:
            return {}
        end, begin = self.sums[j], self.sums[i] if i >= 0 else {}
        out = {}
        for scope, c in end.items():
            b = begin.get(scope)
            t = [c[0] - b[0], c[1] - b[1], c[2] - b[2]] if b else [c[0], c[1], c[2]]
            if t[0] or t[1] or t[2]:
                out[scope] = Tally(t)
        return out

    def prune(self, before_ms: int) -> None:
        """Forget the sums of slots before ``before_ms`` except the last of them (ranges from there on stay right)."""
        import bisect

        k = bisect.bisect_left(self.starts, before_ms) - 1
        if k > 0:
            del self.starts[:k]
            del self.sums[:k]


def examples(aggs: Iterable[SlotAgg], scope: str, label: str | None) -> list[str]:
    """The :data:`EXAMPLES` smallest post ids of ``scope`` with ``label`` (None: any label) in the slots."""
    found: list[str] = []
    cols = [3 + LABEL_INDEX[label]] if label else [3, 4, 5]
    for agg in aggs:
        row = agg.scopes.get(scope)
        if row is not None:
            for c in cols:
                found.extend(row[c])
    return sorted(set(found))[:EXAMPLES]


__all__ = ["Observation", "SlotAgg", "Tally", "observe", "event_ms", "check_observation", "slot_of", "tally", "examples", "PrefixTally",
           "encode_member", "decode_member", "ALL", "LABELS", "MIN_EVENT_MS", "MAX_AHEAD_MS"]
