"""The worker's batch step, apart from Faust: records in -> results and dead letters out.

``BatchProcessor.process`` validates each record (pydantic), fetches image URLs (async,
bounded, SSRF-safe), then - off the event loop, in an executor thread - decodes images,
runs the student on the batch and builds the output records. It never raises for bad
input or a failing model: each bad record becomes a :class:`~stream.protocol.DeadLetter`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from model import PostInput, Prediction, Student

from .images import FetchPolicy, ImageError, ImageFetcher, check_image, decode_image, thumbnail
from .messages import InRecord, Outcome, OutDead, OutResult, dead_letter
from .protocol import (
    SCHEMA_VERSION,
    Chain,
    ErrorCode,
    Post,
    Probabilities,
    SentimentResult,
    SourceRef,
    Timings,
    schema_message,
)
from .settings import Settings, load_settings

log = logging.getLogger("mulcot.pipeline")


@dataclass
class _Work:
    rec: InRecord
    post: Post
    image_bytes: bytes | None = None
    error: ImageError | None = None
    thumbnail: bytes | None = None  # small JPEG for the Redis sink (the dashboard)


def _is_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _clean_id(obj: Any) -> str | None:
    """The post id of a parsed JSON value, when it is a usable string."""
    if isinstance(obj, dict) and isinstance(obj.get("id"), str) and not _is_surrogate(obj["id"]):
        return obj["id"][:256] or None
    return None


def _lone_surrogates(raw: bytes) -> tuple[list[str], str | None] | None:
    """For JSON that pydantic refuses only because a string holds a lone UTF-16 surrogate
    escape (``"\\ud800"``, which Python's json accepts): the fields holding one, and the post
    id if usable. None when the value is not that case."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    fields: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, str):
            if _is_surrogate(value):
                fields.append(path or "post")
        elif isinstance(value, dict):
            for k, v in value.items():
                name = f"{path}.{k}" if path else str(k)
                if _is_surrogate(str(k)):
                    fields.append(f"{path or 'post'} (a key)")
                walk(v, name)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}.{i}" if path else str(i))

    walk(obj, "")
    return (fields, _clean_id(obj)) if fields else None


def fetch_policy(settings: Settings) -> FetchPolicy:
    """The image-fetch policy of these settings (the one place a FetchPolicy is made from them)."""
    return FetchPolicy(
        max_bytes=settings.image_max_bytes,
        timeout_s=settings.image_fetch_timeout_s,
        allow_file=settings.image_allow_file_urls,
        allow_private=settings.image_allow_private_hosts,
        host_allowlist=tuple(settings.image_host_allowlist),
    )


class BatchProcessor:
    """Records in -> results and dead letters out, configured by :class:`~stream.settings.Settings`.

    ``settings`` defaults to :func:`~stream.settings.load_settings` (environment and
    ``.env``); ``overrides`` are Settings fields (``chain=False``, ``max_batch=8``, ...), so
    every default lives in Settings only.
    """

    def __init__(
        self,
        student: Student,
        settings: Settings | None = None,
        *,
        executor: Executor | None = None,
        worker: str = "",
        **overrides: Any,
    ) -> None:
        s = settings if settings is not None else load_settings()
        if overrides:
            s = type(s).model_validate({**s.model_dump(), **overrides})
        self.settings = s
        self.student = student
        self.executor = executor
        self.chain = s.chain
        self.image_max_bytes = s.image_max_bytes
        self.image_max_pixels = s.image_max_pixels
        self.fetch_policy = fetch_policy(s)
        self.fetcher = ImageFetcher(self.fetch_policy, s.image_fetch_concurrency)
        self.dlq_inline_max_bytes = s.dlq_inline_max_bytes
        self.worker = worker
        # Pillow releases the GIL while decoding, so a small pool decodes images in parallel
        self.decode_threads = max(1, s.decode_threads)
        self.decode_pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="mulcot-decode")
        # students that never read pixels (the no-op one): image headers are checked, not decoded
        self.decode_pixels = s.image_decode == "full" or getattr(student, "reads_pixels", True)
        self.thumbnails = s.thumbnails

    @classmethod
    def from_settings(cls, settings: Settings, student: Student, executor: Executor | None = None, worker: str = "") -> BatchProcessor:
        return cls(student, settings, executor=executor, worker=worker)

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        self.decode_pool.shutdown(wait=False)

    # --- dead letters -------------------------------------------------------------------
    def dead_letter(self, rec: InRecord, code: ErrorCode, message: str, post_id: str | None = None) -> OutDead:
        return dead_letter(rec, code, message, post_id, inline_max=self.dlq_inline_max_bytes, worker=self.worker)

    # --- the batch ----------------------------------------------------------------------
    def parse(self, rec: InRecord) -> _Work | OutDead:
        if not rec.value:
            return self.dead_letter(rec, ErrorCode.INVALID_JSON, "empty record value")
        try:
            post = Post.model_validate_json(rec.value)
        except ValidationError as exc:
            errs = exc.errors()
            if any(e["type"] == "json_invalid" for e in errs):
                lone = _lone_surrogates(rec.value)
                if lone is not None:  # valid JSON syntax, but text that is not Unicode: a schema error
                    fields, post_id = lone
                    return self.dead_letter(rec, ErrorCode.SCHEMA, "; ".join(
                        f"{f}: contains a lone UTF-16 surrogate escape (such as \\ud800), which is not valid Unicode text"
                        for f in fields[:5]), post_id)  # fmt: skip
                return self.dead_letter(rec, ErrorCode.INVALID_JSON, f"not valid JSON: {errs[0]['msg']}")
            if any(e["type"] == "model_type" and not e.get("loc") for e in errs):
                return self.dead_letter(rec, ErrorCode.INVALID_JSON, "JSON value is not an object")
            post_id = None
            try:
                post_id = _clean_id(json.loads(rec.value))
            except ValueError:
                pass
            return self.dead_letter(rec, ErrorCode.SCHEMA, schema_message(exc), post_id)
        if post.schema_version != SCHEMA_VERSION:
            return self.dead_letter(
                rec,
                ErrorCode.UNSUPPORTED_VERSION,
                f"schema_version {post.schema_version} is not supported (this worker reads {SCHEMA_VERSION})",
                post.id,
            )
        work = _Work(rec, post)
        if post.image_b64 is not None:
            approx = len(post.image_b64) * 3 // 4
            if approx > self.image_max_bytes + 3:
                return self.dead_letter(
                    rec, ErrorCode.IMAGE_TOO_LARGE, f"image is about {approx} bytes (limit {self.image_max_bytes})", post.id
                )
            try:
                work.image_bytes = post.image_bytes()
            except ValueError as exc:
                return self.dead_letter(rec, ErrorCode.SCHEMA, f"image_b64: {exc}", post.id)
        return work

    async def process(
        self, records: Sequence[InRecord], on_labels: Callable[[list[OutResult]], Awaitable[None]] | None = None
    ) -> Outcome:
        """Validate, fetch, decode, run the student. With ``on_labels`` (label-first mode) the
        labels-only results are handed to it (and awaited) before the chains are generated."""
        t_start = time.time()
        outcome = Outcome(batch_size=len(records))
        work: list[_Work] = []
        for rec in records:
            item = self.parse(rec)
            if isinstance(item, OutDead):
                outcome.dead.append(item)
            else:
                work.append(item)
        fetches = [w for w in work if w.post.image_url is not None]
        if fetches:
            got = await asyncio.gather(*(self.fetcher.fetch(w.post.image_url) for w in fetches), return_exceptions=True)
            for w, res in zip(fetches, got):
                if isinstance(res, ImageError):
                    w.error = res
                elif isinstance(res, BaseException):
                    w.error = ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"fetch failed: {type(res).__name__}: {res}")
                else:
                    w.image_bytes = res
        for w in work:
            if w.error is not None:
                outcome.dead.append(self.dead_letter(w.rec, w.error.code, w.error.message, w.post.id))
        work = [w for w in work if w.error is None]
        if work:
            loop = asyncio.get_running_loop()
            k = min(self.decode_threads, max(1, sum(w.image_bytes is not None for w in work) // 8))
            chunks = [work[i::k] for i in range(k)]
            decoded = await asyncio.gather(*(loop.run_in_executor(self.decode_pool, self._decode, c) for c in chunks))
            ready: list[tuple[_Work, PostInput]] = []
            for ok, bad in decoded:
                ready.extend(ok)
                outcome.dead.extend(bad)
            ready.sort(key=lambda item: (item[0].rec.partition, item[0].rec.offset))
            if on_labels is not None and self.chain and ready:
                # label first: publish labels-only results, then generate the chains
                early, ok, dead1, label_s = await loop.run_in_executor(self.executor, self._classify, ready, t_start)
                outcome.dead.extend(dead1)
                outcome.early = early
                if early:
                    await on_labels(early)
                results, dead, infer_s = await loop.run_in_executor(self.executor, self._explain, ok, t_start, label_s)
            else:
                results, dead, infer_s = await loop.run_in_executor(self.executor, self._infer, ready, t_start)
            outcome.results.extend(results)
            outcome.dead.extend(dead)
            outcome.inference_s = infer_s
        return outcome

    # --- off the event loop -------------------------------------------------------------
    def _decode(self, work: list[_Work]) -> tuple[list[tuple[_Work, PostInput]], list[OutDead]]:
        dead: list[OutDead] = []
        ready: list[tuple[_Work, PostInput]] = []
        for w in work:
            image = None
            if w.image_bytes is not None:
                try:
                    if self.decode_pixels:
                        image = decode_image(w.image_bytes, max_bytes=self.image_max_bytes, max_pixels=self.image_max_pixels)
                    else:  # the student does not read pixels: check the header only, pass no image
                        check_image(w.image_bytes, max_bytes=self.image_max_bytes, max_pixels=self.image_max_pixels)
                except ImageError as exc:
                    dead.append(self.dead_letter(w.rec, exc.code, exc.message, w.post.id))
                    continue
                # from the decoded image, or (pixels not decoded) from the checked bytes; None if it fails
                if self.thumbnails:
                    w.thumbnail = thumbnail(image if image is not None else w.image_bytes, max_pixels=self.image_max_pixels)
            ready.append((w, PostInput(text=w.post.text, image=image, aspect=w.post.aspect, id=w.post.id)))
        return ready, dead

    def _infer(
        self, ready: list[tuple[_Work, PostInput]], t_start: float
    ) -> tuple[list[OutResult], list[OutDead], float]:
        dead: list[OutDead] = []
        if not ready:
            return [], dead, 0.0
        t0 = time.perf_counter()
        preds: list[Prediction | Exception] = self._predict([p for _, p in ready])
        infer_s = time.perf_counter() - t0
        results: list[OutResult] = []
        for (w, _), pred in zip(ready, preds):
            out = self._settle(w, pred, t_start, infer_s)
            (dead if isinstance(out, OutDead) else results).append(out)
        return results, dead, infer_s

    def _settle(self, w: _Work, pred: Prediction | Exception, t_start: float, infer_s: float, *,
                failed: str = "") -> OutResult | OutDead:
        """The result for one post, or its dead letter when the model failed (``failed`` prefixes
        that message) or its output does not make a valid result."""
        if isinstance(pred, Exception):
            return self.dead_letter(w.rec, ErrorCode.MODEL_ERROR, f"{failed}{type(pred).__name__}: {pred}", w.post.id)
        try:
            return self._result(w, pred, t_start, infer_s)
        except (ValidationError, ValueError, KeyError) as exc:
            return self.dead_letter(w.rec, ErrorCode.MODEL_ERROR, f"bad model output: {exc}", w.post.id)

    def _predict(self, inputs: list[PostInput]) -> list[Prediction | Exception]:
        return self._isolated(lambda batch: self.student.predict(batch, chain=self.chain), inputs)

    def _isolated(self, fn: Callable[[list[Any]], Sequence[Prediction]], items: list[Any]) -> list[Prediction | Exception]:
        """Run ``fn`` on the batch; if it fails, run it item by item so only the bad ones fail.

        An exception with a true ``transient`` attribute (``model.http.EndpointError`` of a model
        server that is unreachable, overloaded or refusing the key/model) is raised instead: the
        worker retries the whole batch with backoff, so an outage dead-letters nothing."""
        try:
            preds = list(fn(items))
            if len(preds) != len(items):
                raise RuntimeError(f"student returned {len(preds)} predictions for {len(items)} posts")
            return preds
        except Exception as exc:
            if getattr(exc, "transient", False):  # a model server down or refusing us: retry the batch later
                raise
            if len(items) == 1:
                return [exc]
            log.warning("batch of %d failed in the model (%s); retrying post by post", len(items), exc)
        out: list[Prediction | Exception] = []
        for item in items:
            try:
                got = list(fn([item]))
                out.append(got[0] if len(got) == 1 else RuntimeError(f"student returned {len(got)} predictions for 1 post"))
            except Exception as exc:  # noqa: BLE001 - any model failure is a dead letter
                if getattr(exc, "transient", False):
                    raise
                out.append(exc)
        return out

    # --- label first: classify, publish, then explain -----------------------------------
    def _classify(self, ready: list[tuple[_Work, PostInput]], t_start: float):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        preds = self._isolated(lambda batch: self.student.classify(batch), [p for _, p in ready])
        label_s = time.perf_counter() - t0
        early: list[OutResult] = []
        ok: list[tuple[_Work, PostInput, Prediction]] = []
        dead: list[OutDead] = []
        for (w, inp), pred in zip(ready, preds):
            out = self._settle(w, pred if isinstance(pred, Exception) else replace(pred, chain=None), t_start, label_s)
            if isinstance(out, OutDead):
                dead.append(out)
            else:
                early.append(out)
                ok.append((w, inp, pred))
        return early, ok, dead, label_s

    def _explain(self, ok: list[tuple[_Work, PostInput, Prediction]], t_start: float, label_s: float):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        preds = self._isolated(
            lambda pairs: self.student.explain([p for p, _ in pairs], [q for _, q in pairs]),
            [(inp, pred) for _, inp, pred in ok],
        )
        infer_s = label_s + time.perf_counter() - t0
        results: list[OutResult] = []
        dead: list[OutDead] = []
        for (w, _, _), pred in zip(ok, preds):
            out = self._settle(w, pred, t_start, infer_s, failed="chain generation failed (label already published): ")
            (dead if isinstance(out, OutDead) else results).append(out)
        return results, dead, infer_s

    def _result(self, w: _Work, pred: Prediction, t_start: float, infer_s: float) -> OutResult:
        now = time.time()
        event_ms = w.rec.timestamp_ms if w.rec.timestamp_ms and w.rec.timestamp_ms > 0 else int(t_start * 1000)
        chain = None
        if pred.chain is not None:
            c = pred.chain
            chain = Chain(
                text_analysis=c.text_analysis,
                image_analysis=c.image_analysis,
                conflict_resolution=c.conflict_resolution,
                final_conclusion=c.final_conclusion,
                prediction=pred.label.value,
                raw=c.raw,
                parsed=c.parsed,
            )
        probs = {k: min(max(float(v), 0.0), 1.0) for k, v in pred.probabilities.items()}
        result = SentimentResult(
            id=w.post.id,
            aspect=w.post.aspect,
            label=pred.label.value,
            confidence=probs[pred.label.value],
            probabilities=Probabilities(**probs),
            chain=chain,
            model_name=pred.model_name or getattr(self.student, "name", ""),
            model_version=pred.model_version or getattr(self.student, "version", ""),
            prompt_version=pred.prompt_version,
            has_image=w.post.has_image,
            timings=Timings(
                queued_ms=max(0.0, t_start * 1000 - event_ms),
                inference_ms=infer_s * 1000,
                end_to_end_ms=max(0.0, now * 1000 - event_ms),
            ),
            processed_at=datetime.fromtimestamp(now, UTC),
            source=SourceRef(
                topic=w.rec.topic, partition=w.rec.partition, offset=w.rec.offset, timestamp_ms=w.rec.timestamp_ms
            ),
            worker=self.worker,
        )
        return OutResult(w.post.id.encode(), result.model_dump_json().encode(), result, event_ms, w.rec, w.thumbnail, w.post.text)


__all__ = ["BatchProcessor", "InRecord", "Outcome", "OutResult", "OutDead"]
