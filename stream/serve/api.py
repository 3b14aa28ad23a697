"""The read-only query API over the Redis result store (``mulcot serve``).

Every endpoint reads; none writes to Redis or takes a Redis command from the caller. Inputs
are validated and bounded (FastAPI/pydantic: 422 with the reason). The Redis commands used
are GET, MGET, ZREVRANGE, ZCARD, HGETALL, LRANGE, XREAD, XREVRANGE, XLEN and PING.

Results are sent as stored: the JSON the worker wrote is spliced into the response without
being parsed again (the ``recent=50`` page is a ZREVRANGE and one MGET), except where a
label filter has to read the label.
"""

from __future__ import annotations

import json
import pathlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from ..protocol import MAX_ID, DeadLetter, ErrorCode, SentimentResult
from ..store import KeyLayout

STATIC = pathlib.Path(__file__).parent / "static"
MAX_RECENT = 500
MAX_ASPECT = 200
LABEL_SCAN = 2000  # with a label filter, at most this many of the newest ids are looked at
MAX_STREAMS = 64  # concurrent /api/stream clients
STREAM_BLOCK_MS = 5000
LABELS = ("positive", "neutral", "negative")
Label = Literal["positive", "neutral", "negative"]


# --- response models (the OpenAPI spec; the handlers splice stored JSON) -------------------
class ResultItem(BaseModel):
    result: SentimentResult
    text: str | None = Field(None, description="the post's text (first 1,000 characters), when kept")


class ResultsPage(BaseModel):
    count: int = Field(..., ge=0)
    last_event_id: str = Field(..., description="id of the newest events entry when read; pass it as `after` to /api/stream")
    filters: dict[str, Any]
    items: list[ResultItem]


class Bucket(BaseModel):
    start: int = Field(..., description="bucket start, epoch seconds")
    counts: dict[str, int]
    total: int
    shares: dict[str, float]


class Stats(BaseModel):
    window: int
    aspect: str | None
    buckets: list[Bucket]
    dead_letters: dict[str, int] = Field(..., description="dead letters by error code, as counted by the workers")
    results_indexed: int = Field(..., description="ids in the recent index (bounded by recent_max)")


class DeadLettersPage(BaseModel):
    count: int = Field(..., ge=0)
    kept: int = Field(..., ge=0, description="dead letters kept in Redis (the newest dead_letters_max)")
    filters: dict[str, Any]
    items: list[DeadLetter] = Field(..., description="newest first; originals over 4 KiB by reference only")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: str
    results_indexed: int | None = None
    events: int | None = None


class Problem(BaseModel):
    detail: Any


def item_bytes(raw: bytes, text: bytes | None) -> bytes:
    """A ResultItem as JSON from the stored result JSON and text (the result is not re-parsed)."""
    t = json.dumps(text.decode("utf-8", "replace")).encode() if text else b"null"
    return b'{"result":' + raw + b',"text":' + t + b"}"


def create_app(settings: Any, *, redis_client: Any = None) -> FastAPI:
    """The ASGI app (API + dashboard) for ``settings`` (stream.settings.Settings)."""
    import redis.asyncio as aioredis

    layout = KeyLayout.from_settings(settings)
    windows = list(layout.count_windows_s)
    token = settings.serve_token.get_secret_value() if settings.serve_token else None
    client = redis_client or aioredis.from_url(
        settings.redis_url_value, socket_timeout=STREAM_BLOCK_MS / 1000 + 10, socket_connect_timeout=5,
        max_connections=MAX_STREAMS + 32,
    )  # fmt: skip
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if redis_client is None:
            await client.aclose()

    app = FastAPI(
        lifespan=lifespan,
        title="mulcot-stream results API",
        version="1",
        description="Read-only views of the Redis result cache: results, per-label counts, a live event stream.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
        responses={422: {"model": Problem, "description": "invalid input"}},
    )
    app.state.redis = client
    app.state.streams = 0

    if settings.serve_cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.serve_cors_origins), allow_methods=["GET"],
            allow_headers=["Authorization", "Last-Event-ID"],
        )  # fmt: skip

    bearer = HTTPBearer(auto_error=False)

    async def auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(auth)] if token is not None else []  # the spec declares the scheme only when it is enforced

    @app.middleware("http")
    async def headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        resp = await call_next(request)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        if not request.url.path.startswith("/api/"):
            resp.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                "connect-src 'self'; frame-ancestors 'none'",
            )
        return resp

    def page(raws: list[bytes], texts: list[bytes | None], filters: dict[str, Any], last_event_id: str) -> Response:
        items = [item_bytes(raw, text) for raw, text in zip(raws, texts)]
        head = json.dumps({"count": len(items), "last_event_id": last_event_id, "filters": filters})[:-1].encode()
        return Response(head + b',"items":[' + b",".join(items) + b"]}", media_type="application/json")

    async def fetch(ids: list[bytes]) -> tuple[list[bytes], list[bytes | None]]:
        if not ids:
            return [], []
        keys: list[str] = []
        for i in ids:
            pid = i.decode()
            keys += [layout.result(pid), layout.text(pid)]
        got = await client.mget(keys)
        raws, texts = [], []
        for k in range(0, len(got), 2):
            if got[k]:  # expired results are skipped
                raws.append(got[k])
                texts.append(got[k + 1])
        return raws, texts

    async def last_event() -> str:
        got = await client.xrevrange(layout.events, count=1)
        return got[0][0].decode() if got else "0-0"

    # --- endpoints ---------------------------------------------------------------------
    @app.get("/api/health", response_model=Health, responses={503: {"model": Health}}, tags=["meta"])
    async def health() -> Any:
        """Whether Redis answers; how many results are indexed."""
        try:
            pipe = client.pipeline(transaction=False)
            pipe.ping().zcard(layout.recent).xlen(layout.events)
            _, n, ev = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - any Redis failure is "unavailable"
            return JSONResponse({"status": "unavailable", "redis": f"{type(exc).__name__}"}, status_code=503)
        return {"status": "ok", "redis": "ok", "results_indexed": int(n), "events": int(ev)}

    @app.get(
        "/api/results",
        response_model=ResultsPage,
        dependencies=guarded,
        tags=["results"],
        responses={401: {"model": Problem}},
    )
    async def results(
        recent: int = Query(20, ge=1, le=MAX_RECENT, description="how many results (newest first)"),
        aspect: str | None = Query(None, min_length=1, max_length=MAX_ASPECT, description="only results about this aspect (case-insensitive)"),
        label: Label | None = Query(None, description="only results with this label"),
    ) -> Any:
        """The newest results, optionally about one aspect and/or with one label. With a label
        filter, only the newest 2,000 indexed results are searched."""
        index = layout.aspect(aspect) if aspect else layout.recent
        filters = {"recent": recent, "aspect": aspect, "label": label}
        last = await last_event()
        if label is None:
            raws, texts = await fetch(await client.zrevrange(index, 0, recent - 1))
            return page(raws, texts, filters, last)
        raws, texts, start, step = [], [], 0, max(4 * recent, 200)
        while len(raws) < recent and start < LABEL_SCAN:
            ids = await client.zrevrange(index, start, min(start + step, LABEL_SCAN) - 1)
            if not ids:
                break
            got_raws, got_texts = await fetch(ids)
            for raw, text in zip(got_raws, got_texts):
                if json.loads(raw).get("label") == label and len(raws) < recent:
                    raws.append(raw)
                    texts.append(text)
            start += step
        return page(raws, texts, filters, last)

    post_id_path = Path(..., min_length=1, max_length=MAX_ID, description="the post id")

    @app.get(
        "/api/results/{post_id}",
        response_model=ResultItem,
        dependencies=guarded,
        tags=["results"],
        responses={404: {"model": Problem}, 401: {"model": Problem}},
    )
    async def result(post_id: str = post_id_path) -> Any:
        """One post's result (404 when not processed yet, or expired)."""
        raw, text = await client.mget([layout.result(post_id), layout.text(post_id)])
        if not raw:
            raise HTTPException(404, f"no result for post {post_id!r}")
        return Response(item_bytes(raw, text), media_type="application/json")

    @app.get(
        "/api/results/{post_id}/thumbnail",
        dependencies=guarded,
        tags=["results"],
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG, longest side <= 160 px"},
                   404: {"model": Problem}, 401: {"model": Problem}},
    )  # fmt: skip
    async def thumbnail(post_id: str = post_id_path) -> Response:
        """The small JPEG the worker stored with the result (404 for posts without an image)."""
        data = await client.get(layout.thumbnail(post_id))
        if not data:
            raise HTTPException(404, f"no thumbnail for post {post_id!r}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/stats", response_model=Stats, dependencies=guarded, tags=["stats"], responses={401: {"model": Problem}})
    async def stats(
        window: int = Query(
            60 if 60 in windows else windows[0], description="bucket width in seconds (the counted windows)",
            json_schema_extra={"enum": windows},
        ),
        last: int = Query(30, ge=1, le=layout.count_retention, description="how many buckets, the newest last"),
        aspect: str | None = Query(None, min_length=1, max_length=MAX_ASPECT, description="counts of one aspect only"),
    ) -> Any:
        """Counts and shares per label per time bucket (event time), overall or for one aspect,
        plus the dead letters counted by the workers."""
        import time

        if window not in windows:
            raise HTTPException(422, [{"loc": ["query", "window"], "msg": f"window must be one of {windows}", "type": "value_error"}])
        now = int(time.time())
        start = now - now % window
        buckets = [start - k * window for k in range(last - 1, -1, -1)]
        pipe = client.pipeline(transaction=False)
        for b in buckets:
            pipe.hgetall(layout.aspect_counts(window, b, aspect) if aspect else layout.counts(window, b))
        pipe.hgetall(layout.dead_letters).zcard(layout.recent)
        got = await pipe.execute()
        out = []
        for b, raw in zip(buckets, got[: len(buckets)]):
            counts = {lab: 0 for lab in LABELS}
            for k, v in raw.items():
                if k.decode() in counts:
                    counts[k.decode()] = max(0, int(v))
            total = sum(counts.values())
            shares = {lab: (counts[lab] / total if total else 0.0) for lab in LABELS}
            out.append({"start": b, "counts": counts, "total": total, "shares": shares})
        dead = {k.decode(): int(v) for k, v in got[-2].items()}
        return {"window": window, "aspect": aspect, "buckets": out, "dead_letters": dead, "results_indexed": int(got[-1])}

    @app.get("/api/dead-letters", response_model=DeadLettersPage, dependencies=guarded, tags=["dead letters"],
             responses={401: {"model": Problem}})  # fmt: skip
    async def dead_letters(
        recent: int = Query(20, ge=1, le=MAX_RECENT, description="how many dead letters (newest first)"),
        code: ErrorCode | None = Query(None, description="only dead letters with this error code"),
    ) -> Any:
        """The newest dead letters the workers kept in Redis (bounded by `MULCOT_DEAD_LETTERS_MAX`),
        with their code, message, post id, source coordinates and original (inline up to 4 KiB).
        The dead-letter topic holds all of them (`mulcot dead-letters`)."""
        pipe = client.pipeline(transaction=False)
        pipe.llen(layout.dead_recent).lrange(layout.dead_recent, 0, recent - 1 if code is None else -1)
        kept, raws = await pipe.execute()
        if code is not None:
            raws = [r for r in raws if json.loads(r).get("error") == code.value][:recent]
        filters = {"recent": recent, "code": code.value if code is not None else None}
        head = json.dumps({"count": len(raws), "kept": int(kept), "filters": filters})[:-1].encode()
        return Response(head + b',"items":[' + b",".join(raws) + b"]}", media_type="application/json")

    @app.get(
        "/api/stream",
        dependencies=guarded,
        tags=["results"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events: `event: result`, "
                         "`id:` the events entry id, `data:` a ResultItem as JSON; `: ping` comments every 5 s"},
                   401: {"model": Problem}, 503: {"model": Problem}},
    )  # fmt: skip
    async def stream(
        request: Request,
        after: str | None = Query(None, pattern=r"^\d{1,20}-\d{1,20}$", description="send results after this events id (default: only new ones)"),
        aspect: str | None = Query(None, min_length=1, max_length=MAX_ASPECT),
        label: Label | None = Query(None),
    ) -> StreamingResponse:
        """New results as server-sent events, as the workers write them. Resumes after the
        ``Last-Event-ID`` header (or ``after``). A client that falls more than ``events_max``
        results behind misses the oldest notifications."""
        import re

        if app.state.streams >= MAX_STREAMS:
            raise HTTPException(503, "too many event streams open")
        resume = request.headers.get("last-event-id")
        start = resume if resume and re.fullmatch(r"\d{1,20}-\d{1,20}", resume) else after
        want_aspect = " ".join(aspect.strip().lower().split()) if aspect else None

        async def events() -> AsyncIterator[bytes]:
            app.state.streams += 1
            try:
                last = start or await last_event()
                yield b"retry: 2000\n\n"
                while True:
                    got = await client.xread({layout.events: last}, count=200, block=STREAM_BLOCK_MS)
                    if not got:
                        yield b": ping\n\n"
                        continue
                    entries = got[0][1]
                    last = entries[-1][0].decode()
                    newest: dict[bytes, bytes] = {}
                    for entry_id, fields in entries:  # a post written twice in one read: its newest entry
                        newest[fields.get(b"id", b"")] = entry_id
                    ids = [i for i in newest if i]
                    keys: list[str] = []
                    for i in ids:
                        keys += [layout.result(i.decode()), layout.text(i.decode())]
                    vals = await client.mget(keys) if keys else []
                    chunks = []
                    for n, i in enumerate(ids):
                        raw, text = vals[2 * n], vals[2 * n + 1]
                        if not raw:
                            continue
                        if label or want_aspect:
                            obj = json.loads(raw)
                            if label and obj.get("label") != label:
                                continue
                            if want_aspect and " ".join(str(obj.get("aspect") or "").strip().lower().split()) != want_aspect:
                                continue
                        chunks.append(b"id: " + newest[i] + b"\nevent: result\ndata: " + item_bytes(raw, text) + b"\n\n")
                    if chunks:
                        yield b"".join(chunks)
            finally:
                app.state.streams -= 1

        return StreamingResponse(
            events(), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    # --- the dashboard -----------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str = Path(..., pattern=r"^[a-z0-9_-]{1,40}\.(js|css|svg)$")) -> FileResponse:
        path = STATIC / name
        if not path.is_file():
            raise HTTPException(404, "not found")
        media = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}[name.rsplit(".", 1)[1]]
        return FileResponse(path, media_type=media)

    return app


__all__ = ["create_app", "ResultItem", "ResultsPage", "Stats", "Health", "DeadLettersPage"]
