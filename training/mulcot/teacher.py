"""Teacher stage (docs/training.md, "1. Teacher"): five-field chains from a large MLLM, kept when they match gold.

For each post: a label-free pass with ``model.prompts.reasoning_prompt``; when the parsed
prediction (``model.chain.chain_label``) differs from the gold label, up to ``max_guided``
label-guided retries with ``guided_reasoning_prompt``. The chain is kept when its prediction
equals gold.

Output: a JSONL file, one row per post, appended as posts finish (a rerun skips the ids already
there, so an interrupted run resumes). Every row is a valid dataset row for
:func:`training.data.load_examples` (``id``, ``text``, ``aspect``, ``label``, ``image`` relative to
the output file, ``teacher_cot`` = the kept chain or null, ``teacher``) plus the audit fields:
``prompt_version``, ``model``, ``stage`` (``free`` | ``guided`` | ``failed``), ``attempts``,
``raw`` (last raw answer), ``parsed`` (its five fields), ``parsed_ok``, ``prediction``, ``keep``,
``tokens`` and ``history`` (every attempt's stage, raw answer and prediction). Posts for which
the teacher never answered (every request failed after its retries) are not written, so a
rerun tries them again.

Backends:

* :class:`EndpointTeacher` - any OpenAI-compatible ``/chat/completions`` endpoint with image
  input (vLLM, SGLang, hosted APIs) through ``model.http.ChatClient``, the client the
  ``openai:`` student uses too: images as base64 ``data:`` URLs, a concurrency limit, a
  request-rate limit, retries with exponential backoff (honouring ``Retry-After``) on
  429/5xx/transport errors, token and cost accounting from ``usage``.
* :class:`HFTeacher` - an in-process Hugging Face model through ``model.load_student("hf:...")``
  (its ``generate_raw``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from model import Label, PostInput, chain_label, parse_chain
from model.http import RETRY_STATUS, ChatClient, EndpointError, RateLimiter, Usage, image_data_url, message_text
from model.prompts import PROMPT_VERSION, guided_reasoning_prompt, reasoning_prompt

from ..data import Example


@dataclass
class Generation:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TeacherBackend(Protocol):
    model: str
    usage: Usage

    async def generate(self, prompt: str, image: Any | None) -> Generation: ...

    async def aclose(self) -> None: ...


class TeacherError(RuntimeError):
    """The teacher could not answer (after retries)."""


# ------------------------------------------------------------------------------ endpoint backend


class EndpointTeacher:
    """OpenAI-compatible chat-completions client with image input.

    Args:
        base_url: e.g. ``http://localhost:8000/v1`` (``/chat/completions`` is appended).
        model: the model name the endpoint serves (e.g. ``Qwen/Qwen2.5-VL-72B-Instruct``).
        api_key: bearer token; default ``$OPENAI_API_KEY`` if set.
        temperature, max_tokens: of each answer; image_max_side: longer side of the uploaded image.
        client_options: passed to :class:`model.http.ChatClient` - ``max_concurrency`` (requests in
            flight), ``requests_per_s`` (None = unlimited), ``max_retries`` (on 429, 5xx, timeouts
            and transport errors), ``backoff_s`` / ``max_backoff_s``, ``timeout_s``,
            ``price_prompt_per_mtok`` / ``price_completion_per_mtok`` (USD per million tokens).
    """

    RETRY_STATUS = RETRY_STATUS

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 768,
        image_max_side: int | None = 640,
        extra_body: dict | None = None,
        **client_options: Any,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        # concurrency, rate limit, retries, backoff, timeout, prices, client: model.http.ChatClient's
        self.http = ChatClient(base_url, api_key=key, **client_options)
        self.url = self.http.url
        self.model = model
        self.client = self.http.client
        self.usage = self.http.usage
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.image_max_side = image_max_side
        self.extra_body = dict(extra_body or {})

    def payload(self, prompt: str, image: Any | None) -> dict:
        content: list[dict] = []
        if image is not None:
            content.append({"type": "image_url", "image_url": {"url": image_data_url(image, self.image_max_side)}})
        content.append({"type": "text", "text": prompt})
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.extra_body,
        }

    async def generate(self, prompt: str, image: Any | None) -> Generation:
        try:
            data = await self.http.chat(self.payload(prompt, image))
        except EndpointError as e:
            raise TeacherError(str(e)) from None
        usage = data.get("usage") or {}
        return Generation(message_text(data), int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or 0))

    async def aclose(self) -> None:
        await self.client.aclose()


# ------------------------------------------------------------------------------ in-process HF backend


class HFTeacher:
    """An in-process HF VLM as the teacher, loaded with ``model.load_student(spec)``.

    Concurrent ``generate`` calls are gathered into micro-batches of up to ``batch_size``
    prompts, each run by one ``generate_raw`` call in a worker thread (the model itself runs one
    batch at a time). Pass ``seed`` to seed torch once at construction: the student is not given
    a seed, since seeding before every call would make repeated samples of one post identical.
    """

    def __init__(self, spec: str, *, max_new_tokens: int = 384, batch_size: int = 8, student: Any = None,
                 seed: int | None = None, **options: Any) -> None:
        from model.loading import as_hf_spec, load_student

        options.pop("seed", None)
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        self.student = student if student is not None else load_student(
            as_hf_spec(spec), max_new_tokens=max_new_tokens, **options)
        if not hasattr(self.student, "generate_raw"):
            raise TypeError(f"{spec}: the teacher needs an HF student with generate_raw()")
        self.model = spec
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, int(batch_size))
        self.usage = Usage()
        self.batches = 0
        self._queue: list[tuple[str, Any, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    async def generate(self, prompt: str, image: Any | None) -> Generation:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((prompt, image, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # let the other ready callers enqueue first
            batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size:]
            posts = [PostInput(text="", image=image) for _, image, _ in batch]
            prompts = [prompt for prompt, _, _ in batch]
            try:
                texts, n_prompt, n_gen = await asyncio.to_thread(
                    self.student.generate_raw, posts, prompts, stop_at_prediction=False,
                    max_new_tokens=self.max_new_tokens)
            except Exception as e:  # every caller of this batch gets the error
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(TeacherError(f"{self.model}: generation failed: {e}"))
                self.usage.failures += len(batch)
                continue
            self.batches += 1
            for (_, _, fut), text, n_p, n_g in zip(batch, texts, n_prompt, n_gen):
                self.usage.requests += 1
                self.usage.prompt_tokens += int(n_p)
                self.usage.completion_tokens += int(n_g)
                if not fut.done():
                    fut.set_result(Generation(text, int(n_p), int(n_g)))

    async def aclose(self) -> None:
        if self._worker is not None and not self._worker.done():
            await self._worker


# ------------------------------------------------------------------------------ the stage


def done_ids(out_path: str | Path) -> set[str]:
    """Ids already in an output file (a truncated last line is ignored)."""
    path = Path(out_path)
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def _predicted(raw: str) -> tuple[Any, Label | None]:
    chain = parse_chain(raw)
    try:
        return chain, chain_label(chain)
    except ValueError:
        return chain, None


async def teach_one(backend: TeacherBackend, ex: Example, *, max_guided: int = 2,
                    image_max_side: int | None = None, free_samples: int = 1, free_stage: str = "free") -> dict:
    """Run the free pass (``free_samples`` tries, useful when sampling) and up to ``max_guided``
    guided retries for one example; returns its row."""
    if ex.label is None:
        raise ValueError(f"{ex.id}: the teacher stage needs a gold label")
    post = ex.post(max_side=image_max_side)
    history = []
    tokens = {"prompt": 0, "completion": 0}
    stage, keep, chain, pred, raw = "failed", False, None, None, ""
    plan = [(free_stage, reasoning_prompt(post))] * free_samples
    plan += [("guided", guided_reasoning_prompt(post, ex.label))] * max_guided
    for name, prompt in plan:
        try:
            gen = await backend.generate(prompt, post.image)
        except TeacherError as e:
            history.append({"stage": name, "error": str(e)})
            continue
        tokens["prompt"] += gen.prompt_tokens
        tokens["completion"] += gen.completion_tokens
        raw = gen.text
        chain, pred = _predicted(raw)
        history.append({"stage": name, "raw": raw, "prediction": pred.value if pred else None,
                        "parsed_ok": chain.parsed})
        if pred == ex.label:
            stage, keep = name, True
            break
    kept = chain.with_prediction(ex.label).render() if keep and chain is not None else None
    return {
        "id": ex.id,
        "text": ex.text,
        "aspect": ex.aspect,
        "label": ex.label.value,
        "image": None,  # filled by the writer (relative to the output file)
        "teacher_cot": kept,
        "teacher": backend.model,
        "prompt_version": PROMPT_VERSION,
        "model": backend.model,
        "stage": stage,
        "attempts": len(history),
        "keep": keep,
        "raw": raw,
        "parsed": chain.fields() if chain is not None else None,
        "parsed_ok": bool(chain.parsed) if chain is not None else False,
        "prediction": pred.value if pred else None,
        "tokens": tokens,
        "history": history,
        "error": bool(history) and all("error" in h for h in history),
    }


def _tally(summary: dict, row: dict, free_stage: str) -> None:
    """Count one written row in the run summary."""
    summary["processed"] += 1
    summary["kept"] += row["keep"]
    summary["kept_free"] += row["keep"] and row["stage"] == free_stage
    summary["kept_guided"] += row["keep"] and row["stage"] == "guided"
    summary["failed"] += not row["keep"]


async def run_teacher_async(
    examples: Sequence[Example],
    backend: TeacherBackend,
    out_path: str | Path,
    *,
    max_guided: int = 2,
    max_in_flight: int = 32,
    image_max_side: int | None = None,
    free_samples: int = 1,
    free_stage: str = "free",
    progress: bool = False,
    on_row: Callable[[dict], None] | None = None,
) -> dict:
    """Run the teacher stage, appending rows to ``out_path``; returns a summary dict."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    todo = [ex for ex in examples if ex.id not in done]
    summary = {"total": len(examples), "skipped_done": len(examples) - len(todo), "processed": 0,
               "kept": 0, "kept_free": 0, "kept_guided": 0, "failed": 0, "errors": 0, "out": str(out)}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=free_stage if free_stage != "free" else "teacher", unit="post")
    gate = asyncio.Semaphore(max_in_flight)

    async def one(ex: Example) -> dict:
        async with gate:
            return await teach_one(backend, ex, max_guided=max_guided, image_max_side=image_max_side,
                                   free_samples=free_samples, free_stage=free_stage)

    t0 = time.perf_counter()
    with out.open("a", encoding="utf-8") as f:
        tasks = [asyncio.ensure_future(one(ex)) for ex in todo]
        by_id = {ex.id: ex for ex in todo}
        try:
            for fut in asyncio.as_completed(tasks):
                row = await fut
                ex = by_id[row["id"]]
                if row.pop("error"):  # the teacher never answered: not written, a rerun retries it
                    summary["errors"] += 1
                    if bar is not None:
                        bar.update(1)
                    continue
                if ex.image_path is not None:
                    row["image"] = os.path.relpath(Path(ex.image_path).resolve(), out.parent.resolve())
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                _tally(summary, row, free_stage)
                if on_row:
                    on_row(row)
                if bar is not None:
                    bar.update(1)
        finally:
            for t in tasks:
                t.cancel()
            if bar is not None:
                bar.close()
    summary["seconds"] = time.perf_counter() - t0
    summary["usage"] = backend.usage.as_dict()
    return summary


def run_teacher(examples: Sequence[Example], backend_factory: Callable[[], TeacherBackend], out_path: str | Path,
                **kwargs: Any) -> dict:
    """Synchronous wrapper: builds the backend inside the event loop, runs, closes it."""

    async def main() -> dict:
        backend = backend_factory()
        try:
            return await run_teacher_async(examples, backend, out_path, **kwargs)
        finally:
            await backend.aclose()

    return asyncio.run(main())


__all__ = [
    "EndpointTeacher",
    "HFTeacher",
    "Generation",
    "Usage",
    "TeacherError",
    "RateLimiter",
    "image_data_url",
    "teach_one",
    "run_teacher",
    "run_teacher_async",
    "done_ids",
]
