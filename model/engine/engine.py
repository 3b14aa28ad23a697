"""The batched generation engine: labels and greedy chains for many posts over a fixed set of
slots, with continuous refill.

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
import os
import statistics
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..prompts import LABEL_WORDS, reasoning_prompt
from ..types import PostInput
from .decoder import SlotDecoder
from .inputs import QWEN, Planner, PostPlan, common_prefix
from .vision import VisionRunner

log = logging.getLogger(__name__)

#: Stop strings of the chain (the same as the HF student's ``generate`` call).
STOP_STRINGS = ("Prediction", 'prediction"')


@dataclass
class EngineConfig:
    """Engine settings.

    ``slots``: rows decoded together (the engine's batch); ``label_rows``: extra cache rows for
    labels-only posts, so they are scored while every slot holds a chain (default a quarter of
    ``slots``); ``max_new_tokens``: chain budget;
    ``max_len``: tokens one slot can hold (prompt + chain); ``sync_every``: decode steps between
    two host reads of the new tokens; ``len_bucket`` / ``kv_bucket``: shape rounding;
    ``admit_min``: free slots needed before a new group is admitted while others decode
    (default: a quarter of the slots); ``cuda_graphs``: capture the decode step on CUDA;
    ``stop_at_prediction``: stop a chain at its ``Prediction`` key; ``workers``: preprocessing
    threads (default: the CPU count, at most 8; planning one post with a 280 x 280
    image took 13 ms of one core on the loaded 2-core development machine, two thirds of it the
    image processor)."""

    slots: int = 64
    label_rows: int | None = None
    max_new_tokens: int = 384
    max_len: int = 2048
    sync_every: int = 8
    len_bucket: int = 32
    kv_bucket: int = 256
    admit_min: int | None = None
    cuda_graphs: bool = True
    stop_at_prediction: bool = True
    image_size: int | None = 280
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 2))


@dataclass
class EngineResult:
    """One post's result: label-token scores (``LABELS`` order), chain token ids and text."""

    index: int
    label_scores: list[float]
    prompt_tokens: int
    label_prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    latency_ms: float = 0.0  # admission -> finished


class DoesNotFit(ValueError):
    """A post's prompt and chain budget are longer than a slot (``EngineConfig.max_len``)."""


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _round_up(n: int, m: int) -> int:
    return -(-int(n) // m) * m


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
        probe = self.planner.render(processor, PostInput(text="x"), "x")
        lead = "" if probe[-1:].isspace() else " "
        firsts = [self.tokenizer.encode(lead + w, add_special_tokens=False)[0] for w in LABEL_WORDS]
        if len(set(firsts)) != len(firsts):
            raise ValueError(f"label words share a first token ({firsts}); the engine scores first tokens only")
        self.label_ids = firsts
        self.width = cfg.max_new_tokens + cfg.sync_every + 1
        n_label = cfg.label_rows if cfg.label_rows is not None else max(1, cfg.slots // 4)
        # cache rows [slots, slots + n_label): labels-only scratch, never decoded, so labels are
        # scored while every slot holds a chain
        self._label_rows = list(range(cfg.slots, cfg.slots + n_label))
        self.decoder = SlotDecoder(model, n_slots=cfg.slots + n_label, max_len=cfg.max_len, label_ids=firsts,
                                   out_width=self.width)
        self.device = self.decoder.device
        self.cuda = self.device.type == "cuda"
        self.vision = VisionRunner(model)
        eos = model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        self.eos = set([eos] if isinstance(eos, int) else list(eos or []))
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.workers), thread_name_prefix="engine-prep")
        self._graphs: dict[tuple[int, int], Any] = {}
        self.graph_error: str | None = None
        self._graph_pool = None
        self._text: dict[int, str] = {}
        self._stop_ends = {s[-1] for s in STOP_STRINGS}  # a stop string ends inside a token holding its last char
        #: counters since the engine was made: admission groups, decode steps, posts admitted
        #: into a slot another post had used before (refills)
        self.stats = {"admissions": 0, "steps": 0, "refills": 0}
        self._used: set[int] = set()
        # the engine thread's state (see submit)
        self._cv = threading.Condition()
        self._pending: deque = deque()
        self._free = list(range(cfg.slots))
        self._active: dict[int, dict] = {}  # slot -> {"job", "plan", "res", "t0", "n", "asked", "toks", ...}
        self._snapshot = None  # the last chunk's tokens on their way to the host (see _decode_chunk)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._device = threading.RLock()  # whoever drives the device: the engine thread or a check
        self._prefix_ids, self._prefix_k, self._prefix_v = self._instruction_prefix()

    # ---- shared instruction prefix ------------------------------------------------------
    def _instruction_prefix(self):
        """The tokens every prompt starts with (system turn and user-turn header), and their
        keys/values, computed once."""
        posts = [PostInput("a b c"), PostInput("d e", aspect="f")]
        from PIL import Image

        posts.append(PostInput("g", image=Image.new("RGB", (56, 56))))
        plans = [self.planner.plan(i, p) for i, p in enumerate(posts)]
        ids = plans[0].label_ids
        n = min(common_prefix(ids, p.label_ids) for p in plans[1:])
        n = min([n] + [common_prefix(ids, p.reason_ids) for p in plans])
        n = min(n, self.cfg.max_len // 4)
        if n == 0:
            return [], None, None
        prefix = ids[:n]
        emb = self.decoder.embed(torch.tensor([prefix], device=self.device))
        pos = torch.arange(n, device=self.device)[None]
        cos, sin = self.decoder.rotary(emb, pos)
        slot = torch.zeros(1, dtype=torch.long, device=self.device)
        self.decoder.prefill(emb, cos, sin, slot, torch.zeros_like(slot), torch.tensor([n], device=self.device),
                             want="labels")
        return prefix, self.decoder.k[:, 0, :, :n].clone(), self.decoder.v[:, 0, :, :n].clone()

    def _prefix_len(self, plan: PostPlan) -> int:
        n = len(self._prefix_ids)
        if n and plan.shared >= n and plan.label_ids[:n] == self._prefix_ids:
            if plan.label_pos is None or torch.equal(plan.label_pos[:, :n], torch.arange(n)[None].expand(3, -1)):
                return n
        return 0

    # ---- admission ----------------------------------------------------------------------
    def _embed_rows(self, rows: list[list[int]], feats: list[torch.Tensor | None]) -> tuple[torch.Tensor, list[int]]:
        """Right-padded embeddings ``(b, T, hidden)`` of token rows with image features placed
        at the image-token positions; ``T`` rounded up to ``len_bucket``."""
        lengths = [len(r) for r in rows]
        t = _round_up(max(lengths), self.cfg.len_bucket)
        flat = torch.tensor([x for r in rows for x in r], device=self.device)
        emb = self.decoder.embed(flat)
        img = flat == self.planner.image_token_id
        if bool(img.any()):
            f = torch.cat([x for x in feats if x is not None]).to(emb.dtype)
            emb = emb.masked_scatter(img[:, None], f)
        out = emb.new_zeros(len(rows), t, emb.shape[-1])
        r = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(lengths))
        c = torch.cat([torch.arange(n) for n in lengths])
        out[r.to(self.device), c.to(self.device)] = emb
        return out, lengths

    def _rope_rows(self, emb: torch.Tensor, pos_rows: list[torch.Tensor]):
        """cos/sin ``(b, T, d)`` for per-row positions (``(3, n)`` Qwen-VL or ``(n,)``),
        padding positions set to 0."""
        b, t = emb.shape[:2]
        if self.decoder.parts.mrope:
            pos = torch.zeros(3, b, t, dtype=torch.long)
            for i, p in enumerate(pos_rows):
                pos[:, i, : p.shape[-1]] = p
        else:
            pos = torch.zeros(b, t, dtype=torch.long)
            for i, p in enumerate(pos_rows):
                pos[i, : p.shape[-1]] = p
        return self.decoder.rotary(emb, pos.to(self.device))

    def _positions(self, plan: PostPlan, which: str, start: int) -> torch.Tensor:
        ids = plan.label_ids if which == "label" else plan.reason_ids
        full = plan.label_pos if which == "label" else plan.reason_pos
        if full is None:
            return torch.arange(start, len(ids))
        return full[:, start:]

    def _prefill(self, plans: list[PostPlan], slots: list[int], *, chain: bool, first: str = "argmax"):
        """Admit ``plans`` into ``slots``: vision, prefix copy, label prefill, and (``chain``)
        chain prefill. Returns the label scores ``(b, 3)`` and the first chain tokens."""
        dev = self.device
        feats = self.vision.encode(plans)
        slot_t = torch.tensor(slots, device=dev)
        starts = [self._prefix_len(p) for p in plans]
        if any(starts):
            keep = [i for i, s in enumerate(starts) if s]
            self.decoder.copy_prefix(slot_t[keep], self._prefix_k, self._prefix_v)
        rows = [p.label_ids[s:] for p, s in zip(plans, starts)]
        emb, lengths = self._embed_rows(rows, feats)
        cos, sin = self._rope_rows(emb, [self._positions(p, "label", s) for p, s in zip(plans, starts)])
        scores = self.decoder.prefill(emb, cos, sin, slot_t, torch.tensor(starts, device=dev),
                                      torch.tensor(lengths, device=dev), want="labels")
        if not chain:
            return scores, None
        shared = [p.shared for p in plans]
        rows = [p.reason_ids[s:] for p, s in zip(plans, shared)]
        if any(self.planner.image_token_id in r for r in rows):
            raise ValueError("the reasoning prompt's image is not in the part it shares with the label prompt")
        emb, lengths = self._embed_rows(rows, [None] * len(rows))
        cos, sin = self._rope_rows(emb, [self._positions(p, "reason", s) for p, s in zip(plans, shared)])
        out = self.decoder.prefill(emb, cos, sin, slot_t, torch.tensor(shared, device=dev),
                                   torch.tensor(lengths, device=dev), want=first)
        logits = out if first == "logits" else None
        first = out.argmax(-1) if first == "logits" else out
        d = self.decoder
        d.tokens[slot_t] = first
        d.out[slot_t, 0] = first
        d.n_gen[slot_t] = 1
        d.length[slot_t] = torch.tensor([len(p.reason_ids) for p in plans], device=dev)
        d.pos[slot_t] = torch.tensor([p.next_position for p in plans], device=dev)
        return scores, (logits if logits is not None else first)

    # ---- decode -------------------------------------------------------------------------
    def _step(self, nb: int, lk: int) -> None:
        if not (self.cuda and self.cfg.cuda_graphs):
            self.decoder.step(nb, lk)
            return
        g = self._graphs.get((nb, lk))
        if g is None:
            try:
                g = self._capture(nb, lk)
            except Exception as exc:  # a kernel that cannot be captured: run eager from now on
                log.warning("CUDA graph capture failed (%s: %s); decode steps run eagerly", type(exc).__name__, exc)
                self.cfg.cuda_graphs = False
                self.graph_error = f"{type(exc).__name__}: {exc}"
                self.decoder.step(nb, lk)
                return
        g.replay()

    def _capture(self, nb: int, lk: int):
        d = self.decoder
        state = [t.clone() for t in (d.tokens, d.pos, d.length, d.n_gen, d.out, d.label_logits)]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            d.step(nb, lk)  # warm-up (lazy kernels, workspaces) outside the capture
        torch.cuda.current_stream().wait_stream(s)
        for dst, src in zip((d.tokens, d.pos, d.length, d.n_gen, d.out, d.label_logits), state):
            dst.copy_(src)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        g = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (an HF fallback in another executor thread)
        # do not abort the capture
        with torch.cuda.graph(g, pool=self._graph_pool, capture_error_mode="thread_local"):
            d.step(nb, lk)
        self._graphs[(nb, lk)] = g
        return g

    def _token_text(self, t: int) -> str:
        s = self._text.get(t)
        if s is None:
            s = self._text[t] = self.tokenizer.decode([t])
        return s

    def _stop_index(self, toks: list[int], start: int, limit: int) -> int | None:
        """Index of the token that ends the chain among ``toks[start:]`` (end-of-turn, the
        stop key ending inside that token, or the token budget), or None."""
        for i in range(start, len(toks)):
            if toks[i] in self.eos:
                return i
            if self.cfg.stop_at_prediction and any(c in self._token_text(toks[i]) for c in self._stop_ends):
                lo = max(0, i - 16)
                tail = "".join(self._token_text(t) for t in toks[lo : i + 1])
                before = tail[: len(tail) - len(self._token_text(toks[i]))]
                if any(s in tail and s not in before for s in STOP_STRINGS):
                    return i
            if i + 1 >= limit:
                return i
        return None

    # ---- public -------------------------------------------------------------------------
    def plans(self, posts: Sequence[PostInput]):
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
        job = _Job(self.plans(posts), chain, limit)
        if not posts:
            job.done.set_result([])
            return job.done
        with self._cv:
            if self._closed:
                raise RuntimeError("engine closed")
            self._pending.extend((job, i) for i in range(len(posts)))
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
        cfg = self.cfg
        admit_min = cfg.admit_min or max(1, cfg.slots // 4)
        while True:
            with self._cv:
                while not self._pending and not self._active and not self._closed:
                    self._cv.wait()
                if self._closed and not self._active:
                    for job, _ in self._pending:
                        if not job.done.done():
                            job.done.set_exception(RuntimeError("engine closed"))
                    return
                take = self._take(admit_min)
            try:
                with self._device:
                    if take:
                        self._admit(take)
                    if self._active:
                        self._decode_chunk()
            except Exception as exc:  # fail the jobs in flight, keep serving the others
                log.exception("engine iteration failed")
                jobs = {id(j): j for j, _ in take} | {id(st["job"]): st["job"] for st in self._active.values()}
                for job in jobs.values():
                    if not job.done.done():
                        job.done.set_exception(exc)
                self._active.clear()
                self._snapshot = None
                self._free = list(range(cfg.slots))  # every slot, those taken by the failed admission too

    def _take(self, admit_min: int) -> list[tuple[_Job, int]]:
        """Queued items to admit now, in arrival order: every labels-only item (they hold no
        slot: label rows and free slots serve as scratch), and chain items while slots are free -
        while chains decode, only once ``admit_min`` slots (or as many as are queued) are free."""
        free = len(self._free)
        chains = sum(1 for job, _ in self._pending if job.chain)
        chain_ok = free > 0 and (not self._active or free >= min(admit_min, chains))
        take, keep, n_chain = [], deque(), 0
        while self._pending:
            job, i = self._pending.popleft()
            if not job.chain or (chain_ok and n_chain < free):
                take.append((job, i))
                n_chain += job.chain
            else:
                keep.append((job, i))
        self._pending = keep
        return take

    def _admit(self, take: list[tuple[_Job, int]]) -> None:
        plans: list[tuple[_Job, PostPlan]] = []
        for job, i in take:
            if job.done.done():  # failed earlier
                continue
            try:
                plan = job.plans[i].result()
                self._check_fits([plan], chain=job.chain)
            except Exception as exc:
                job.done.set_exception(exc)
                continue
            plans.append((job, plan))
        labels = [(j, p) for j, p in plans if not j.chain]
        chains = [(j, p) for j, p in plans if j.chain]
        self._free.sort()
        if labels:  # the label rows and the free slots as scratch, released at once
            rows = self._label_rows + self._free
            n = len(rows)
            for k in range(0, len(labels), n):
                group = labels[k : k + n]
                scores, _ = self._prefill([p for _, p in group], rows[: len(group)], chain=False)
                for (job, p), sc in zip(group, scores.tolist()):
                    job.finish(p.index, EngineResult(p.index, sc, len(p.label_ids), len(p.label_ids)), self.tokenizer)
        if chains:
            slots, self._free = self._free[: len(chains)], self._free[len(chains):]
            t0 = time.perf_counter()
            scores, _ = self._prefill([p for _, p in chains], slots, chain=True)
            self.stats["admissions"] += 1
            self.stats["refills"] += len(self._used.intersection(slots))
            self._used.update(slots)
            for (job, p), s, sc in zip(chains, slots, scores.tolist()):
                res = EngineResult(p.index, sc, len(p.reason_ids), len(p.label_ids))
                # length: tokens in the cache when decoding starts; n: tokens generated (the
                # prefill's first one); asked: columns queued for the host; toks: those read
                self._active[s] = {"job": job, "plan": p, "res": res, "t0": t0, "checked": 0, "toks": [],
                                   "length": len(p.reason_ids), "n": 1, "asked": 0}

    def _decode_chunk(self) -> None:
        """Launch ``sync_every`` steps, queue the copy of the tokens they write, then read the
        previous chunk's copy, which the device finished meanwhile: the host's stop checks overlap
        the device's next chunk instead of idling it. A finished row is seen one chunk late (its
        extra tokens are dropped, the output is the same) and its slot is refilled then."""
        cfg, d = self.cfg, self.decoder
        k = cfg.sync_every
        nb = min(cfg.slots, _pow2(max(self._active) + 1))
        # keys up to the longest row in flight (free slots below nb step too, ignored); "n" is
        # the host's count of a row's generated tokens: every step adds one to every row
        longest = max(st["length"] + st["n"] for st in self._active.values())
        lk = min(cfg.max_len, _round_up(longest + k + 1, cfg.kv_bucket))
        for _ in range(k):
            self._step(nb, lk)
        self.stats["steps"] += k
        rows = {}
        for s, st in self._active.items():
            st["n"] = min(st["n"] + k, self.width)
            rows[s] = (st, st["asked"], st["n"])  # this chunk's copy holds columns [asked, n)
            st["asked"] = st["n"]
        lo = min(a for _, a, _ in rows.values())
        hi = max(n for _, _, n in rows.values())
        src = d.out[:nb, lo:hi]
        if self.cuda:
            buf = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
            buf.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            buf, event = src.clone(), None
        previous, self._snapshot = self._snapshot, (buf, event, lo, rows)
        if previous is not None:
            self._read(previous)
        if not self._active:
            self._snapshot = None  # every row in it has finished

    def _read(self, snapshot) -> None:
        """Append a chunk's tokens to their rows, finish the rows that stopped, free their slots."""
        buf, event, lo, rows = snapshot
        if event is not None:
            event.synchronize()
        new = buf.tolist()
        for s in sorted(rows):
            st, a, n = rows[s]
            if self._active.get(s) is not st:  # finished from an earlier chunk; the slot may be refilled
                continue
            toks = st["toks"]
            toks += new[s][a - lo : n - lo]
            job = st["job"]
            stop = self._stop_index(toks, st["checked"], job.limit)
            st["checked"] = len(toks)
            if stop is None and not job.done.done():
                continue
            res = st["res"]
            res.tokens = toks[: (stop if stop is not None else len(toks) - 1) + 1]
            res.latency_ms = (time.perf_counter() - st["t0"]) * 1000
            del self._active[s]
            self._free.append(s)
            if not job.done.done():
                job.finish(st["plan"].index, res, self.tokenizer)

    def teacher_forced(self, posts: Sequence[PostInput], forced: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """For each post, the next-token logits (float32 ``(len(forced[i]), vocab)``) at the chain
        prompt's last position and after each of ``forced[i]``'s tokens but the last, fed in
        place of the engine's own argmax (checks only; eager steps, one group of slots at a time)."""
        with self._device:
            if self._active:
                raise RuntimeError("teacher_forced needs an idle engine")
            return self._teacher_forced(posts, forced)

    def _teacher_forced(self, posts: Sequence[PostInput], forced: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        futures = self.plans(posts)
        d, n = self.decoder, self.cfg.slots
        out: list[torch.Tensor] = []
        for i in range(0, len(futures), n):
            plans = [f.result() for f in futures[i : i + n]]
            refs = [list(forced[p.index]) for p in plans]
            self._check_fits(plans, chain=True)
            slots = list(range(len(plans)))
            _, first = self._prefill(plans, slots, chain=True, first="logits")
            rows = [[first[j]] for j in range(len(plans))]
            nb = min(n, _pow2(len(plans)))
            for k in range(max(len(r) for r in refs) - 1):
                for j, r in enumerate(refs):
                    if k < len(r):
                        d.tokens[j] = r[k]
                lk = min(self.cfg.max_len, _round_up(int(d.length[:nb].max()) + 2, self.cfg.kv_bucket))
                d.step(nb, lk, keep_logits=True)
                for j, r in enumerate(refs):
                    if k + 1 < len(r):
                        rows[j].append(d.logits[j].clone())
            out += [torch.stack(r) for r in rows]
        return out

    def close(self) -> None:
        """Stop the engine thread (chains in flight finish first) and the preprocessing threads."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.pool.shutdown(wait=False)


class _Job:
    """One ``submit`` call: its posts' plans, results and future."""

    def __init__(self, plans: list, chain: bool, limit: int) -> None:
        self.plans = plans
        self.chain = chain
        self.limit = limit
        self.results: list[EngineResult | None] = [None] * len(plans)
        self.left = len(plans)
        self.done: Future = Future()

    def finish(self, i: int, res: EngineResult, tokenizer: Any) -> None:
        self.results[i] = res
        self.left -= 1
        if self.left == 0:
            if self.chain:
                texts = tokenizer.batch_decode([r.tokens for r in self.results], skip_special_tokens=True)
                for r, t in zip(self.results, texts):
                    r.text = t
            self.done.set_result(list(self.results))


def summarize_latency(results: Sequence[EngineResult]) -> float | None:
    """Median admission-to-finish time of chain results, in ms (None without any)."""
    xs = [r.latency_ms for r in results if r.latency_ms]
    return round(statistics.median(xs), 1) if xs else None


__all__ = ["Engine", "EngineConfig", "EngineResult", "DoesNotFit", "STOP_STRINGS", "QWEN"]
