"""The read-only query API over the Redis result store (``mulcot serve``), wired together.

``create_app`` makes the Redis client and the async face of the one read model
(:class:`stream.store.AsyncResultStore`), then adds the bearer-token check, CORS, the security
headers and the routes (:mod:`stream.serve.routes`); the response models are in
:mod:`stream.serve.models`. Every endpoint reads; none writes to Redis or takes a Redis command
from the caller. The Redis commands used are GET, MGET, ZREVRANGE, ZCARD, HGETALL, LLEN,
LRANGE, XREAD, XREVRANGE, XLEN and PING.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..store import AsyncResultStore, KeyLayout
from .models import (
    AlertDetail,
    AlertsPage,
    DeadLettersPage,
    Health,
    Problem,
    ResultItem,
    ResultsPage,
    Stats,
    item_bytes,
)
from .routes import MAX_STREAMS, STREAM_BLOCK_MS, api_router, dashboard_router

_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'")  # fmt: skip


def _auth(token: str | None) -> list[Any]:
    """The dependencies of a guarded route: the bearer-token check when a token is set (the
    spec declares the scheme only when it is enforced), else none."""
    if token is None:
        return []
    bearer = HTTPBearer(auto_error=False)

    async def auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    return [Depends(auth)]


def create_app(settings: Any, *, redis_client: Any = None) -> FastAPI:
    """The ASGI app (API + dashboard) for ``settings`` (stream.settings.Settings)."""
    import redis.asyncio as aioredis

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
        lifespan=lifespan, title="mulcot-stream results API", version="1",
        description="Read-only views of the Redis result cache: results, per-label counts, a live event stream.",
        docs_url=None, redoc_url=None, openapi_url="/api/openapi.json",
        responses={422: {"model": Problem, "description": "invalid input"}},
    )  # fmt: skip
    app.state.redis = client
    if settings.serve_cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.serve_cors_origins), allow_methods=["GET"],
                           allow_headers=["Authorization", "Last-Event-ID"])  # fmt: skip

    @app.middleware("http")
    async def headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        resp = await call_next(request)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        if not request.url.path.startswith("/api/"):
            resp.headers.setdefault("Content-Security-Policy", _CSP)
        return resp

    token = settings.serve_token.get_secret_value() if settings.serve_token else None
    store = AsyncResultStore(client, KeyLayout.from_settings(settings))
    app.include_router(api_router(store, _auth(token)))
    app.include_router(dashboard_router())
    return app


__all__ = ["create_app", "ResultItem", "ResultsPage", "Stats", "Health", "DeadLettersPage", "AlertsPage", "AlertDetail", "item_bytes"]
