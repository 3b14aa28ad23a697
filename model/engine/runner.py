"""The model runner: everything the engine does on the device, over :class:`SlotDecoder` and
:class:`VisionRunner`, given plans and slot numbers (it knows nothing of requests or callers).

* :meth:`ModelRunner.prefill` - admit posts into slots: one vision-tower call for the group, the
  shared instruction prefix's keys/values copied in, the label prefill (three label-token
  logits), and the chain prefill written over the label suffix (the part both prompts share,
  image included, is computed once);
* :meth:`ModelRunner.decode` - a chunk of greedy decode steps for slots ``[0, nb)``, each step
  captured once per ``(nb, lk)`` in a CUDA graph and replayed (eager on CPU, or after a capture
  failed);
* :meth:`ModelRunner.fetch` - the copy of the output columns a chunk wrote, queued to pinned host
  memory without waiting, read when the host gets to it (:class:`Fetched`);
* :meth:`ModelRunner.teacher_forced` - next-token logits with given tokens fed in (checks only).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..types import PostInput
from .config import EngineConfig, pow2, round_up
from .decoder import SlotDecoder
from .inputs import Planner, PostPlan, common_prefix
from .vision import VisionRunner

log = logging.getLogger(__name__)


class Fetched:
    """Output columns ``[lo, hi)`` of the first ``nb`` rows on their way to the host."""

    def __init__(self, src: torch.Tensor, cuda: bool) -> None:
        if cuda:
            self.buf = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
            self.buf.copy_(src, non_blocking=True)
            self.event: Any = torch.cuda.Event()
            self.event.record()
        else:
            self.buf, self.event = src.clone(), None

    def rows(self) -> list[list[int]]:
        """The columns as host lists (waits for the copy)."""
        if self.event is not None:
            self.event.synchronize()
        return self.buf.tolist()


class ModelRunner:
    """Prefill, decode and graph capture for one model over a slotted KV cache of ``rows`` rows."""

    def __init__(self, model: Any, planner: Planner, cfg: EngineConfig, *, rows: int, label_ids: list[int]) -> None:
        self.cfg = cfg
        self.planner = planner
        self.decoder = SlotDecoder(model, n_slots=rows, max_len=cfg.max_len, label_ids=label_ids,
                                   out_width=cfg.width)
        self.device = self.decoder.device
        self.cuda = self.device.type == "cuda"
        self.vision = VisionRunner(model)
        self.cuda_graphs = cfg.cuda_graphs and self.cuda
        self.graph_error: str | None = None
        self._graphs: dict[tuple[int, int], Any] = {}
        self._graph_pool = None
        self._prefix_ids, self._prefix_k, self._prefix_v = self._instruction_prefix()

    # ---- shared instruction prefix ------------------------------------------------------
    def _instruction_prefix(self):
        """The tokens every prompt starts with (system turn and user-turn header), and their
        keys/values, computed once."""
        from PIL import Image

        posts = [PostInput("a b c"), PostInput("d e", aspect="f"), PostInput("g", image=Image.new("RGB", (56, 56)))]
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

    # ---- prefill ------------------------------------------------------------------------
    def _embed_rows(self, rows: list[list[int]], feats: list[torch.Tensor | None]) -> tuple[torch.Tensor, list[int]]:
        """Right-padded embeddings ``(b, T, hidden)`` of token rows with image features placed
        at the image-token positions; ``T`` rounded up to ``len_bucket``."""
        lengths = [len(r) for r in rows]
        t = round_up(max(lengths), self.cfg.len_bucket)
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

    @staticmethod
    def _positions(plan: PostPlan, which: str, start: int) -> torch.Tensor:
        ids = plan.label_ids if which == "label" else plan.reason_ids
        full = plan.label_pos if which == "label" else plan.reason_pos
        if full is None:
            return torch.arange(start, len(ids))
        return full[:, start:]

    def _prefill_rows(self, plans: list[PostPlan], slot_t: torch.Tensor, starts: list[int], which: str,
                      feats: list[torch.Tensor | None], want: str) -> torch.Tensor:
        """One prefill of each plan's ``which`` prompt from ``starts[i]`` on, into its slot."""
        rows = [(p.label_ids if which == "label" else p.reason_ids)[s:] for p, s in zip(plans, starts)]
        emb, lengths = self._embed_rows(rows, feats)
        cos, sin = self._rope_rows(emb, [self._positions(p, which, s) for p, s in zip(plans, starts)])
        return self.decoder.prefill(emb, cos, sin, slot_t, torch.tensor(starts, device=self.device),
                                    torch.tensor(lengths, device=self.device), want=want)

    def prefill(self, plans: list[PostPlan], slots: list[int], *, chain: bool, first: str = "argmax"):
        """Admit ``plans`` into ``slots``: vision, prefix copy, label prefill, and (``chain``)
        chain prefill. Returns the label scores ``(b, 3)`` and the first chain tokens (their
        logits with ``first="logits"``; None without ``chain``)."""
        feats = self.vision.encode(plans)
        slot_t = torch.tensor(slots, device=self.device)
        starts = [self._prefix_len(p) for p in plans]
        if any(starts):
            keep = [i for i, s in enumerate(starts) if s]
            self.decoder.copy_prefix(slot_t[keep], self._prefix_k, self._prefix_v)
        scores = self._prefill_rows(plans, slot_t, starts, "label", feats, "labels")
        if not chain:
            return scores, None
        shared = [p.shared for p in plans]
        if any(self.planner.image_token_id in p.reason_ids[s:] for p, s in zip(plans, shared)):
            raise ValueError("the reasoning prompt's image is not in the part it shares with the label prompt")
        out = self._prefill_rows(plans, slot_t, shared, "reason", [None] * len(plans), first)
        tokens = out.argmax(-1) if first == "logits" else out
        d = self.decoder
        d.tokens[slot_t] = tokens
        d.out[slot_t, 0] = tokens
        d.n_gen[slot_t] = 1
        d.length[slot_t] = torch.tensor([len(p.reason_ids) for p in plans], device=self.device)
        d.pos[slot_t] = torch.tensor([p.next_position for p in plans], device=self.device)
        return scores, out

    # ---- decode -------------------------------------------------------------------------
    def decode(self, nb: int, lk: int, steps: int) -> None:
        """``steps`` greedy decode steps for slots ``[0, nb)`` against keys ``[0, lk)``."""
        for _ in range(steps):
            self._step(nb, lk)

    def _step(self, nb: int, lk: int) -> None:
        if not self.cuda_graphs:
            self.decoder.step(nb, lk)
            return
        g = self._graphs.get((nb, lk))
        if g is None:
            try:
                g = self._capture(nb, lk)
            except Exception as exc:  # a kernel that cannot be captured: run eager from now on
                log.warning("CUDA graph capture failed (%s: %s); decode steps run eagerly", type(exc).__name__, exc)
                self.cuda_graphs = False
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

    def fetch(self, nb: int, lo: int, hi: int) -> Fetched:
        """Queue the copy of output columns ``[lo, hi)`` of slots ``[0, nb)`` (no wait)."""
        return Fetched(self.decoder.out[:nb, lo:hi], self.cuda)

    # ---- checks -------------------------------------------------------------------------
    def teacher_forced(self, plans: list[PostPlan], refs: list[list[int]]) -> list[torch.Tensor]:
        """Per plan, the next-token logits at the chain prompt's last position and after each of
        its ``refs`` tokens but the last, fed in place of the argmax (eager steps; the plans
        take slots ``[0, len(plans))``)."""
        d = self.decoder
        _, first = self.prefill(plans, list(range(len(plans))), chain=True, first="logits")
        rows = [[first[j]] for j in range(len(plans))]
        nb = min(self.cfg.slots, pow2(len(plans)))
        for k in range(max(len(r) for r in refs) - 1):
            for j, r in enumerate(refs):
                if k < len(r):
                    d.tokens[j] = r[k]
            lk = min(self.cfg.max_len, round_up(int(d.length[:nb].max()) + 2, self.cfg.kv_bucket))
            d.step(nb, lk, keep_logits=True)
            for j, r in enumerate(refs):
                if k + 1 < len(r):
                    rows[j].append(d.logits[j].clone())
        return [torch.stack(r) for r in rows]
