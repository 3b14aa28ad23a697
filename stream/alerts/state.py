"""Where the detector's counts live: :class:`MemoryState` (``mulcot alerts replay``, tests) and
:class:`RedisState` (``mulcot alerts run``: shared by every detector process, survives restarts).

Both count a result once per post id and slot (a redelivered result changes nothing; a result
of the same post with another label, from another model version, replaces the first until the
slot is frozen), refuse results for frozen slots (late), and keep the first stored value of an
alert id. The Redis keys (``P`` = ``MULCOT_REDIS_PREFIX``; docs/alerts.md has the table):

* ``P alerts:slot:{slot}s:{start}`` hash, post id -> ``label<US>aspect``: the slot's results;
* ``P alerts:slots:{slot}s`` sorted set of the starts (epoch s) of slots holding results;
* ``P alerts:agg:{slot}s:{start}`` string: the frozen slot's per-scope counts (JSON);
* ``P alerts:state`` hash: ``min_ms``, ``max_ms`` (event times counted), ``frozen_ms`` (the
  frozen frontier), ``evaluated:{window}s`` (the end of the last evaluated window);
* ``P alerts:last`` hash, ``{kind}:{scope}`` -> the end of the latest alert's window (cooldown);
* ``P alerts:counts`` hash: results counted apart (``late``, ``rejected_invalid``,
  ``rejected_timestamp``);
* ``P alert:{id}`` string (the Alert JSON), ``P alerts`` sorted set (ids by window end) and
  ``P alerts:events`` stream (one entry per new alert), which the query API reads.

Slot keys live ``horizon`` seconds (the longest window, its baseline and a slot) plus a day
after their last write, so a detector that is down for less than a day resumes where it was.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..protocol import Alert
from ..store import KeyLayout
from .config import AlertConfig, WindowSpec
from .windows import ALL, Observation, SlotAgg, decode_member, encode_member, slot_of

_OUTCOMES = {1: "counted", 2: "duplicate", 3: "late", 4: "relabelled"}


def _last_field(kind: str, scope: str) -> str:
    return f"{kind}:" + ("all" if scope == ALL else f"aspect:{scope}")


class MemoryState:
    """The detector's state in this process (replay, tests); old slots are pruned as the
    frozen frontier moves on."""

    def __init__(self, config: AlertConfig) -> None:
        self.config = config
        self.slot_ms = config.slot_ms
        self.raw: dict[int, dict[str, str]] = {}
        self.starts: list[int] = []  # sorted keys of raw
        self.agg: dict[int, SlotAgg] = {}
        self.min_ms: int | None = None
        self.max_ms: int | None = None
        self._frozen: int | None = None
        self.evaluated: dict[int, int] = {}
        self.last: dict[str, int] = {}
        self.alerts: dict[str, Alert] = {}
        self.counted_apart: Counter[str] = Counter()

    def add(self, obs: Sequence[Observation]) -> dict[str, int]:
        out: Counter[str] = Counter()
        frozen = self._frozen
        for o in obs:
            start = slot_of(o.event_ms, self.slot_ms)
            slot = self.raw.get(start)
            if frozen is not None and start < frozen:
                out["duplicate" if slot is not None and o.post_id in slot else "late"] += 1
                continue
            if slot is None:
                slot = self.raw[start] = {}
                bisect.insort(self.starts, start)
            member = encode_member(o)
            prev = slot.get(o.post_id)
            slot[o.post_id] = member
            out["counted" if prev is None else "duplicate" if prev == member else "relabelled"] += 1
            self.min_ms = o.event_ms if self.min_ms is None else min(self.min_ms, o.event_ms)
            self.max_ms = o.event_ms if self.max_ms is None else max(self.max_ms, o.event_ms)
        self.counted_apart["late"] += out["late"]
        return dict(out)

    def count_rejected(self, reasons: dict[str, int]) -> None:
        for reason, n in reasons.items():
            self.counted_apart[f"rejected_{reason}"] += n

    def bounds(self) -> tuple[int | None, int | None]:
        return self.min_ms, self.max_ms

    def frozen_ms(self) -> int | None:
        return self._frozen

    def freeze(self, until_ms: int) -> None:
        if self._frozen is None or until_ms > self._frozen:
            self._frozen = until_ms

    def prune(self, before_ms: int) -> None:
        """Forget the slots that start before ``before_ms`` (no window still to evaluate needs them)."""
        k = bisect.bisect_left(self.starts, before_ms)
        for start in self.starts[:k]:
            self.raw.pop(start, None)
            self.agg.pop(start, None)
        del self.starts[:k]

    def data_slots(self, lo_ms: int | None, hi_ms: int) -> list[int]:
        i = 0 if lo_ms is None else bisect.bisect_left(self.starts, lo_ms)
        j = bisect.bisect_left(self.starts, hi_ms)
        return self.starts[i:j]

    def aggs(self, starts: Sequence[int]) -> dict[int, SlotAgg]:
        out = {}
        for s in starts:
            if self._frozen is None or s >= self._frozen or s not in self.raw:
                continue
            agg = self.agg.get(s)
            if agg is None:
                agg = self.agg[s] = SlotAgg.of(self.raw[s].items())
            out[s] = agg
        return out

    def evaluated_ms(self, spec: WindowSpec) -> int | None:
        return self.evaluated.get(spec.size_s)

    def set_evaluated(self, spec: WindowSpec, end_ms: int) -> None:
        self.evaluated[spec.size_s] = max(end_ms, self.evaluated.get(spec.size_s, end_ms))

    def has_alert(self, alert_id: str) -> bool:
        return alert_id in self.alerts

    def last_alert_end(self, kind: str, scope: str) -> int | None:
        return self.last.get(_last_field(kind, scope))

    def put_alert(self, alert: Alert) -> tuple[bool, Alert]:
        stored = self.alerts.get(alert.id)
        if stored is not None:
            return False, stored
        self.alerts[alert.id] = alert
        field = _last_field(alert.kind, ALL if alert.aspect is None else alert.aspect)
        self.last[field] = max(alert.window_end_ms, self.last.get(field, alert.window_end_ms))
        return True, alert


# --- Redis -------------------------------------------------------------------------------

_ADD_LUA = """
-- KEYS: state, slot hash, slots zset    ARGV: post id, member, event ms, slot start ms, slot start s, ttl
local f = redis.call('HGET', KEYS[1], 'frozen_ms')
local ev = tonumber(ARGV[3])
if f and tonumber(ARGV[4]) < tonumber(f) then
  if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 2 end
  return 3
end
local prev = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
redis.call('ZADD', KEYS[3], tonumber(ARGV[5]), ARGV[5])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
local lo = redis.call('HGET', KEYS[1], 'min_ms')
if not lo or ev < tonumber(lo) then redis.call('HSET', KEYS[1], 'min_ms', ARGV[3]) end
local hi = redis.call('HGET', KEYS[1], 'max_ms')
if not hi or ev > tonumber(hi) then redis.call('HSET', KEYS[1], 'max_ms', ARGV[3]) end
if not prev then return 1 end
if prev == ARGV[2] then return 2 end
return 4
"""

_MAX_LUA = """
-- KEYS: hash   ARGV: field, value: the field becomes max(field, value)
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or tonumber(ARGV[2]) > tonumber(old) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""

_ALERT_LUA = """
-- KEYS: alert:{id}, alerts zset, alerts:events, alerts:last
-- ARGV: id, json, window end ms, ttl, recent max, last field, events max
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', tonumber(ARGV[4])) then
  return {0, redis.call('GET', KEYS[1])}
end
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[5]) + 1))
redis.call('XADD', KEYS[3], 'MAXLEN', '~', tonumber(ARGV[7]), '*', 'id', ARGV[1])
local old = redis.call('HGET', KEYS[4], ARGV[6])
if not old or tonumber(ARGV[3]) > tonumber(old) then redis.call('HSET', KEYS[4], ARGV[6], ARGV[3]) end
return {1, ARGV[2]}
"""

ALERT_EVENTS_MAX = 1000


class RedisState:
    """The detector's state in Redis (module docstring); synchronous (the runner calls it from a
    thread). Frozen slot aggregates are cached in the process: they never change."""

    def __init__(self, url: str, layout: KeyLayout, config: AlertConfig, client: Any = None) -> None:
        import redis

        self.layout = layout
        self.config = config
        self.slot_ms = config.slot_ms
        self.ttl_s = config.horizon_s + 86_400
        self.client = client or redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._add = self.client.register_script(_ADD_LUA)
        self._max = self.client.register_script(_MAX_LUA)
        self._alert = self.client.register_script(_ALERT_LUA)
        self._aggs: dict[int, SlotAgg] = {}

    def close(self) -> None:
        self.client.close()

    def _slot_key(self, start_ms: int) -> str:
        return self.layout.alert_slot(self.config.slot_s, start_ms // 1000)

    def add(self, obs: Sequence[Observation]) -> dict[str, int]:
        out: Counter[str] = Counter()
        state, slots = self.layout.alert_state, self.layout.alert_slots(self.config.slot_s)
        for k in range(0, len(obs), 500):
            pipe = self.client.pipeline(transaction=False)
            for o in obs[k : k + 500]:
                start = slot_of(o.event_ms, self.slot_ms)
                self._add(keys=[state, self._slot_key(start), slots],
                          args=[o.post_id, encode_member(o), o.event_ms, start, start // 1000, self.ttl_s], client=pipe)  # fmt: skip
            for code in pipe.execute():
                out[_OUTCOMES[int(code)]] += 1
        if out["late"]:
            self.client.hincrby(self.layout.alert_counts, "late", out["late"])
        return dict(out)

    def count_rejected(self, reasons: dict[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for reason, n in reasons.items():
            pipe.hincrby(self.layout.alert_counts, f"rejected_{reason}", n)
        pipe.execute()

    def _state(self, *fields: str) -> list[int | None]:
        vals = self.client.hmget(self.layout.alert_state, list(fields))
        return [None if v is None else int(v) for v in vals]

    def bounds(self) -> tuple[int | None, int | None]:
        lo, hi = self._state("min_ms", "max_ms")
        return lo, hi

    def frozen_ms(self) -> int | None:
        return self._state("frozen_ms")[0]

    def freeze(self, until_ms: int) -> None:
        self._max(keys=[self.layout.alert_state], args=["frozen_ms", until_ms])

    def prune(self, before_ms: int) -> None:
        """Drop the slots that start before ``before_ms`` from the index of slots (their keys expire)."""
        self.client.zremrangebyscore(self.layout.alert_slots(self.config.slot_s), "-inf", f"({before_ms // 1000}")
        for s in [s for s in self._aggs if s < before_ms]:
            del self._aggs[s]

    def data_slots(self, lo_ms: int | None, hi_ms: int) -> list[int]:
        lo = "-inf" if lo_ms is None else -(-lo_ms // 1000)
        got = self.client.zrangebyscore(self.layout.alert_slots(self.config.slot_s), lo, f"({hi_ms // 1000}")
        return [int(s) * 1000 for s in got]

    def aggs(self, starts: Sequence[int]) -> dict[int, SlotAgg]:
        frozen = self.frozen_ms()
        if frozen is None:
            return {}
        wanted = [s for s in starts if s < frozen]
        out = {s: self._aggs[s] for s in wanted if s in self._aggs}
        missing = [s for s in wanted if s not in out]
        if missing:
            keys = [self.layout.alert_agg(self.config.slot_s, s // 1000) for s in missing]
            for s, key, raw in zip(missing, keys, self.client.mget(keys)):
                if raw is None:  # frozen but not aggregated yet: aggregate it (any detector gets the same)
                    members = self.client.hgetall(self._slot_key(s))
                    agg = SlotAgg.of((k.decode(), v.decode()) for k, v in members.items())
                    if not self.client.set(key, agg.to_json(), nx=True, ex=self.ttl_s):
                        agg = SlotAgg.from_json(self.client.get(key) or agg.to_json())
                else:
                    agg = SlotAgg.from_json(raw)
                out[s] = self._aggs[s] = agg
        return out

    def evaluated_ms(self, spec: WindowSpec) -> int | None:
        return self._state(f"evaluated:{spec.size_s}s")[0]

    def set_evaluated(self, spec: WindowSpec, end_ms: int) -> None:
        self._max(keys=[self.layout.alert_state], args=[f"evaluated:{spec.size_s}s", end_ms])

    def has_alert(self, alert_id: str) -> bool:
        return bool(self.client.exists(self.layout.alert(alert_id)))

    def last_alert_end(self, kind: str, scope: str) -> int | None:
        v = self.client.hget(self.layout.alert_last, _last_field(kind, scope))
        return None if v is None else int(v)

    def put_alert(self, alert: Alert) -> tuple[bool, Alert]:
        scope = ALL if alert.aspect is None else alert.aspect
        created, stored = self._alert(
            keys=[self.layout.alert(alert.id), self.layout.alerts, self.layout.alert_events, self.layout.alert_last],
            args=[alert.id, alert.model_dump_json(), alert.window_end_ms, self.config.ttl_s, self.config.recent_max,
                  _last_field(alert.kind, scope), ALERT_EVENTS_MAX],
        )  # fmt: skip
        return bool(int(created)), (alert if int(created) else Alert.model_validate_json(stored))


def members_of(state: RedisState, start_ms: int) -> dict[str, tuple[str, str]]:
    """The results counted in one slot (post id -> (label, aspect)), for inspection and tests."""
    raw = state.client.hgetall(state._slot_key(start_ms))
    return {k.decode(): decode_member(v.decode()) for k, v in raw.items()}


__all__ = ["MemoryState", "RedisState", "members_of", "ALERT_EVENTS_MAX"]
