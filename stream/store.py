"""The Redis result store: the worker's sink and a small client users can import.

Key layout (a public interface; ``P`` is the prefix setting, default ``mulcot:``):

=====================================  ======  ==========================================
key                                    type    content
=====================================  ======  ==========================================
``P result:{id}``                      string  the SentimentResult JSON; TTL ``result_ttl_s``
``P recent``                           zset    post ids scored by event time (ms); newest
                                               ``recent_max`` kept
``P aspect:{aspect}``                  zset    the same per aspect (lower-cased, trimmed);
                                               newest ``aspect_recent_max`` kept; TTL
                                               ``result_ttl_s``
``P counts:{window}s:{bucket}``        hash    ``{positive|neutral|negative: n}`` for posts
                                               whose event time falls in the bucket
                                               starting at ``bucket`` (epoch seconds);
                                               TTL ``window * count_retention``
``P acounts:{window}s:{bucket}:{a}``   hash    the same per aspect (``a`` as in
                                               ``aspect:{a}``); same TTL
``P thumb:{id}``                       string  a small JPEG thumbnail of the post's image
                                               (longest side <= 160 px, <= 16 KiB); only
                                               for posts with an image; TTL as the result
``P text:{id}``                        string  the post's text (first 1,000 characters),
                                               for the dashboard; TTL as the result
``P events``                           stream  one entry per result that changed state,
                                               fields ``id``, ``label``; about ``events_max``
                                               newest kept (``XADD MAXLEN ~``)
``P dead_letters``                     hash    ``{error code: n}``: dead letters counted by
                                               the worker since the key was created
``P dead_recent``                      list    the newest ``dead_letters_max`` DeadLetter
                                               JSONs, newest first; originals over
                                               ``DEAD_INLINE_MAX_BYTES`` by reference only
``P alert:{id}``                       string  an Alert JSON (``mulcot alerts run``); TTL
                                               ``alerts_ttl_s``
``P alerts``                           zset    alert ids scored by window end (ms); newest
                                               ``alerts_recent_max`` kept
``P alerts:events``                    stream  one entry (``id``) per new alert
``P alerts:...``                       (more)  the detector's own state: docs/alerts.md
=====================================  ======  ==========================================

Event time is the input record's Kafka timestamp. Writes are one Lua script per post, so
they are atomic and idempotent: a result for a post id that already holds a result of the
same model name and version changes nothing (same post twice -> same state) - except that
a result with a chain replaces a labels-only one (label-first mode); a result of a
different model replaces it and moves the counters from the old label to the new one.

Usage::

    from stream.store import ResultStore
    store = ResultStore("redis://127.0.0.1:6379/0")
    store.get("post-1"); store.recent(10); store.by_aspect("coffee", 10); store.counts(3600)

The ``events`` stream is the notification of new results (``mulcot serve``'s
``/api/stream`` follows it with ``XREAD``); a reader that falls more than ``events_max``
entries behind loses the oldest notifications, never results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .protocol import Alert, DeadLetter, SentimentResult

T = TypeVar("T")

_WRITE_LUA = """
-- KEYS: result, recent, aspect (or recent again), thumb, text, events, counts... (overall, then per aspect)
-- ARGV: payload, ttl, event_ms, id, label, model, recent_max, aspect_max, has_aspect, has_chain,
--       thumbnail ('' for none), text ('' for none), events_max, one TTL per counts key
local old = redis.call('GET', KEYS[1])
local old_label = false
if old then
  local ok, obj = pcall(cjson.decode, old)
  if ok and type(obj) == 'table' then
    local old_chain = obj['chain'] ~= nil and obj['chain'] ~= cjson.null
    if (tostring(obj['model_name']) .. '/' .. tostring(obj['model_version'])) == ARGV[6]
       and (old_chain or ARGV[10] == '0') then
      return 0
    end
    old_label = obj['label']
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[7]) + 1))
if ARGV[9] == '1' then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[3]), ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[8]) + 1))
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
end
if ARGV[11] ~= '' then
  redis.call('SET', KEYS[4], ARGV[11], 'EX', tonumber(ARGV[2]))
end
if ARGV[12] ~= '' then
  redis.call('SET', KEYS[5], ARGV[12], 'EX', tonumber(ARGV[2]))
end
for i = 7, #KEYS do
  if old_label ~= ARGV[5] then
    if old_label then redis.call('HINCRBY', KEYS[i], old_label, -1) end
    redis.call('HINCRBY', KEYS[i], ARGV[5], 1)
  end
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[i + 7]))
end
if tonumber(ARGV[13]) > 0 then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', tonumber(ARGV[13]), '*', 'id', ARGV[4], 'label', ARGV[5])
end
return 1
"""


TEXT_MAX_CHARS = 1000
DEAD_INLINE_MAX_BYTES = 4096
"""Dead letters kept in Redis (``dead_recent``) carry their original inline only up to this size;
a larger original is kept as ``size``, ``sha256`` and the reference of its input record."""


def dead_for_redis(dead: DeadLetter) -> bytes:
    """The JSON a dead letter is kept as in ``P dead_recent``: bounded to a few KB."""
    orig = dead.original
    if orig.data_b64 is not None and orig.size > DEAD_INLINE_MAX_BYTES:
        ref = f"kafka://{dead.source.topic}/{dead.source.partition}/{dead.source.offset}"
        dead = dead.model_copy(update={"original": orig.model_copy(update={"data_b64": None, "ref": ref})})
    return dead.model_dump_json().encode()


def _cut(text: str | None) -> bytes:
    if not text:
        return b""
    if len(text) > TEXT_MAX_CHARS:
        text = text[: TEXT_MAX_CHARS - 1] + "\u2026"
    return text.encode("utf-8", "replace")


def aspect_key_part(aspect: str) -> str:
    return " ".join(aspect.strip().lower().split())


@dataclass
class KeyLayout:
    prefix: str = "mulcot:"
    result_ttl_s: int = 7 * 24 * 3600
    recent_max: int = 10_000
    aspect_recent_max: int = 1_000
    count_windows_s: Sequence[int] = field(default_factory=lambda: [60, 3600, 86400])
    count_retention: int = 48
    events_max: int = 10_000
    dead_letters_max: int = 1000

    def result(self, post_id: str) -> str:
        return f"{self.prefix}result:{post_id}"

    @property
    def recent(self) -> str:
        return f"{self.prefix}recent"

    def aspect(self, aspect: str) -> str:
        return f"{self.prefix}aspect:{aspect_key_part(aspect)}"

    def counts(self, window_s: int, bucket: int) -> str:
        return f"{self.prefix}counts:{window_s}s:{bucket}"

    def aspect_counts(self, window_s: int, bucket: int, aspect: str) -> str:
        return f"{self.prefix}acounts:{window_s}s:{bucket}:{aspect_key_part(aspect)}"

    def thumbnail(self, post_id: str) -> str:
        return f"{self.prefix}thumb:{post_id}"

    def text(self, post_id: str) -> str:
        return f"{self.prefix}text:{post_id}"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}dead_letters"

    @property
    def dead_recent(self) -> str:
        return f"{self.prefix}dead_recent"

    # --- sentiment-shift alerts (stream/alerts; docs/alerts.md) --------------------------
    def alert(self, alert_id: str) -> str:
        return f"{self.prefix}alert:{alert_id}"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}alerts"

    @property
    def alert_events(self) -> str:
        return f"{self.prefix}alerts:events"

    @property
    def alert_state(self) -> str:
        return f"{self.prefix}alerts:state"

    @property
    def alert_counts(self) -> str:
        return f"{self.prefix}alerts:counts"

    @property
    def alert_last(self) -> str:
        return f"{self.prefix}alerts:last"

    def alert_slot(self, slot_s: int, start_s: int) -> str:
        return f"{self.prefix}alerts:slot:{slot_s}s:{start_s}"

    def alert_slots(self, slot_s: int) -> str:
        return f"{self.prefix}alerts:slots:{slot_s}s"

    def alert_agg(self, slot_s: int, start_s: int) -> str:
        return f"{self.prefix}alerts:agg:{slot_s}s:{start_s}"

    @classmethod
    def from_settings(cls, s: Any) -> KeyLayout:
        return cls(
            prefix=s.redis_prefix,
            result_ttl_s=s.result_ttl_s,
            recent_max=s.recent_max,
            aspect_recent_max=s.aspect_recent_max,
            count_windows_s=list(s.count_windows_s),
            count_retention=s.count_retention,
            events_max=getattr(s, "events_max", 10_000),
            dead_letters_max=getattr(s, "dead_letters_max", 1000),
        )

    def write_args(
        self,
        result: SentimentResult,
        payload: bytes,
        event_ms: int,
        thumbnail: bytes | None = None,
        text: str | None = None,
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the write script for one result (``text``: the post's text, kept
        beside the result for the dashboard, cut to ``TEXT_MAX_CHARS``)."""
        has_aspect = bool(result.aspect and aspect_key_part(result.aspect))
        event_s = event_ms // 1000
        keys = [
            self.result(result.id),
            self.recent,
            self.aspect(result.aspect) if has_aspect else self.recent,
            self.thumbnail(result.id),
            self.text(result.id),
            self.events,
        ]
        ttls = []
        for w in self.count_windows_s:
            keys.append(self.counts(w, event_s - event_s % w))
            ttls.append(w * self.count_retention)
        if has_aspect:
            for w in self.count_windows_s:
                keys.append(self.aspect_counts(w, event_s - event_s % w, result.aspect or ""))
                ttls.append(w * self.count_retention)
        args = [
            payload,
            self.result_ttl_s,
            event_ms,
            result.id,
            result.label,
            f"{result.model_name}/{result.model_version}",
            self.recent_max,
            self.aspect_recent_max,
            "1" if has_aspect else "0",
            "1" if result.chain is not None else "0",
            thumbnail or b"",
            _cut(text),
            self.events_max,
            *ttls,
        ]
        return keys, args


class AsyncResultWriter:
    """The worker's sink: writes a batch of results in one pipelined round trip."""

    def __init__(self, url: str, layout: KeyLayout) -> None:
        import redis.asyncio as aioredis

        self.layout = layout
        self.client = aioredis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
        self._sha: str | None = None

    async def ping(self) -> None:
        await self.client.ping()

    async def write(self, items: Iterable[tuple]) -> int:  # type: ignore[type-arg]
        """Write ``(result, json_bytes, event_ms)`` or ``(result, json_bytes, event_ms, thumbnail,
        text)`` items (``thumbnail``: JPEG bytes from :func:`stream.images.thumbnail` or None;
        ``text``: the post's text or None); returns how many changed state, or raises the first
        error. Each changed result also gets an entry on the ``events`` stream."""
        changed = 0
        for got in await self.write_each(items):
            if isinstance(got, BaseException):
                raise got
            changed += int(got)
        return changed

    async def write_each(self, items: Iterable[tuple]) -> list[Any]:  # type: ignore[type-arg]
        """Write the items in one pipelined round trip; one entry per item: 1 (changed state) or
        0 (already there) when written, else the error Redis replied for that item (the others are written all the same).
        Raises when the round trip itself fails (connection errors). A server that lost the
        script cache answers NOSCRIPT (retriable): the script is loaded again on the next call."""
        from redis.exceptions import NoScriptError

        items = list(items)
        if not items:
            return []
        if self._sha is None:
            self._sha = await self.client.script_load(_WRITE_LUA)
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            keys, args = self.layout.write_args(*item)
            pipe.evalsha(self._sha, len(keys), *keys, *args)
        out = await pipe.execute(raise_on_error=False)
        if any(isinstance(x, NoScriptError) for x in out):
            self._sha = None
        return list(out)

    async def count_dead(self, codes: Mapping[str, int]) -> None:
        """Add dead letters by error code (``{"invalid_json": 2, ...}``) to the ``dead_letters`` hash."""
        codes = {str(k): int(v) for k, v in codes.items() if v}
        if not codes:
            return
        pipe = self.client.pipeline(transaction=False)
        for code, n in codes.items():
            pipe.hincrby(self.layout.dead_letters, code, n)
        await pipe.execute()

    async def push_dead(self, dead: Sequence[DeadLetter]) -> None:
        """Add dead letters to the bounded ``dead_recent`` list (newest first; ``dead_letters_max``
        kept). A retry after a lost reply may add a batch's dead letters twice."""
        if not dead or self.layout.dead_letters_max <= 0:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(self.layout.dead_recent, *(dead_for_redis(d) for d in dead))
        pipe.ltrim(self.layout.dead_recent, 0, self.layout.dead_letters_max - 1)
        await pipe.execute()

    async def aclose(self) -> None:
        await self.client.aclose()


LABELS = ("positive", "neutral", "negative")
LABEL_SCAN = 2000
"""With a label filter, at most this many of the newest indexed ids are looked at."""

Commands = list[tuple[Any, ...]]
Read = Generator[Commands, list[Any], T]
"""One read, apart from I/O: it yields the commands of one pipelined round trip, ``(method,
*args)`` of a redis-py client, receives their replies, and returns its value. The sync face
(:class:`ResultStore`) and the async face (:class:`AsyncResultStore`) run the same reads."""


@dataclass(frozen=True)
class StoredItem:
    """A result as stored: its JSON (not parsed again) and the post's text kept beside it."""

    post_id: str
    raw: bytes
    text: bytes | None

    @property
    def label(self) -> str | None:
        return json.loads(self.raw).get("label")

    @property
    def aspect_key(self) -> str:
        return aspect_key_part(str(json.loads(self.raw).get("aspect") or ""))

    def result(self) -> SentimentResult:
        return SentimentResult.model_validate_json(self.raw)


def label_counts(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    """A counts hash as read: the three labels, negative counts clamped to 0, other keys ignored."""
    counts = dict.fromkeys(LABELS, 0)
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        if name in counts:
            counts[name] = max(0, int(v))
    return counts


class ReadModel:
    """Every read of the key layout, once (see :data:`Read`); both faces run these."""

    def __init__(self, layout: KeyLayout) -> None:
        self.layout = layout

    def items(self, ids: Sequence[bytes | str]) -> Read[list[StoredItem]]:
        """The stored results (with texts) of ``ids``, in order; expired ones are skipped."""
        pids = [i.decode() if isinstance(i, bytes) else i for i in ids]
        if not pids:
            return []
        keys: list[str] = []
        for pid in pids:
            keys += [self.layout.result(pid), self.layout.text(pid)]
        (got,) = yield [("mget", keys)]
        return [StoredItem(pid, got[2 * n], got[2 * n + 1]) for n, pid in enumerate(pids) if got[2 * n]]

    def newest(self, n: int, aspect: str | None = None, label: str | None = None) -> Read[list[StoredItem]]:
        """The newest ``n`` results (by event time), of all posts or about ``aspect``
        (case-insensitive), with ``label`` when given (among the newest :data:`LABEL_SCAN`)."""
        index = self.layout.aspect(aspect) if aspect is not None else self.layout.recent
        n = max(n, 1)
        if label is None:
            (ids,) = yield [("zrevrange", index, 0, n - 1)]
            return (yield from self.items(ids))
        out: list[StoredItem] = []
        start, step = 0, max(4 * n, 200)
        while len(out) < n and start < LABEL_SCAN:
            (ids,) = yield [("zrevrange", index, start, min(start + step, LABEL_SCAN) - 1)]
            if not ids:
                break
            out += [it for it in (yield from self.items(ids)) if it.label == label]
            start += step
        return out[:n]

    def new_items(self, entries: Sequence[tuple[str, str]], aspect: str | None = None,
                  label: str | None = None) -> Read[list[tuple[str, StoredItem]]]:  # fmt: skip
        """``(entry id, item)`` of the results that ``events`` entries name (a post written twice
        among them: once, at its newest entry), about ``aspect`` and with ``label`` when given."""
        newest: dict[str, str] = {}
        for entry_id, pid in entries:
            if pid:
                newest.pop(pid, None)
                newest[pid] = entry_id
        want = aspect_key_part(aspect) if aspect else None
        items = yield from self.items(list(newest))
        return [(newest[it.post_id], it) for it in items
                if (label is None or it.label == label) and (want is None or it.aspect_key == want)]  # fmt: skip

    def buckets(self, window_s: int, last: int, now_s: float | None = None) -> list[int]:
        """The starts of the last ``last`` buckets of ``window_s``, oldest first."""
        if window_s not in self.layout.count_windows_s:
            raise ValueError(f"window {window_s}s is not counted (windows: {list(self.layout.count_windows_s)})")
        now = int(now_s if now_s is not None else time.time())
        start = now - now % window_s
        return [start - k * window_s for k in range(last - 1, -1, -1)]

    def counts(self, window_s: int, last: int = 1, now_s: float | None = None,
               aspect: str | None = None) -> Read[list[tuple[int, dict[str, int]]]]:  # fmt: skip
        """Per-label counts (:func:`label_counts`) of the last ``last`` buckets, oldest first."""
        buckets = self.buckets(window_s, last, now_s)
        L = self.layout
        got = yield [("hgetall", L.aspect_counts(window_s, b, aspect) if aspect else L.counts(window_s, b)) for b in buckets]
        return [(b, label_counts(raw)) for b, raw in zip(buckets, got)]

    def stats(self, window_s: int, last: int, aspect: str | None = None,
              now_s: float | None = None) -> Read[tuple[list[tuple[int, dict[str, int]]], dict[str, int], int]]:  # fmt: skip
        """:meth:`counts`, the dead-letter counts and the results indexed, in one round trip."""
        buckets = self.buckets(window_s, last, now_s)
        L = self.layout
        got = yield [("hgetall", L.aspect_counts(window_s, b, aspect) if aspect else L.counts(window_s, b)) for b in buckets] + [
            ("hgetall", L.dead_letters), ("zcard", L.recent)]  # fmt: skip
        counts = [(b, label_counts(raw)) for b, raw in zip(buckets, got)]
        return counts, {k.decode(): int(v) for k, v in got[-2].items()}, int(got[-1])

    def dead_letter_counts(self) -> Read[dict[str, int]]:
        (raw,) = yield [("hgetall", self.layout.dead_letters)]
        return {k.decode(): int(v) for k, v in raw.items()}

    def dead_letters(self, n: int = 20, code: str | None = None) -> Read[tuple[int, list[bytes]]]:
        """How many dead letters are kept, and the newest ``n`` as stored (JSON), newest first,
        only those with error ``code`` when given."""
        kept, raws = yield [("llen", self.layout.dead_recent),
                            ("lrange", self.layout.dead_recent, 0, max(n, 1) - 1 if code is None else -1)]  # fmt: skip
        if code is not None:
            raws = [r for r in raws if json.loads(r).get("error") == code]
        return int(kept), raws[: max(n, 1)]

    def aspects(self, limit: int = 12, max_steps: int = 10) -> Read[list[str]]:
        """Up to ``limit`` aspect names that have results (a bounded SCAN of the aspect indexes)."""
        prefix = self.layout.aspect("")
        names: set[str] = set()
        cursor = 0
        for _ in range(max_steps):
            ((cursor, keys),) = yield [("scan", cursor, prefix + "*", 500)]
            names.update(k.decode()[len(prefix) :] for k in keys)
            if not cursor or len(names) >= limit:
                break
        return sorted(names)[:limit]

    def one(self, key: str) -> Read[bytes | None]:
        (got,) = yield [("get", key)]
        return got

    def indexed(self) -> Read[int]:
        (n,) = yield [("zcard", self.layout.recent)]
        return int(n)

    def health(self) -> Read[tuple[int, int]]:
        """``(results indexed, events kept)``, after a PING."""
        _, n, ev = yield [("ping",), ("zcard", self.layout.recent), ("xlen", self.layout.events)]
        return int(n), int(ev)

    def events_after(self, last_id: str = "$", block_ms: int | None = None, count: int = 100) -> Read[list[tuple[str, str]]]:
        """``(entry id, post id)`` of the ``events`` entries after ``last_id`` (``"$"``: only
        new ones; ``"0"``: all kept), waiting up to ``block_ms`` for the first one."""
        (got,) = yield [("xread", {self.layout.events: last_id}, count, block_ms)]
        return [(entry_id.decode(), fields.get(b"id", b"").decode()) for _stream, entries in got or [] for entry_id, fields in entries]

    def last_event_id(self) -> Read[str]:
        """The id of the newest ``events`` entry ("0-0" when there is none)."""
        (got,) = yield [("xrevrange", self.layout.events, "+", "-", 1)]
        return got[0][0].decode() if got else "0-0"

    # --- sentiment-shift alerts (``mulcot alerts run`` writes them; docs/alerts.md) ---------
    def alerts(self, n: int = 20) -> Read[list[bytes]]:
        """The stored JSON of the ``n`` alerts with the newest windows, newest first (expired
        ones skipped)."""
        (ids,) = yield [("zrevrange", self.layout.alerts, 0, max(n, 1) - 1)]
        return (yield from self._alerts_of(ids))

    def _alerts_of(self, ids: Sequence[bytes]) -> Read[list[bytes]]:
        if not ids:
            return []
        (raws,) = yield [("mget", [self.layout.alert(i.decode()) for i in ids])]
        return [r for r in raws if r]

    def alert_counts(self) -> Read[dict[str, int]]:
        """Results the alert detector counted apart: ``late``, ``rejected_invalid``, ``rejected_timestamp``."""
        (raw,) = yield [("hgetall", self.layout.alert_counts)]
        return {k.decode(): int(v) for k, v in raw.items()}

    def alerts_page(self, n: int) -> Read[tuple[str, list[bytes], dict[str, int]]]:
        """The newest ``alerts:events`` entry id ("0-0" when none), :meth:`alerts` and
        :meth:`alert_counts`, in two round trips."""
        L = self.layout
        last, ids, raw = yield [("xrevrange", L.alert_events, "+", "-", 1), ("zrevrange", L.alerts, 0, max(n, 1) - 1),
                                ("hgetall", L.alert_counts)]  # fmt: skip
        items = yield from self._alerts_of(ids)
        return (last[0][0].decode() if last else "0-0"), items, {k.decode(): int(v) for k, v in raw.items()}

    def last_alert_event_id(self) -> Read[str]:
        """The id of the newest ``alerts:events`` entry ("0-0" when there is none)."""
        (got,) = yield [("xrevrange", self.layout.alert_events, "+", "-", 1)]
        return got[0][0].decode() if got else "0-0"

    def alert_events_after(self, last_id: str, block_ms: int | None = None, count: int = 100) -> Read[list[tuple[str, bytes]]]:
        """``(entry id, stored alert JSON)`` of the alerts announced after ``alerts:events`` entry
        ``last_id``, waiting up to ``block_ms`` for the first. Alerts that expired meanwhile are
        left out, but their entries still advance the caller: when the newest one expired, it
        comes last as ``(entry id, b"")``."""
        (got,) = yield [("xread", {self.layout.alert_events: last_id}, count, block_ms)]
        entries = [e for _stream, es in got or [] for e in es]
        if not entries:
            return []
        (raws,) = yield [("mget", [self.layout.alert(fields.get(b"id", b"").decode()) for _, fields in entries])]
        out = [(e[0].decode(), r) for e, r in zip(entries, raws) if r]
        if not raws[-1]:
            out.append((entries[-1][0].decode(), b""))
        return out


def _queue(pipe: Any, commands: Commands) -> None:
    for name, *args in commands:
        getattr(pipe, name)(*args)


def run_sync(client: Any, read: Read[T]) -> T:
    """Run a read on a redis-py client (one pipelined round trip per step)."""
    try:
        commands = next(read)
        while True:
            pipe = client.pipeline(transaction=False)
            _queue(pipe, commands)
            commands = read.send(pipe.execute())
    except StopIteration as done:
        return done.value


async def run_async(client: Any, read: Read[T]) -> T:
    """Run a read on a redis-py asyncio client (one pipelined round trip per step)."""
    try:
        commands = next(read)
        while True:
            pipe = client.pipeline(transaction=False)
            _queue(pipe, commands)
            commands = read.send(await pipe.execute())
    except StopIteration as done:
        return done.value


class AsyncResultStore:
    """The async face of :class:`ReadModel` (``mulcot serve``): ``await store.run(store.reads.newest(20))``."""

    def __init__(self, client: Any, layout: KeyLayout) -> None:
        self.client = client
        self.layout = layout
        self.reads = ReadModel(layout)

    async def run(self, read: Read[T]) -> T:
        return await run_async(self.client, read)


class ResultStore:
    """Read (and, for tools, write) results in Redis; synchronous, for users and the CLI. Its
    reads are :class:`ReadModel`'s, parsed into :class:`~stream.protocol.SentimentResult`."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", layout: KeyLayout | None = None) -> None:
        import redis

        self.layout = layout or KeyLayout()
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.reads = ReadModel(self.layout)

    @classmethod
    def from_settings(cls, settings: Any) -> ResultStore:
        return cls(settings.redis_url_value, KeyLayout.from_settings(settings))

    def close(self) -> None:
        self.client.close()

    def run(self, read: Read[T]) -> T:
        return run_sync(self.client, read)

    def put(
        self, result: SentimentResult, event_ms: int | None = None, thumbnail: bytes | None = None, text: str | None = None
    ) -> bool:
        """Write one result as the worker does (idempotent); True when the state changed."""
        payload = result.model_dump_json().encode()
        if event_ms is None:
            event_ms = int(result.processed_at.timestamp() * 1000)
        keys, args = self.layout.write_args(result, payload, event_ms, thumbnail, text)
        return bool(self.client.eval(_WRITE_LUA, len(keys), *keys, *args))

    def get(self, post_id: str) -> SentimentResult | None:
        raw = self.run(self.reads.one(self.layout.result(post_id)))
        return SentimentResult.model_validate_json(raw) if raw else None

    def matching(self, n: int = 10, aspect: str | None = None, label: str | None = None) -> list[SentimentResult]:
        """The newest ``n`` results, about ``aspect`` and with ``label`` when given (see
        :meth:`ReadModel.newest`), newest first."""
        return [it.result() for it in self.run(self.reads.newest(n, aspect, label))]

    def recent(self, n: int = 10) -> list[SentimentResult]:
        """The newest ``n`` results (by event time), newest first; expired ones are skipped."""
        return self.matching(n)

    def recent_ids(self, n: int = 10) -> list[str]:
        return [i.decode() for i in self.client.zrevrange(self.layout.recent, 0, max(n, 1) - 1)]

    def by_aspect(self, aspect: str, n: int = 10) -> list[SentimentResult]:
        """The newest ``n`` results about ``aspect`` (case-insensitive), newest first."""
        return self.matching(n, aspect)

    def new_results(self, entries: Sequence[tuple[str, str]], aspect: str | None = None,
                    label: str | None = None) -> list[SentimentResult]:  # fmt: skip
        """The results named by ``events`` entries (:meth:`ReadModel.new_items`)."""
        return [it.result() for _, it in self.run(self.reads.new_items(entries, aspect, label))]

    def counts(
        self, window_s: int, last: int = 1, now_s: float | None = None, aspect: str | None = None
    ) -> list[tuple[int, dict[str, int]]]:
        """Per-label counts of the last ``last`` buckets of ``window_s`` (oldest first), of all
        posts or of those about ``aspect``; negative counts read as 0, unknown keys ignored."""
        return self.run(self.reads.counts(window_s, last, now_s, aspect))

    def thumbnail(self, post_id: str) -> bytes | None:
        """The JPEG thumbnail stored with a result, or None (no image, or expired)."""
        return self.run(self.reads.one(self.layout.thumbnail(post_id)))

    def text(self, post_id: str) -> str | None:
        """The post's text kept beside its result (cut to 1,000 characters), or None."""
        raw = self.run(self.reads.one(self.layout.text(post_id)))
        return raw.decode() if raw else None

    def aspects(self, limit: int = 12) -> list[str]:
        """Up to ``limit`` aspect names that have results."""
        return self.run(self.reads.aspects(limit))

    def indexed(self) -> int:
        """How many post ids the recent index holds (bounded by ``recent_max``)."""
        return self.run(self.reads.indexed())

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters by error code, as counted by the workers."""
        return self.run(self.reads.dead_letter_counts())

    def recent_dead_letters(self, n: int = 20, code: str | None = None) -> list[DeadLetter]:
        """The newest ``n`` dead letters the workers kept in Redis (``dead_recent``), newest
        first, optionally only those with error ``code``."""
        _, raws = self.run(self.reads.dead_letters(n, code))
        return [DeadLetter.model_validate_json(r) for r in raws]

    def events_after(self, last_id: str = "$", block_ms: int | None = None, count: int = 100) -> list[tuple[str, str]]:
        """``(entry id, post id)`` of the ``events`` entries after ``last_id`` (``"$"``: only
        new ones; ``"0"``: all kept), waiting up to ``block_ms`` for the first one."""
        return self.run(self.reads.events_after(last_id, block_ms, count))

    def last_event_id(self) -> str:
        """The id of the newest ``events`` entry ("0-0" when there is none)."""
        return self.run(self.reads.last_event_id())

    def ttl(self, post_id: str) -> int:
        return int(self.client.ttl(self.layout.result(post_id)))

    # --- sentiment-shift alerts (``mulcot alerts run`` writes them; docs/alerts.md) ---------
    def alerts(self, n: int = 20) -> list[Alert]:
        """The ``n`` alerts with the newest windows, newest first (expired ones skipped)."""
        return [Alert.model_validate_json(r) for r in self.run(self.reads.alerts(n))]

    def alert(self, alert_id: str) -> Alert | None:
        raw = self.run(self.reads.one(self.layout.alert(alert_id)))
        return Alert.model_validate_json(raw) if raw else None

    def alert_counts(self) -> dict[str, int]:
        """Results the alert detector counted apart: ``late``, ``rejected_invalid``, ``rejected_timestamp``."""
        return self.run(self.reads.alert_counts())


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


__all__ = ["ResultStore", "AsyncResultStore", "ReadModel", "StoredItem", "label_counts", "run_sync", "run_async", "AsyncResultWriter", "KeyLayout", "aspect_key_part", "dead_for_redis", "DEAD_INLINE_MAX_BYTES"]
