"""The query API's routes (``mulcot serve``): every handler reads through the one Redis read
model (:class:`stream.store.AsyncResultStore`), none writes or takes a Redis command from the
caller. Inputs are validated and bounded (FastAPI/pydantic: 422 with the reason).

Results are sent as stored: the JSON the worker wrote is spliced into the response without
being parsed again (the ``recent=50`` page is a ZREVRANGE and one MGET), except where a label
or aspect filter has to read it.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from ..protocol import MAX_ID, AlertKind, ErrorCode
from ..store import AsyncResultStore
from .models import (
    AlertDetail,
    AlertsPage,
    DeadLettersPage,
    Health,
    Label,
    Problem,
    ResultItem,
    ResultsPage,
    Stats,
    bucket,
    item_bytes,
    page_bytes,
)

STATIC = pathlib.Path(__file__).parent / "static"
MAX_RECENT = 500
MAX_ASPECT = 200
MAX_STREAMS = 64  # concurrent /api/stream and /api/alerts/stream clients
STREAM_BLOCK_MS = 5000
_EVENT_ID = r"^\d{1,20}-\d{1,20}$"
_JSON = "application/json"


def api_router(store: AsyncResultStore, guarded: list[Any]) -> APIRouter:
    """The ``/api/...`` routes over ``store``; ``guarded``: the dependencies of every route but
    ``/api/health`` (the bearer-token check, when one is set)."""
    router = APIRouter()
    reads = store.reads
    _health(router, store)
    _results(router, store, guarded)
    _stats(router, store, guarded, list(reads.layout.count_windows_s), reads.layout.count_retention)
    _dead_letters(router, store, guarded)
    open_streams = [0]  # results and alerts streams together: each holds a Redis connection
    _stream(router, store, guarded, open_streams)
    _alerts(router, store, guarded, open_streams)
    return router


def _health(router: APIRouter, store: AsyncResultStore) -> None:
    @router.get("/api/health", response_model=Health, responses={503: {"model": Health}}, tags=["meta"])
    async def health() -> Any:
        """Whether Redis answers; how many results are indexed."""
        try:
            n, ev = await store.run(store.reads.health())
        except Exception as exc:  # noqa: BLE001 - any Redis failure is "unavailable"
            return JSONResponse({"status": "unavailable", "redis": f"{type(exc).__name__}"}, status_code=503)
        return {"status": "ok", "redis": "ok", "results_indexed": n, "events": ev}


def _results(router: APIRouter, store: AsyncResultStore, guarded: list[Any]) -> None:
    reads, layout = store.reads, store.layout
    problems = {401: {"model": Problem}}

    @router.get("/api/results", response_model=ResultsPage, dependencies=guarded, tags=["results"], responses=problems)
    async def results(
        recent: int = Query(20, ge=1, le=MAX_RECENT, description="how many results (newest first)"),
        aspect: str | None = Query(None, min_length=1, max_length=MAX_ASPECT, description="only results about this aspect (case-insensitive)"),
        label: Label | None = Query(None, description="only results with this label"),
    ) -> Any:
        """The newest results, optionally about one aspect and/or with one label. With a label
        filter, only the newest 2,000 indexed results are searched."""
        last = await store.run(reads.last_event_id())
        items = await store.run(reads.newest(recent, aspect, label))
        head = {"count": len(items), "last_event_id": last, "filters": {"recent": recent, "aspect": aspect, "label": label}}
        return Response(page_bytes(head, [item_bytes(it.raw, it.text) for it in items]), media_type=_JSON)

    post_id_path = Path(..., min_length=1, max_length=MAX_ID, description="the post id")

    @router.get("/api/results/{post_id}", response_model=ResultItem, dependencies=guarded, tags=["results"],
                responses={404: {"model": Problem}, **problems})  # fmt: skip
    async def result(post_id: str = post_id_path) -> Any:
        """One post's result (404 when not processed yet, or expired)."""
        got = await store.run(reads.items([post_id]))
        if not got:
            raise HTTPException(404, f"no result for post {post_id!r}")
        return Response(item_bytes(got[0].raw, got[0].text), media_type=_JSON)

    @router.get(
        "/api/results/{post_id}/thumbnail", dependencies=guarded, tags=["results"], response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG, longest side <= 160 px"},
                   404: {"model": Problem}, **problems},
    )  # fmt: skip
    async def thumbnail(post_id: str = post_id_path) -> Response:
        """The small JPEG the worker stored with the result (404 for posts without an image)."""
        data = await store.run(reads.one(layout.thumbnail(post_id)))
        if not data:
            raise HTTPException(404, f"no thumbnail for post {post_id!r}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _stats(router: APIRouter, store: AsyncResultStore, guarded: list[Any], windows: list[int], retention: int) -> None:
    @router.get("/api/stats", response_model=Stats, dependencies=guarded, tags=["stats"], responses={401: {"model": Problem}})
    async def stats(
        window: int = Query(
            60 if 60 in windows else windows[0], description="bucket width in seconds (the counted windows)",
            json_schema_extra={"enum": windows},
        ),
        last: int = Query(30, ge=1, le=retention, description="how many buckets, the newest last"),
        aspect: str | None = Query(None, min_length=1, max_length=MAX_ASPECT, description="counts of one aspect only"),
    ) -> Any:  # fmt: skip
        """Counts and shares per label per time bucket (event time), overall or for one aspect,
        plus the dead letters counted by the workers."""
        if window not in windows:
            raise HTTPException(422, [{"loc": ["query", "window"], "msg": f"window must be one of {windows}", "type": "value_error"}])
        counts, dead, indexed = await store.run(store.reads.stats(window, last, aspect))
        return {"window": window, "aspect": aspect, "buckets": [bucket(b, c) for b, c in counts], "dead_letters": dead,
                "results_indexed": indexed}  # fmt: skip


def _dead_letters(router: APIRouter, store: AsyncResultStore, guarded: list[Any]) -> None:
    @router.get("/api/dead-letters", response_model=DeadLettersPage, dependencies=guarded, tags=["dead letters"],
                responses={401: {"model": Problem}})  # fmt: skip
    async def dead_letters(
        recent: int = Query(20, ge=1, le=MAX_RECENT, description="how many dead letters (newest first)"),
        code: ErrorCode | None = Query(None, description="only dead letters with this error code"),
    ) -> Any:
        """The newest dead letters the workers kept in Redis (bounded by `MULCOT_DEAD_LETTERS_MAX`),
        with their code, message, post id, source coordinates and original (inline up to 4 KiB).
        The dead-letter topic holds all of them (`mulcot dead-letters`)."""
        kept, raws = await store.run(store.reads.dead_letters(recent, code.value if code is not None else None))
        head = {"count": len(raws), "kept": kept, "filters": {"recent": recent, "code": code.value if code is not None else None}}
        return Response(page_bytes(head, raws), media_type=_JSON)


def _resume(request: Request, after: str | None) -> str | None:
    """Where an event stream resumes: after the ``Last-Event-ID`` header when valid, else ``after``."""
    resume = request.headers.get("last-event-id")
    return resume if resume and re.fullmatch(_EVENT_ID, resume) else after


def _sse(open_streams: list[int], start: str | None, newest: Callable[[], Awaitable[str]],
         poll: Callable[[str], Awaitable[tuple[str | None, list[bytes]]]]) -> StreamingResponse:  # fmt: skip
    """A server-sent events response (results or alerts): ``retry:``, then from ``start`` (None:
    ``newest()``, only new entries) whatever ``poll(last)`` returns (the new last entry id and the
    events to send; None: nothing came within the block, a ``: ping`` is sent). At most
    ``MAX_STREAMS`` open at once (503), counted in ``open_streams``."""
    if open_streams[0] >= MAX_STREAMS:
        raise HTTPException(503, "too many event streams open")

    async def events() -> AsyncIterator[bytes]:
        open_streams[0] += 1
        try:
            last = start or await newest()
            yield b"retry: 2000\n\n"
            while True:
                new_last, chunks = await poll(last)
                if new_last is None:
                    yield b": ping\n\n"
                    continue
                last = new_last
                if chunks:
                    yield b"".join(chunks)
        finally:
            open_streams[0] -= 1

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip


def _stream(router: APIRouter, store: AsyncResultStore, guarded: list[Any], open_streams: list[int]) -> None:
    @router.get(
        "/api/stream", dependencies=guarded, tags=["results"], response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events: `event: result`, "
                         "`id:` the events entry id, `data:` a ResultItem as JSON; `: ping` comments every 5 s"},
                   401: {"model": Problem}, 503: {"model": Problem}},
    )  # fmt: skip
    async def stream(
        request: Request,
        after: str | None = Query(None, pattern=_EVENT_ID, description="send results after this events id (default: only new ones)"),
        aspect: str | None = Query(None, min_length=1, max_length=MAX_ASPECT),
        label: Label | None = Query(None),
    ) -> StreamingResponse:
        """New results as server-sent events, as the workers write them. Resumes after the
        ``Last-Event-ID`` header (or ``after``). A client that falls more than ``events_max``
        results behind misses the oldest notifications."""

        async def poll(last: str) -> tuple[str | None, list[bytes]]:
            entries = await store.run(store.reads.events_after(last, STREAM_BLOCK_MS, 200))
            if not entries:
                return None, []
            got = await store.run(store.reads.new_items(entries, aspect, label))
            return entries[-1][0], [f"id: {eid}\nevent: result\ndata: ".encode() + item_bytes(it.raw, it.text) + b"\n\n"
                                    for eid, it in got]  # fmt: skip

        return _sse(open_streams, _resume(request, after), lambda: store.run(store.reads.last_event_id()), poll)


def _alert_matches(raw: bytes, scope: str | None, kind: str | None) -> bool:
    if scope is None and kind is None:
        return True
    obj = json.loads(raw)
    return (kind is None or obj.get("kind") == kind) and (scope is None or obj.get("scope") == scope)


ALERTS_SCAN = 1000
"""With a scope or kind filter, the newest this many alerts kept are looked at."""


def _alerts(router: APIRouter, store: AsyncResultStore, guarded: list[Any], open_streams: list[int]) -> None:
    """``/api/alerts`` (+ detail, + SSE): the alerts ``mulcot alerts run`` wrote (docs/alerts.md)."""
    reads = store.reads
    problems = {401: {"model": Problem}}

    @router.get("/api/alerts", response_model=AlertsPage, dependencies=guarded, tags=["alerts"], responses=problems)
    async def alerts(
        recent: int = Query(20, ge=1, le=MAX_RECENT, description="how many alerts (newest window first)"),
        scope: str | None = Query(None, min_length=1, max_length=MAX_ASPECT, description='"all" or an aspect (case-insensitive)'),
        kind: AlertKind | None = Query(None, description="only alerts of this kind"),
    ) -> Any:
        """The alerts with the newest windows, optionally of one scope and/or kind (among the
        newest 1,000 kept), and what the detector counted apart."""
        want = " ".join(scope.strip().lower().split()) if scope else None
        last, raws, apart = await store.run(reads.alerts_page(recent if want is None and kind is None else ALERTS_SCAN))
        items = [r for r in raws if _alert_matches(r, want, kind)][:recent]
        head = {"count": len(items), "last_event_id": last, "filters": {"recent": recent, "scope": scope, "kind": kind},
                "counted_apart": apart}  # fmt: skip
        return Response(page_bytes(head, items), media_type=_JSON)

    _alert_stream(router, store, guarded, open_streams)  # before the detail route, which would match it

    @router.get("/api/alerts/{alert_id:path}", response_model=AlertDetail, dependencies=guarded, tags=["alerts"],
                responses={404: {"model": Problem}, **problems})  # fmt: skip
    async def alert(alert_id: str = Path(..., min_length=1, max_length=2 * MAX_ID, description="the alert id")) -> Any:
        """One alert with the results of its example posts (404 when unknown or expired)."""
        raw = await store.run(reads.one(reads.layout.alert(alert_id)))
        if not raw:
            raise HTTPException(404, f"no alert {alert_id!r}")
        examples = [e for e in json.loads(raw).get("examples") or [] if isinstance(e, str)]
        got = await store.run(reads.items(examples))
        items = [item_bytes(it.raw, it.text) for it in got]
        return Response(b'{"alert":' + raw + b',"examples":[' + b",".join(items) + b"]}", media_type=_JSON)


def _alert_stream(router: APIRouter, store: AsyncResultStore, guarded: list[Any], open_streams: list[int]) -> None:
    @router.get(
        "/api/alerts/stream", dependencies=guarded, tags=["alerts"], response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events: `event: alert`, "
                         "`id:` the alerts:events entry id, `data:` an Alert as JSON; `: ping` comments every 5 s"},
                   401: {"model": Problem}, 503: {"model": Problem}},
    )  # fmt: skip
    async def alert_stream(
        request: Request,
        after: str | None = Query(None, pattern=_EVENT_ID, description="send alerts after this events id (default: only new ones)"),
    ) -> StreamingResponse:
        """New alerts as server-sent events, as the detector raises them. Resumes after the
        ``Last-Event-ID`` header (or ``after``)."""

        async def poll(last: str) -> tuple[str | None, list[bytes]]:
            got = await store.run(store.reads.alert_events_after(last, STREAM_BLOCK_MS))
            if not got:
                return None, []
            return got[-1][0], [b"id: " + i.encode() + b"\nevent: alert\ndata: " + raw + b"\n\n" for i, raw in got if raw]

        return _sse(open_streams, _resume(request, after), lambda: store.run(store.reads.last_alert_event_id()), poll)


def dashboard_router() -> APIRouter:
    """The dashboard's page and static files."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str = Path(..., pattern=r"^[a-z0-9_-]{1,40}\.(js|css|svg)$")) -> FileResponse:
        path = STATIC / name
        if not path.is_file():
            raise HTTPException(404, "not found")
        media = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}[name.rsplit(".", 1)[1]]
        return FileResponse(path, media_type=media)

    return router


__all__ = ["api_router", "dashboard_router", "MAX_RECENT", "MAX_STREAMS", "STREAM_BLOCK_MS"]
