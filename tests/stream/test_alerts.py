"""The alert detector on synthetic streams (tests/support/alerts_synth.py) and on bad input:
the issue's done-when checks that need no broker (the 6-hour surge through `mulcot alerts
replay`, 24 no-change hours over several seeds, the volume spike), redelivery counted once,
late and absurd results counted apart, and the Redis state (real Valkey) giving exactly the
alerts of the in-memory one, also for a second detector and after a crash mid-window."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.alerts import AlertConfig, Detector, MemoryState, RedisState, replay
from stream.alerts.windows import MIN_EVENT_MS, Observation
from stream.protocol import Alert
from stream.store import KeyLayout, ResultStore
from tests.support import alerts_synth as syn
from tests.support.stream_helpers import settings_env

ROOT = Path(__file__).resolve().parents[2]
CFG = AlertConfig()  # the shipped defaults (stream/settings.py)
SURGE_AT = 4 * 3600 + 150  # 4 h 02 min 30 s into the stream: not on a window boundary
SURGE = (syn.START_MS + SURGE_AT * 1000, syn.START_MS + (SURGE_AT + 600) * 1000)


def overlaps(a: Alert, span: tuple[int, int]) -> bool:
    return a.window_start_ms < span[1] and span[0] < a.window_end_ms


def surge_posts(seed: int = 8) -> list[syn.Post]:
    return syn.stream(6, seed=seed, changes=[syn.surge(SURGE_AT)], fixed_rates={7: 180.0})


def test_defaults_are_the_settings() -> None:
    from stream.settings import load_settings

    assert AlertConfig.from_settings(load_settings()) == CFG


def test_replay_of_the_six_hour_surge_gives_exactly_one_alert(tmp_path: Path) -> None:
    """40 aspects at 60-300 posts an hour, 20% negative, 60% positive; aspect 7 at 180 an hour
    turns 70% negative for 10 minutes: `mulcot alerts replay` writes one Alert line, a negative
    shift of that aspect in a window that overlaps the surge, and nothing else."""
    posts = surge_posts()
    spellings = {p.aspect for p in posts if p.aspect.strip().lower().endswith("07")}
    assert len(spellings) > 1  # the producer spells the aspect several ways; the Redis layout folds them
    results = tmp_path / "results.jsonl"
    results.write_text("".join(syn.result_json(p) + "\n" for p in posts))
    out = tmp_path / "alerts.jsonl"
    env = {k: v for k, v in settings_env(_settings()).items() if not k.startswith("MULCOT_ALERTS_")}
    p = subprocess.run([sys.executable, "-m", "stream.cli", "alerts", "replay", str(results), "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 1, lines
    alert = Alert.model_validate_json(lines[0])
    assert alert.kind == "negative_shift" and alert.scope == "topic 07" and alert.aspect == "topic 07"
    assert overlaps(alert, SURGE), alert
    assert alert.observed.share is not None and alert.observed.share > 0.5 and alert.baseline.share < 0.3
    assert alert.q_value <= CFG.fdr and alert.effect >= CFG.min_share_delta
    by_id = {q.post_id: q for q in posts}
    assert alert.examples and all(by_id[i].label == "negative" and SURGE[0] - 600_000 <= by_id[i].event_ms for i in alert.examples)
    assert alert.id == f"negative_shift:{alert.window_s}s:{alert.window_start_ms}:aspect:topic 07"
    assert f"{len(posts)} results counted" in p.stderr and "1 alerts" in p.stderr


def _settings():  # type: ignore[no-untyped-def]
    from stream.settings import load_settings

    return load_settings()


def _no_change_alerts(seeds: range) -> list[Alert]:
    found: list[Alert] = []
    for seed in seeds:
        alerts, report = syn.run(syn.stream(24, seed=seed), CFG)
        assert report.counted > 100_000 and not report.late
        found += alerts
    return found


def test_no_change_two_days_no_alert() -> None:
    """The default suite's share of the 10-seed check below: 2 seeds of 24 no-change hours."""
    found = _no_change_alerts(range(100, 102))
    assert len(found) <= 1, [a.id for a in found]


@pytest.mark.slow
def test_no_change_ten_days_at_most_one_alert() -> None:
    """24 synthetic hours with no change, same volumes, 10 seeds: at most 1 alert in all."""
    found = _no_change_alerts(range(100, 110))
    assert len(found) <= 1, [a.id for a in found]


def test_volume_spike_gives_one_volume_alert() -> None:
    """5x the posts of one aspect for 10 minutes, same shares: one volume alert of that aspect."""
    spike_at = 4 * 3600 + 290
    alerts, _ = syn.run(syn.stream(6, seed=7, changes=[syn.spike(spike_at)]), CFG)
    assert len(alerts) == 1, [a.id for a in alerts]
    (a,) = alerts
    assert a.kind == "volume_spike" and a.scope == "topic 11" and a.effect >= CFG.min_volume_ratio
    assert overlaps(a, (syn.START_MS + spike_at * 1000, syn.START_MS + (spike_at + 600) * 1000))
    assert a.observed.share is None and a.observed.count > a.expected * 3


def test_redelivered_results_are_counted_once() -> None:
    """At-least-once: the surge's results delivered twice (the second time shuffled in among
    the first, as a restarted worker would) give the same alerts and the same counts."""
    import random

    obs = syn.observations(surge_posts())
    once, r1 = replay(obs, CFG, clock=lambda: obs[-1].event_ms / 1000 + 3600)
    twice = list(obs)
    rng = random.Random(1)
    for k in range(0, len(obs), 500):  # each chunk of 500 redelivered right after it
        chunk = obs[k : k + 500]
        twice[2 * k + 500 : 2 * k + 500] = rng.sample(chunk, len(chunk))
    again, r2 = replay(twice, CFG, clock=lambda: obs[-1].event_ms / 1000 + 3600)
    assert [a.model_dump_json() for a in again] == [a.model_dump_json() for a in once] and len(once) == 1
    assert r2.counted == r1.counted == len(obs) and r2.duplicate == len(obs) and r2.late == 0


def test_bad_input_is_counted_apart_and_never_opens_a_window() -> None:
    posts = surge_posts()[:3000]
    good = [syn.result_json(p) for p in posts]
    now = posts[-1].event_ms / 1000 + 60
    base = json.loads(good[0])
    ahead = dict(base, id="ahead", source={**base["source"], "timestamp_ms": int(now * 1000) + 2 * 86_400_000})
    old = dict(base, id="old", source={**base["source"], "timestamp_ms": MIN_EVENT_MS - 1})
    zero = dict(base, id="zero", source={**base["source"], "timestamp_ms": 0}, processed_at="1999-01-01T00:00:00Z")
    huge = dict(base, id="huge", source={**base["source"], "timestamp_ms": 10**30})
    no_source = dict(base, id="no-source", source=None)  # event time: processed_at (valid)
    bad = [b"not json", "[1, 2]", json.dumps({"id": "x"}), None, 42, json.dumps(ahead), json.dumps(old), json.dumps(zero),
           json.dumps(huge), b"\xff\xfe", json.dumps(dict(base, label="furious")), json.dumps(dict(base, aspect=7))]  # fmt: skip
    state = MemoryState(CFG)
    det = Detector(CFG, state, clock=lambda: now)
    report = det.ingest(good[:1500] + bad + [json.dumps(no_source)] + good[1500:])
    assert report.counted == len(good) + 1
    assert report.rejected == {"invalid": 8, "timestamp": 4}
    lo, hi = state.bounds()
    assert (lo, hi) == (min(p.event_ms for p in posts), max(p.event_ms for p in posts))  # no window opened by them
    det.run_due(final=True)
    assert state.counted_apart["rejected_timestamp"] == 4 and state.counted_apart["rejected_invalid"] == 8


def test_late_results_are_counted_apart() -> None:
    obs = syn.observations(surge_posts())
    now = obs[-1].event_ms / 1000 + 3600
    state = MemoryState(CFG)
    det = Detector(CFG, state, clock=lambda: now)
    det.ingest(obs)
    det.run_due()
    frozen = state.frozen_ms()
    assert frozen is not None and frozen <= obs[-1].event_ms - CFG.lateness_s * 1000
    straggler = Observation("late-1", "negative", "topic 07", frozen - 1000)
    known = max((o for o in obs if o.event_ms < frozen - 600_000), key=lambda o: o.event_ms)  # its slot is still kept
    report = det.ingest([straggler, known])
    assert (report.late, report.duplicate, report.counted) == (1, 1, 0)
    assert state.counted_apart["late"] == 1


def test_a_change_of_label_replaces_the_first_until_the_slot_is_frozen() -> None:
    state = MemoryState(CFG)
    t = syn.START_MS
    assert state.add([Observation("p", "neutral", "a", t)]) == {"counted": 1}
    assert state.add([Observation("p", "negative", "a", t)]) == {"relabelled": 1}
    state.freeze(t + CFG.slot_ms)
    (agg,) = state.aggs([t - t % CFG.slot_ms]).values()
    assert agg.scopes["a"][:3] == [0, 0, 1] and agg.scopes[""][:3] == [0, 0, 1]


def test_config_rejects_windows_that_do_not_fit() -> None:
    from stream.settings import SettingsError, load_settings

    with pytest.raises(ValueError):
        AlertConfig(windows_s=(90,))
    with pytest.raises(ValueError):
        AlertConfig(windows_s=(600,), hops=7)
    with pytest.raises(SettingsError, match="MULCOT_ALERTS_WINDOWS_S"):
        load_settings(alerts_windows_s=[0])
    with pytest.raises(SettingsError, match="alerts_baseline_s"):
        load_settings(alerts_baseline_s=7230)
    with pytest.raises(SettingsError, match="alerts_group_id"):
        load_settings(alerts_group_id="mulcot-worker")


# --- the Redis state (real Valkey) ---------------------------------------------------------


def _redis_run(url: str, layout: KeyLayout, obs: list[Observation], now: float, chunk: int = 2000) -> tuple[list[Alert], RedisState]:
    state = RedisState(url, layout, CFG)
    det = Detector(CFG, state, clock=lambda: now)
    published: list[Alert] = []
    for k in range(0, len(obs), chunk):
        det.ingest(obs[k : k + chunk])
        det.run_due(published.extend)
    det.run_due(published.extend, final=True)
    return published, state


def test_redis_state_gives_the_alerts_of_the_memory_state(services) -> None:  # type: ignore[no-untyped-def]
    import uuid

    _, redis_svc = services
    layout = KeyLayout(prefix=f"al{uuid.uuid4().hex[:8]}:")
    obs = syn.observations(surge_posts())
    now = obs[-1].event_ms / 1000 + 3600
    expected, _ = replay(obs, CFG, clock=lambda: now)
    t0 = time.perf_counter()
    got, state = _redis_run(redis_svc.url, layout, obs, now)
    took = time.perf_counter() - t0
    assert [a.model_dump_json() for a in got] == [a.model_dump_json() for a in expected] and len(got) == 1, took
    store = ResultStore(redis_svc.url, layout)
    try:
        assert [a.id for a in store.alerts(10)] == [got[0].id]
        assert store.alert(got[0].id) == got[0]
        assert store.client.xlen(layout.alert_events) == 1
        # a second detector (a restart, or a failover twin) over the same results: no new alert
        again, _ = _redis_run(redis_svc.url, layout, obs, now)
        assert again == [] and store.client.xlen(layout.alert_events) == 1
        # a crash after publishing but before marking the window: the window is evaluated again
        # and publishes the same alert, same key, same value; it is not created a second time
        w = got[0].window_s
        store.client.hset(layout.alert_state, f"evaluated:{w}s", got[0].window_end_ms - w * 1000 // CFG.hops)
        det = Detector(CFG, RedisState(redis_svc.url, layout, CFG), clock=lambda: now)
        republished: list[Alert] = []
        det.run_due(republished.extend, final=True)
        assert [a.model_dump_json() for a in republished] == [got[0].model_dump_json()]
        assert store.client.xlen(layout.alert_events) == 1 and store.client.zcard(layout.alerts) == 1
        # `mulcot alerts recent` reads it back
        env = settings_env(_settings())
        env.update(MULCOT_REDIS_URL=redis_svc.url, MULCOT_REDIS_PREFIX=layout.prefix)
        p = subprocess.run([sys.executable, "-m", "stream.cli", "alerts", "recent", "--json"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert [Alert.model_validate(a) for a in json.loads(p.stdout)] == got
    finally:
        store.close()
        state.close()


def test_prefix_sums_equal_plain_sums() -> None:
    """The detector's running sums (PrefixTally) give the same per-scope tally as summing the
    slots, for any range, also when a range reaches before the summed slots."""
    import random

    from stream.alerts.windows import PrefixTally, SlotAgg, tally

    rng = random.Random(3)
    slot = 100_000
    aggs = {}
    for k in range(60):
        if rng.random() < 0.2:
            continue  # a slot without data
        members = [(f"p{k}-{i}", f"{rng.choice(['positive', 'neutral', 'negative'])}\x1f{rng.choice(['', 'a', 'b', 'c'])}")
                   for i in range(rng.randint(1, 15))]  # fmt: skip
        aggs[k * slot] = SlotAgg.of(members)
    sums = PrefixTally()
    for _ in range(200):
        lo = rng.randrange(0, 60) * slot
        hi = lo + rng.randrange(1, 30) * slot
        part = {s: a for s, a in aggs.items() if lo <= s < hi}
        sums.cover(part)
        got = sums.range(lo, hi)
        want = {k: v for k, v in tally(part.values()).items() if v.total}
        assert got == want, (lo, hi)
        sums.prune(lo - 10 * slot)
