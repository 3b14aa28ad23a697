"""One HTTP client for OpenAI-compatible ``/chat/completions`` endpoints (vLLM, SGLang, hosted
APIs), shared by the ``openai:`` student backend and the teacher stage of the training code.

* :class:`ChatClient` - ``httpx`` async client with a concurrency limit, an optional request-rate
  limit, a timeout per request, and retries with exponential backoff and jitter (honouring
  ``Retry-After``) on 408/409/425/429/5xx, timeouts and transport errors; token counts (and an
  optional cost) from each answer's ``usage``.
* :class:`LoopThread` - a private event loop in a daemon thread, so synchronous callers (a
  student's ``classify``/``explain``, which the stream runs in an executor thread) can drive the
  async client without touching the caller's loop.
* :func:`image_data_url` - a PIL image as a base64 ``data:`` URL (the ``image_url`` content part).

The API key is a constructor argument; :func:`api_key_from_env` reads ``MULCOT_OPENAI_API_KEY``
or ``OPENAI_API_KEY`` for callers that were not given one. Nothing here knows about Kafka.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Answers retried with backoff (everything else that is not 200 fails at once).
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

#: Environment variables read for the API key, first found wins.
API_KEY_ENV = ("MULCOT_OPENAI_API_KEY", "OPENAI_API_KEY")


#: Client errors that say nothing about the request itself (key, permission, model name): the
#: endpoint is misconfigured or unavailable, not the post bad.
UNAVAILABLE_STATUS = frozenset({401, 403, 404})


class EndpointError(RuntimeError):
    """The endpoint did not give a usable answer (after the retries, or a non-retried status).

    ``status`` is the last HTTP status (None for transport errors and malformed answers).
    ``transient`` is True when the endpoint, not the request, is at fault - unreachable,
    overloaded or failing after every retry (429, 5xx, timeouts), or refusing the key or model
    (401/403/404) - so a caller should retry later rather than give the input up: the stream
    then retries the whole batch instead of dead-lettering its posts. It is False for answers
    about the request itself (400, 413, 422, ...) and for malformed answers."""

    def __init__(self, message: str, status: int | None = None, *, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


@dataclass
class Usage:
    """Counters of one client: requests sent (retries included), retries, requests that failed
    for good, tokens from the answers' ``usage`` and the cost from the configured prices."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def api_key_from_env() -> str | None:
    """``$MULCOT_OPENAI_API_KEY``, else ``$OPENAI_API_KEY``, else None."""
    for name in API_KEY_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def image_data_url(image: Any, max_side: int | None = 640, quality: int = 90) -> str:
    """A PIL image as a ``data:image/jpeg;base64,...`` URL (downscaled to ``max_side``)."""
    im = image.convert("RGB")
    if max_side and max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def user_message(text: str, image: Any | None = None, *, image_max_side: int | None = 640) -> dict:
    """One user turn: the image (if any) as an ``image_url`` part, then the text."""
    content: list[dict] = []
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": image_data_url(image, image_max_side)}})
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def message_text(data: dict) -> str:
    """The first choice's message text of a chat-completions answer (content parts joined)."""
    text = data["choices"][0]["message"]["content"]
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    return text or ""


class RateLimiter:
    """At most ``rate`` request starts per second (evenly spaced); ``None``/0 = unlimited."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class ChatClient:
    """Async client of one OpenAI-compatible endpoint.

    Args:
        base_url: e.g. ``http://localhost:8000/v1`` (``/chat/completions`` is appended).
        api_key: bearer token (None: no Authorization header).
        max_concurrency: requests in flight at once.
        requests_per_s: request-rate limit (None = unlimited).
        max_retries: retries per request on 408/409/425/429/5xx, timeouts and transport errors.
        backoff_s: first backoff; doubles per retry, with jitter, capped at ``max_backoff_s``
            (a ``Retry-After`` header, in seconds, is used instead when the server sends one).
        timeout_s: timeout of one HTTP request (connect, read, write, pool).
        price_prompt_per_mtok / price_completion_per_mtok: USD per million tokens for ``usage.cost_usd``.
        client: an ``httpx.AsyncClient`` to use instead of a new one (tests).
    """

    RETRY_STATUS = RETRY_STATUS

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        requests_per_s: float | None = None,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        timeout_s: float = 120.0,
        price_prompt_per_mtok: float = 0.0,
        price_completion_per_mtok: float = 0.0,
        client: Any = None,
    ) -> None:
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max(1, max_concurrency), max_keepalive_connections=max(1, max_concurrency))
        self.client = client or httpx.AsyncClient(timeout=timeout_s, headers=headers, limits=limits)
        self.max_concurrency = max(1, int(max_concurrency))
        self.sem = asyncio.Semaphore(self.max_concurrency)
        self.limiter = RateLimiter(requests_per_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.price_in = float(price_prompt_per_mtok)
        self.price_out = float(price_completion_per_mtok)
        self.usage = Usage()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return max(0.0, min(float(retry_after), self.max_backoff_s))
            except ValueError:
                pass
        base = min(self.backoff_s * (2**attempt), self.max_backoff_s)
        return base * (0.5 + random.random() / 2)

    async def chat(self, body: dict) -> dict:
        """POST ``body`` to ``/chat/completions``; the decoded JSON answer (tokens counted).
        Raises :class:`EndpointError` after the retries or on a non-retried status."""
        import httpx

        last, status = "", None
        async with self.sem:
            for attempt in range(self.max_retries + 1):
                await self.limiter.wait()
                self.usage.requests += 1
                retry_after = None
                try:
                    resp = await self.client.post(self.url, json=body)
                except (httpx.TransportError, httpx.TimeoutException) as e:
                    last, status = f"{type(e).__name__}: {e}", None
                else:
                    status = resp.status_code
                    if status == 200:
                        try:
                            data = resp.json()
                            message_text(data)  # the shape every caller needs
                        except (ValueError, KeyError, IndexError, TypeError) as e:
                            self.usage.failures += 1
                            raise EndpointError(f"malformed answer from {self.url}: {e}: {resp.text[:200]}") from None
                        self._count(data.get("usage") or {})
                        return data
                    last = f"HTTP {status}: {resp.text[:200]}"
                    if status not in self.RETRY_STATUS:
                        self.usage.failures += 1
                        raise EndpointError(f"{self.url} answered {last}", status,
                                            transient=status in UNAVAILABLE_STATUS)
                    retry_after = resp.headers.get("retry-after")
                if attempt < self.max_retries:
                    self.usage.retries += 1
                    delay = self._delay(attempt, retry_after)
                    log.debug("%s: %s; retry %d in %.2f s", self.url, last, attempt + 1, delay)
                    await asyncio.sleep(delay)
        self.usage.failures += 1
        raise EndpointError(f"{self.url}: gave up after {self.max_retries + 1} tries: {last}", status, transient=True)

    def _count(self, usage: dict) -> None:
        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self.usage.prompt_tokens += pt
        self.usage.completion_tokens += ct
        self.usage.cost_usd += (pt * self.price_in + ct * self.price_out) / 1e6

    async def aclose(self) -> None:
        await self.client.aclose()


class LoopThread:
    """An event loop running in a daemon thread: ``run(coro)`` from any other thread blocks
    until the coroutine finishes there and returns its result (or raises its exception)."""

    def __init__(self, name: str = "mulcot-http") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.run called from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def gather(self, coros: list[Awaitable[T]], timeout: float | None = None) -> list[T]:
        """Run the coroutines concurrently on the loop; their results in order (the first
        exception is raised)."""

        async def _all() -> list[T]:
            return list(await asyncio.gather(*coros))

        return self.run(_all(), timeout)

    def call(self, factory: Callable[[], T]) -> T:
        """Run a plain function on the loop's thread (build objects bound to the loop)."""

        async def _call() -> T:
            return factory()

        return self.run(_call())

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


__all__ = [
    "ChatClient",
    "EndpointError",
    "LoopThread",
    "RateLimiter",
    "Usage",
    "RETRY_STATUS",
    "UNAVAILABLE_STATUS",
    "API_KEY_ENV",
    "api_key_from_env",
    "image_data_url",
    "message_text",
    "user_message",
]
