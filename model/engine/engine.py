"""The batched generation engine: labels and greedy chains for many posts over a fixed set of
slots, with continuous refill. Split along vLLM v1's lines:

* :mod:`.request` - a :class:`Request` per post with its :class:`Status`, a :class:`Job` per
  caller;
* :mod:`.scheduler` - the pure decisions: what to admit, which slot, the next decode shape;
* :mod:`.runner` - the device work: vision, prefill, decode chunks, CUDA graphs;
* :mod:`.stop` - where a chain ends;
* this module - :class:`Engine`: the caller API (``submit`` / ``run`` / ``classify``), the engine
  thread and its loop, :meth:`Engine.step` (schedule, run, update).

How a post goes through (:meth:`Engine.run`):

1. **Plan** (CPU thread pool, overlapping device work): both prompts tokenised, the image
   preprocessed once (:mod:`model.engine.inputs`).
2. **Admit** into a free slot, a group at a time: one vision-tower call for all the group's
   images (:mod:`model.engine.vision`: one variable-length attention call per block); the
   instruction prefix's keys/values, computed once per engine, are copied into the slot.
3. **Label prefill**: the label prompt after the prefix (shared part + label suffix); only the
   three label-token logits of its last position are computed.
4. **Chain prefill**: the reasoning prompt's own suffix, written over the label suffix (the
   part both prompts share, image included, is not recomputed); the argmax of its last position
   is the chain's first token.
5. **Decode**: one static-shape greedy step for all slots (:meth:`SlotDecoder.step`), captured
   once per (slot bucket, key-length bucket) in a CUDA graph and replayed; eager on CPU. Every
   ``sync_every`` steps the host reads the new tokens, finishes rows that hit end-of-turn, the
   ``Prediction`` stop key or the token budget, and refills their slots with the next posts:
   short chains do not wait for long ones, and the caller's batch size is not the engine's.

Prompt lengths are padded to multiples of ``len_bucket``, decode batches to powers of two and
key lengths to multiples of ``kv_bucket``, so shapes repeat and graphs are reused.
"""

from __future__ import annotations

import atexit
import logging
import statistics
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ..prompts import LABEL_WORDS, reasoning_prompt
from ..types import PostInput
from .config import DoesNotFit, EngineConfig
from .inputs import Planner, PostPlan
from .request import EngineResult, Job, Request
from .runner import Fetched, ModelRunner
from .scheduler import Scheduler
from .stop import StopChecker

log = logging.getLogger(__name__)


class Engine:
    """Labels + greedy chains for a loaded HF VLM (Qwen2/2.5-VL, Idefics3) and its processor."""

    def __init__(self, model: Any, processor: Any, config: EngineConfig | None = None, *,
                 chain_prompt=reasoning_prompt) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.cfg = cfg = config or EngineConfig()
        self.family = model.config.model_type
        self.planner = Planner(model, processor, image_size=cfg.image_size, chain_prompt=chain_prompt)
        self.label_ids = self._label_ids()
        self.width = cfg.width
        # cache rows [slots, slots + label rows): labels-only scratch, never decoded, so labels are
        # scored while every slot holds a chain
        label_rows = range(cfg.slots, cfg.slots + cfg.n_label_rows)
        self.scheduler = Scheduler(cfg.slots, label_rows, cfg.admit_min)
        self.runner = ModelRunner(model, self.planner, cfg, rows=cfg.slots + cfg.n_label_rows,
                                  label_ids=self.label_ids)
        self.device = self.runner.device
        self.cuda = self.runner.cuda
        eos = model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        self.eos = set([eos] if isinstance(eos, int) else list(eos or []))
        self.stop = StopChecker(self.tokenizer, self.eos, stop_strings=cfg.stop_at_prediction)
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.workers), thread_name_prefix="engine-prep")
        #: counters since the engine was made: admission groups and decode steps
        self._counts = {"admissions": 0, "steps": 0}
        # the engine thread's state (see submit)
        self._cv = threading.Condition()
        self._fetched: tuple[Fetched, int, dict] | None = None  # the last chunk's tokens on their way
        self._admitted: list[Request] = []  # this iteration's admissions (failed with it)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._device = threading.RLock()  # whoever drives the device: the engine thread or a check

    def _label_ids(self) -> list[int]:
        probe = self.planner.render(self.processor, PostInput(text="x"), "x")
        lead = "" if probe[-1:].isspace() else " "
        firsts = [self.tokenizer.encode(lead + w, add_special_tokens=False)[0] for w in LABEL_WORDS]
        if len(set(firsts)) != len(firsts):
            raise ValueError(f"label words share a first token ({firsts}); the engine scores first tokens only")
        return firsts

    @property
    def stats(self) -> dict[str, int]:
        """Admission groups, decode steps, and refills (posts admitted into a slot another post
        had used before) since the engine was made."""
        return {**self._counts, "refills": self.scheduler.refills}

    @property
    def graph_error(self) -> str | None:
        return self.runner.graph_error

    @property
    def cuda_graphs(self) -> bool:
        """Whether decode steps replay CUDA graphs (False on CPU, or after a capture failed)."""
        return self.runner.cuda_graphs

    # ---- public -------------------------------------------------------------------------
    def plans(self, posts: Sequence[PostInput]) -> list[Future]:
        """Futures of the posts' plans, submitted to the preprocessing threads."""
        return [self.pool.submit(self.planner.plan, i, p) for i, p in enumerate(posts)]

    def submit(self, posts: Sequence[PostInput], *, chain: bool = True,
               max_new_tokens: int | None = None) -> Future:
        """Queue ``posts``; returns a future of their :class:`EngineResult` s (input order).

        Any number of callers may submit at once (e.g. a worker with several batches in flight):
        one engine thread admits their posts into free slots in arrival order, so posts of
        different caller batches decode side by side and a caller's batch size is not the
        engine's. ``chain=False``: labels only (a label prefill per post, no slot kept)."""
        limit = int(max_new_tokens or self.cfg.max_new_tokens)
        if limit > self.cfg.max_new_tokens:
            raise ValueError(f"max_new_tokens {limit} > the engine's {self.cfg.max_new_tokens}")
        job = Job(self.plans(posts), chain, limit)
        if not posts:
            job.done.set_result([])
            return job.done
        with self._cv:
            if self._closed:
                raise RuntimeError("engine closed")
            self.scheduler.add(job.requests)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="engine", daemon=True)
                self._thread.start()
                # stop the thread before the interpreter tears torch down under it
                ref = weakref.ref(self)
                atexit.register(lambda: (e := ref()) is not None and e.close())
            self._cv.notify()
        return job.done

    def run(self, posts: Sequence[PostInput], *, max_new_tokens: int | None = None) -> list[EngineResult]:
        """Labels and greedy chains for ``posts`` (results in input order), with continuous refill."""
        return self.submit(posts, max_new_tokens=max_new_tokens).result()

    def classify(self, posts: Sequence[PostInput]) -> list[EngineResult]:
        """Label scores only (no chain)."""
        return self.submit(posts, chain=False).result()

    def _check_fits(self, plans: Iterable[PostPlan], *, chain: bool) -> None:
        for p in plans:
            need = (len(p.reason_ids) + self.width if chain else len(p.label_ids)) + self.cfg.len_bucket
            if need > self.cfg.max_len:
                raise DoesNotFit(f"post {p.index}: {need} tokens do not fit a slot of max_len={self.cfg.max_len}")

    # ---- the engine thread --------------------------------------------------------------
    def _serve(self) -> None:
        while self._wait():
            try:
                with self._device:
                    self.step()
            except Exception as exc:  # fail the jobs in flight, keep serving the others
                log.exception("engine iteration failed")
                for job in {id(r.job): r.job for r in self._admitted + self.scheduler.reset()}.values():
                    job.fail(exc)
                self._fetched = None

    def _wait(self) -> bool:
        """Block until there is work; False once the engine is closed and no chain is in flight
        (queued requests then fail)."""
        with self._cv:
            while self.scheduler.idle and not self._closed:
                self._cv.wait()
            if self._closed and not self.scheduler.running:
                for r in self.scheduler.waiting:
                    if not r.job.done.done():
                        r.job.done.set_exception(RuntimeError("engine closed"))
                return False
            return True

    def step(self) -> None:
        """One iteration: **schedule** (which queued requests to admit), **run** (their prefills,
        then a decode chunk for every slot in flight) and **update** (the previous chunk's tokens:
        finished requests leave their slots, which the next iteration refills)."""
        with self._cv:
            self._admitted = self.scheduler.schedule()
        labels, chains = self._ready(self._admitted)
        if labels:
            self._score_labels(labels)
        if chains:
            self._start_chains(chains)
        if self.scheduler.running:
            previous = self._decode_chunk()
            if previous is not None:
                self._update(*previous)
            if not self.scheduler.running:
                self._fetched = None  # every row in it has finished
        self._admitted = []

    def _ready(self, take: list[Request]) -> tuple[list[tuple[Request, PostPlan]], list[tuple[Request, PostPlan]]]:
        """The admitted requests with their plans, labels-only and chains apart; a request whose
        plan failed or does not fit fails its own job."""
        ready = []
        for r in take:
            if not r.live:  # its job failed earlier
                continue
            try:
                plan = r.plan.result()
                self._check_fits([plan], chain=r.chain)
            except Exception as exc:
                r.job.fail(exc)
                continue
            ready.append((r, plan))
        return [x for x in ready if not x[0].chain], [x for x in ready if x[0].chain]

    def _score_labels(self, labels: list[tuple[Request, PostPlan]]) -> None:
        """Labels-only requests in the scratch rows (label rows + free slots), released at once."""
        rows = self.scheduler.scratch_rows()
        for k in range(0, len(labels), len(rows)):
            group = labels[k : k + len(rows)]
            scores, _ = self.runner.prefill([p for _, p in group], rows[: len(group)], chain=False)
            for (r, p), sc in zip(group, scores.tolist()):
                r.job.finish(r, EngineResult(p.index, sc, len(p.label_ids), len(p.label_ids)), self._decode_texts)

    def _start_chains(self, chains: list[tuple[Request, PostPlan]]) -> None:
        slots = self.scheduler.assign([r for r, _ in chains])
        t0 = time.perf_counter()
        scores, _ = self.runner.prefill([p for _, p in chains], slots, chain=True)
        self._counts["admissions"] += 1
        for (r, p), s, sc in zip(chains, slots, scores.tolist()):
            r.start(s, EngineResult(p.index, sc, len(p.reason_ids), len(p.label_ids)), len(p.reason_ids), t0)

    def _decode_chunk(self) -> tuple[Fetched, int, dict] | None:
        """Launch ``sync_every`` steps and queue the copy of the tokens they write; return the
        previous chunk's copy, which the device finished meanwhile, for the host to read: the
        host's stop checks overlap the device's next chunk instead of idling it. A finished row
        is seen one chunk late (its extra tokens are dropped, the output is the same) and its
        slot is refilled then."""
        k = self.cfg.sync_every
        nb, lk = self.scheduler.decode_shape(k, self.cfg.max_len, self.cfg.kv_bucket)
        self.runner.decode(nb, lk, k)
        self._counts["steps"] += k
        rows = {s: (r, *r.advance(k, self.width)) for s, r in self.scheduler.running.items()}
        lo = min(a for _, a, _ in rows.values())
        hi = max(n for _, _, n in rows.values())
        previous, self._fetched = self._fetched, (self.runner.fetch(nb, lo, hi), lo, rows)
        return previous

    def _update(self, fetched: Fetched, lo: int, rows: dict[int, tuple[Request, int, int]]) -> None:
        """Append a chunk's tokens to their requests, finish those that stopped, free their slots."""
        new = fetched.rows()
        for s in sorted(rows):
            r, a, n = rows[s]
            if not self.scheduler.holds(r):  # finished from an earlier chunk; the slot may be refilled
                continue
            r.tokens += new[s][a - lo : n - lo]
            stop = self.stop.index(r.tokens, r.checked, r.limit)
            r.checked = len(r.tokens)
            if stop is None and r.live:
                continue
            r.result.tokens = r.tokens[: (stop if stop is not None else len(r.tokens) - 1) + 1]
            r.result.latency_ms = (time.perf_counter() - r.t0) * 1000
            self.scheduler.finish(r)
            if r.live:
                r.job.finish(r, r.result, self._decode_texts)

    def _decode_texts(self, rows: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    # ---- checks -------------------------------------------------------------------------
    def teacher_forced(self, posts: Sequence[PostInput], forced: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """For each post, the next-token logits (float32 ``(len(forced[i]), vocab)``) at the chain
        prompt's last position and after each of ``forced[i]``'s tokens but the last, fed in
        place of the engine's own argmax (checks only; eager steps, one group of slots at a time)."""
        with self._device:
            if self.scheduler.running:
                raise RuntimeError("teacher_forced needs an idle engine")
            futures, n, out = self.plans(posts), self.cfg.slots, []
            for i in range(0, len(futures), n):
                plans = [f.result() for f in futures[i : i + n]]
                self._check_fits(plans, chain=True)
                out += self.runner.teacher_forced(plans, [list(forced[p.index]) for p in plans])
            return out

    def close(self) -> None:
        """Stop the engine thread (chains in flight finish first) and the preprocessing threads."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.pool.shutdown(wait=False)


def summarize_latency(results: Sequence[EngineResult]) -> float | None:
    """Median admission-to-finish time of chain results, in ms (None without any)."""
    xs = [r.latency_ms for r in results if r.latency_ms]
    return round(statistics.median(xs), 1) if xs else None


__all__ = ["Engine", "EngineConfig", "EngineResult", "DoesNotFit", "summarize_latency"]
