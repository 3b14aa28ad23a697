"""The detector: observations in, alerts out, over a :class:`State` that holds the counts.

Decisions are made here and nowhere else; a state only stores (in memory for ``mulcot alerts
replay``, in Redis for ``mulcot alerts run``: :mod:`stream.alerts.state`), so the two run the
same code. One step, :meth:`Detector.run_due`:

1. the *watermark* is the newest event time counted, capped at the wall clock, minus the
   lateness allowance (none at the end of a replay);
2. every slot that ends before it is frozen: its aggregate is computed once, and a result that
   arrives for a frozen slot later is counted as late, not added;
3. every window (each length, ending at each multiple of its hop) that ends at or before the
   frozen frontier and was not evaluated yet is evaluated, oldest end first: per scope, the
   tests of :func:`hypotheses`, Benjamini-Hochberg over all of them, the minimum effect, then
   the cooldown (a detection of the same scope and kind whose window starts before an earlier
   alert's window ended plus the cooldown is merged into that alert, not published);
4. its alerts are stored (the first stored value of an alert id wins) and handed to
   ``publish``; only then is the window marked evaluated.

A crash anywhere repeats at most the last window: it finds its alerts stored and publishes
them again, unchanged (same key, same value).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..protocol import ALERT_KINDS, Alert, AlertFigures
from . import stats
from .config import AlertConfig, WindowSpec
from .windows import (
    ALL,
    LABEL_INDEX,
    Observation,
    PrefixTally,
    SlotAgg,
    Tally,
    check_observation,
    examples,
    observe,
    slot_of,
)

log = logging.getLogger("mulcot.alerts")

SHARE_LABEL = {"negative_shift": "negative", "positive_shift": "positive"}


class State(Protocol):
    """Where the detector's counts live (see :mod:`stream.alerts.state`)."""

    def add(self, obs: Sequence[Observation]) -> dict[str, int]:
        """Count observations once per post id and slot; ``{counted, duplicate, relabelled, late: n}``."""
        ...

    def count_rejected(self, reasons: dict[str, int]) -> None: ...

    def bounds(self) -> tuple[int | None, int | None]:
        """Oldest and newest event time (ms) counted so far."""
        ...

    def frozen_ms(self) -> int | None: ...

    def freeze(self, until_ms: int) -> None:
        """Freeze every slot that starts before ``until_ms`` (the frontier only moves forward)."""
        ...

    def data_slots(self, lo_ms: int | None, hi_ms: int) -> list[int]:
        """Starts of the slots holding data with ``lo_ms <= start < hi_ms``, in order."""
        ...

    def aggs(self, starts: Sequence[int]) -> dict[int, SlotAgg]: ...

    def prune(self, before_ms: int) -> None:
        """Forget slots before ``before_ms``: no window still to evaluate reaches back there."""
        ...

    def evaluated_ms(self, spec: WindowSpec) -> int | None: ...

    def set_evaluated(self, spec: WindowSpec, end_ms: int) -> None: ...

    def has_alert(self, alert_id: str) -> bool: ...

    def last_alert_end(self, kind: str, scope: str) -> int | None: ...

    def put_alert(self, alert: Alert) -> tuple[bool, Alert]:
        """Store ``alert`` unless its id is stored; ``(created, the stored alert)``."""
        ...


class Counters(Protocol):
    """What the detector counts (:class:`stream.metrics.AlertMetrics`)."""

    def count_alert(self, kind: str) -> None: ...

    def count_merged(self, kind: str) -> None: ...

    def count_results(self, outcome: str, n: int) -> None: ...

    def count_window(self) -> None: ...

    def set_watermark(self, ms: int) -> None: ...


class _NoCounters:
    def count_alert(self, kind: str) -> None:
        pass

    def count_merged(self, kind: str) -> None:
        pass

    def count_results(self, outcome: str, n: int) -> None:
        pass

    def count_window(self) -> None:
        pass

    def set_watermark(self, ms: int) -> None:
        pass


@dataclass
class IngestReport:
    counted: int = 0
    duplicate: int = 0
    relabelled: int = 0
    late: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def add(self, other: IngestReport) -> None:
        self.counted += other.counted
        self.duplicate += other.duplicate
        self.relabelled += other.relabelled
        self.late += other.late
        self.rejected.update(other.rejected)


@dataclass
class Hypothesis:
    """One test of one scope in one window: what it compared and its p-value (1.0 when the
    effect is below the minimum, so the test was not run)."""

    kind: str
    scope: str
    window: Tally
    base: Tally
    base_exposure_s: float
    expected: float
    effect: float
    pvalue: float = 1.0


def alert_id(kind: str, window_s: int, start_ms: int, scope: str) -> str:
    """The alert key: a function of kind, window and scope only."""
    return f"{kind}:{window_s}s:{start_ms}:" + ("all" if scope == ALL else f"aspect:{scope}")


def hypotheses(window: dict[str, Tally], base: dict[str, Tally], size_s: int, base_exposure_s: float,
               cfg: AlertConfig) -> list[Hypothesis]:  # fmt: skip
    """Every test of one window: each scope with ``min_count`` posts in the window and
    ``min_baseline`` in the baseline, each kind. Tests whose effect is below the minimum keep
    p = 1 (they could not alert; counting them in Benjamini-Hochberg's m only makes it stricter);
    the others are run in one vectorised call per kind."""
    out: list[Hypothesis] = []
    if base_exposure_s <= 0:
        return out
    for scope in sorted(window):
        w, b = window[scope], base.get(scope)
        n, n0 = w.total, 0 if b is None else b.total
        if n < cfg.min_count or b is None or n0 < cfg.min_baseline:
            continue
        for kind in ALERT_KINDS:
            if kind in SHARE_LABEL:
                i = LABEL_INDEX[SHARE_LABEL[kind]]
                base_share = b.counts[i] / n0
                out.append(Hypothesis(kind, scope, w, b, base_exposure_s, base_share * n, w.counts[i] / n - base_share))
            else:
                expected = n0 * size_s / base_exposure_s
                out.append(Hypothesis(kind, scope, w, b, base_exposure_s, expected, n / expected))
    for kind in ALERT_KINDS:
        if kind in SHARE_LABEL:
            i = LABEL_INDEX[SHARE_LABEL[kind]]
            todo = [h for h in out if h.kind == kind and h.effect >= cfg.min_share_delta]
            ps = stats.share_pvalues([h.window.counts[i] for h in todo], [h.window.total for h in todo],
                                     [h.base.counts[i] for h in todo], [h.base.total for h in todo])  # fmt: skip
        else:
            todo = [h for h in out if h.kind == kind and h.effect >= cfg.min_volume_ratio]
            ps = stats.volume_pvalues([h.window.total for h in todo], [size_s] * len(todo), [h.base.total for h in todo],
                                      [base_exposure_s] * len(todo))  # fmt: skip
        for h, p in zip(todo, ps):
            h.pvalue = p
    return out


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _figures(t: Tally, start_ms: int, end_ms: int, label: str | None) -> AlertFigures:
    hours = (end_ms - start_ms) / 3_600_000
    return AlertFigures(
        start_ms=start_ms, end_ms=end_ms, count=t.total, positive=t.counts[0], neutral=t.counts[1], negative=t.counts[2],
        share=round(t.counts[LABEL_INDEX[label]] / t.total, 4) if label and t.total else None,
        per_hour=round(t.total / hours, 2) if hours > 0 else 0.0,
    )  # fmt: skip


def make_alert(h: Hypothesis, q: float, spec: WindowSpec, end_ms: int, window_aggs: Sequence[SlotAgg]) -> Alert:
    """The Alert of a significant hypothesis; its examples are the smallest ids of the window's
    posts of the tested label (any label for volume)."""
    start_ms = end_ms - spec.size_s * 1000
    label = SHARE_LABEL.get(h.kind)
    base_start = start_ms - int(h.base_exposure_s * 1000)
    return Alert(
        id=alert_id(h.kind, spec.size_s, start_ms, h.scope),
        kind=h.kind,  # type: ignore[arg-type]
        scope="all" if h.scope == ALL else h.scope,
        aspect=None if h.scope == ALL else h.scope,
        window_s=spec.size_s,
        window_start_ms=start_ms,
        window_end_ms=end_ms,
        observed=_figures(h.window, start_ms, end_ms, label),
        baseline=_figures(h.base, base_start, start_ms, label),
        expected=round(h.expected, 2),
        effect=round(h.effect, 4),
        p_value=_sig(h.pvalue),
        q_value=_sig(q),
        test=stats.SHARE_TEST if label else stats.VOLUME_TEST,
        examples=examples(window_aggs, h.scope, label),
    )


class Detector:
    """Sentiment-shift detection over ``state`` with the parameters ``config`` (module docstring)."""

    def __init__(self, config: AlertConfig, state: State, *, clock: Callable[[], float] = time.time,
                 counters: Counters | None = None) -> None:  # fmt: skip
        self.config = config
        self.state = state
        self.clock = clock
        self.counters = counters or _NoCounters()
        self.sums = PrefixTally()

    # --- input ----------------------------------------------------------------------------
    def ingest(self, values: Iterable[Any]) -> IngestReport:
        """Count results (SentimentResult objects, their JSON, dicts or Observations); values
        that are not results, or whose event time is absurd, are counted apart. Never raises
        for bad input."""
        now_ms = int(self.clock() * 1000)
        report = IngestReport()
        obs: list[Observation] = []
        for value in values:
            got = check_observation(value, now_ms) if isinstance(value, Observation) else observe(value, now_ms)
            if isinstance(got, str):
                report.rejected[got] += 1
            else:
                obs.append(got)
        if obs:
            out = self.state.add(obs)
            report.counted, report.duplicate = out.get("counted", 0), out.get("duplicate", 0)
            report.relabelled, report.late = out.get("relabelled", 0), out.get("late", 0)
        if report.rejected:
            self.state.count_rejected(dict(report.rejected))
        for outcome in ("counted", "duplicate", "relabelled", "late"):
            if getattr(report, outcome):
                self.counters.count_results(outcome, getattr(report, outcome))
        for reason, n in report.rejected.items():
            self.counters.count_results(f"rejected_{reason}", n)
        return report

    # --- windows --------------------------------------------------------------------------
    def watermark_ms(self, final: bool = False) -> int | None:
        """Newest event time counted, at most the wall clock, minus the lateness (unless ``final``)."""
        _, newest = self.state.bounds()
        if newest is None:
            return None
        wm = min(newest, int(self.clock() * 1000))
        return wm if final else wm - self.config.lateness_s * 1000

    def due_windows(self, frozen_ms: int, limit: int = 10_000) -> list[tuple[int, WindowSpec]]:
        """``(end_ms, spec)`` of the windows to evaluate now: ending at or before ``frozen_ms``,
        after the spec's last evaluated end, holding data; oldest end first (shorter first)."""
        slot = self.config.slot_ms
        due: list[tuple[int, int, WindowSpec]] = []
        for spec in self.config.specs:
            size, hop = spec.size_s * 1000, spec.hop_s * 1000
            done = self.state.evaluated_ms(spec)
            ends: set[int] = set()
            for s in self.state.data_slots(None if done is None else done - size, frozen_ms):
                first = -(-(s + slot) // hop) * hop  # the first end after the slot
                if done is not None:
                    first = max(first, done + hop)
                last = min((s + size) // hop * hop, frozen_ms)  # the last window that still holds it
                ends.update(range(first, last + 1, hop))
            due.extend((e, spec.size_s, spec) for e in ends)
        due.sort(key=lambda d: (d[0], d[1]))
        return [(e, spec) for e, _, spec in due[:limit]]

    def evaluate(self, spec: WindowSpec, end_ms: int) -> list[Alert]:
        """The alerts of one window (stored; merged detections left out)."""
        cfg = self.config
        start = end_ms - spec.size_s * 1000
        base_start = start - cfg.baseline_s * 1000
        slots = self.state.data_slots(base_start, end_ms)
        aggs = self.state.aggs(slots)
        self.sums.cover(aggs)
        self.sums.prune(base_start - cfg.horizon_s * 1000)
        in_window = [aggs[s] for s in slots if s >= start and s in aggs]
        window = self.sums.range(start, end_ms)
        base = self.sums.range(base_start, start)
        oldest, _ = self.state.bounds()
        first = base_start if oldest is None else max(base_start, slot_of(oldest, cfg.slot_ms))
        hyps = hypotheses(window, base, spec.size_s, (start - first) / 1000, cfg)
        self.counters.count_window()
        reject, qvalues = stats.bh([h.pvalue for h in hyps], cfg.fdr)
        out: list[Alert] = []
        for h, rejected, q in zip(hyps, reject, qvalues):
            if not rejected or h.pvalue >= 1.0:
                continue
            alert = make_alert(h, q, spec, end_ms, in_window)
            if not self.state.has_alert(alert.id):
                last = self.state.last_alert_end(h.kind, h.scope)
                if last is not None and start < last + cfg.cooldown_s * 1000:
                    self.counters.count_merged(h.kind)
                    log.info("merged %s into an earlier alert of %s (window %d s ending %d)", alert.id, h.kind, spec.size_s, end_ms)
                    continue
            created, stored = self.state.put_alert(alert)
            if created:
                self.counters.count_alert(h.kind)
                log.warning("ALERT %s: %s of %r, observed %s vs baseline %s (p %.3g, q %.3g)", stored.id, stored.kind,
                            stored.scope, stored.observed.share if stored.observed.share is not None else stored.observed.count,
                            stored.baseline.share if stored.baseline.share is not None else stored.expected,
                            stored.p_value, stored.q_value)  # fmt: skip
            out.append(stored)
        return out

    def run_due(self, publish: Callable[[list[Alert]], None] | None = None, *, final: bool = False,
                limit: int = 10_000) -> list[Alert]:  # fmt: skip
        """Freeze the slots the watermark has passed, evaluate every due window (at most
        ``limit``), hand each window's alerts to ``publish`` before marking it evaluated."""
        wm = self.watermark_ms(final)
        if wm is None:
            return []
        self.counters.set_watermark(wm)
        self.state.freeze(slot_of(wm, self.config.slot_ms))
        frozen = self.state.frozen_ms()
        if frozen is None:
            return []
        out: list[Alert] = []
        for end, spec in self.due_windows(frozen, limit):
            alerts = self.evaluate(spec, end)
            if alerts and publish is not None:
                publish(alerts)
            self.state.set_evaluated(spec, end)
            out.extend(alerts)
        done = [self.state.evaluated_ms(spec) for spec in self.config.specs]
        if all(d is not None for d in done):  # what the next windows of every length still need
            self.state.prune(min(d for d in done if d is not None) - self.config.horizon_s * 1000)
        return out


__all__ = ["Detector", "State", "IngestReport", "Hypothesis", "alert_id", "hypotheses", "make_alert"]
