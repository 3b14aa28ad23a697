"""The correctness reference: the HF student's own path (``HFStudent.label_logits`` and
``model.generate``, greedy), and the comparisons the engine is checked by.

* :func:`reference_run`: label scores and greedy chain token ids from transformers, batch by
  batch, with the HF student's prompts, image handling and stop strings;
* :func:`greedy_check`: engine vs reference tokens (token agreement = shared leading tokens over
  the longer of the two, summed over posts) and label agreement;
* :func:`teacher_forced_check`: both fed the reference's tokens; next-token logits compared at
  every position (top-1 agreement, max / mean absolute logit difference) - the bf16 check, where
  one rounding difference would send free-running greedy decoding down another path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ...chain import STOP_STRINGS
from ...prompts import reasoning_prompt
from ...types import PostInput
from ..engine import Engine


def _hf():
    from ...backends.hf.inputs import encode_batch
    from ...backends.hf.student import HFStudent

    return HFStudent, encode_batch


def hf_student(model: Any, processor: Any, *, image_size: int | None, max_new_tokens: int, chain: bool = True):
    """The HF student over an already loaded model, on its own HF path (``engine="off"``: the
    reference must not be the engine)."""
    HFStudent, _ = _hf()
    return HFStudent(model, processor, image_size=image_size, max_new_tokens=max_new_tokens, chain=chain,
                     label_scoring="first_token", engine="off")


def reference_generate(student: Any, posts: Sequence[PostInput], max_new_tokens: int, *,
                       stop_at_prediction: bool = True) -> list[list[int]]:
    """Greedy chain token ids from ``model.generate`` for one batch, cut after each row's
    end-of-turn token (kept) and padding; the same call as ``HFStudent.generate_raw``."""
    _, encode_batch = _hf()
    enc = encode_batch(student.processor, posts, [reasoning_prompt(p) for p in posts], family=student.family,
                       image_size=student.image_size, device=student.device)
    tok = student.tokenizer
    eos = student.model.generation_config.eos_token_id or tok.eos_token_id
    gen: dict[str, Any] = dict(max_new_tokens=int(max_new_tokens), do_sample=False, temperature=None, top_p=None,
                               top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=eos)
    if stop_at_prediction:
        gen.update(stop_strings=list(STOP_STRINGS), tokenizer=tok)
    with torch.inference_mode():
        out = student.model.generate(**enc, **gen)
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    eos_ids = set([eos] if isinstance(eos, int) else list(eos or []))
    rows = []
    for row in new:
        keep = []
        for t in row:
            if t == tok.pad_token_id:
                break
            keep.append(t)
            if t in eos_ids:
                break
        rows.append(keep)
    return rows


def reference_run(student: Any, posts: Sequence[PostInput], *, batch_size: int, max_new_tokens: int,
                  chain: bool = True, stop_at_prediction: bool = True) -> dict:
    """Label scores (and chains) of ``posts`` through the HF path, ``batch_size`` at a time.
    Returns ``scores`` (lists of 3), ``tokens`` (lists of ids), ``batch_ms`` (per batch)."""
    scores: list[list[float]] = []
    tokens: list[list[int]] = []
    batch_ms = []
    for i in range(0, len(posts), batch_size):
        chunk = list(posts[i : i + batch_size])
        t0 = time.perf_counter()
        with torch.inference_mode():
            sc, _ = student.label_logits(chunk)
        scores += sc.float().cpu().tolist()
        if chain:
            tokens += reference_generate(student, chunk, max_new_tokens, stop_at_prediction=stop_at_prediction)
        if student.device.type == "cuda":
            torch.cuda.synchronize()
        batch_ms.append((time.perf_counter() - t0) * 1000)
    return {"scores": scores, "tokens": tokens, "batch_ms": batch_ms}


def token_agreement(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> dict:
    """Shared leading tokens over the longer sequence, summed over posts; and the share of posts
    whose sequences are identical."""
    shared = total = same = 0
    for x, y in zip(a, b):
        n = 0
        for s, t in zip(x, y):
            if s != t:
                break
            n += 1
        shared += n
        total += max(len(x), len(y))
        same += list(x) == list(y)
    return {"token_agreement": round(shared / total, 4) if total else 1.0,
            "identical_rows": round(same / max(1, len(a)), 4)}


def label_agreement(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> dict:
    """Same argmax label share, and the largest probability difference."""
    ta, tb = torch.tensor(a).float(), torch.tensor(b).float()
    same = (ta.argmax(-1) == tb.argmax(-1)).float().mean().item()
    diff = (ta.softmax(-1) - tb.softmax(-1)).abs().max().item()
    return {"label_agreement": round(same, 4), "max_prob_diff": float(f"{diff:.3g}")}


def greedy_check(engine: Engine, student: Any, posts: Sequence[PostInput], *, max_new_tokens: int,
                 batch_size: int = 8) -> dict:
    """Engine vs reference greedy tokens and labels on ``posts`` (the fp32 check)."""
    ref = reference_run(student, posts, batch_size=batch_size, max_new_tokens=max_new_tokens)
    got = engine.run(posts, max_new_tokens=max_new_tokens)
    out = token_agreement([r.tokens for r in got], ref["tokens"])
    out.update(label_agreement([r.label_scores for r in got], ref["scores"]))
    out.update(posts=len(posts), max_new_tokens=max_new_tokens,
               tokens=sum(len(t) for t in ref["tokens"]))
    return out


def reference_forced_logits(student: Any, post: PostInput, tokens: Sequence[int]) -> torch.Tensor:
    """HF's next-token logits (float32 ``(len(tokens), vocab)``) at the reasoning prompt's last
    position and after each of ``tokens`` but the last: one forward over prompt + tokens."""
    _, encode_batch = _hf()
    enc = encode_batch(student.processor, [post], [reasoning_prompt(post)], family=student.family,
                       image_size=student.image_size, device=student.device)
    n = len(tokens)
    ids = torch.tensor([list(tokens)], device=student.device)
    inputs = dict(enc)
    inputs["input_ids"] = torch.cat([enc["input_ids"], ids], 1)
    inputs["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(ids)], 1)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(ids)], 1)
    with torch.inference_mode():
        out = student.model(**inputs, use_cache=False, logits_to_keep=n + 1)
    return out.logits[0, :n].float()


def teacher_forced_check(engine: Engine, student: Any, posts: Sequence[PostInput], *, max_new_tokens: int,
                         batch_size: int = 8) -> dict:
    """The bf16 check: reference greedy tokens, then both paths fed those tokens; next-token
    logits compared at every position; plus label agreement."""
    ref = reference_run(student, posts, batch_size=batch_size, max_new_tokens=max_new_tokens)
    mine = engine.teacher_forced(posts, ref["tokens"])
    agree = total = 0
    max_diff = 0.0
    sum_diff = 0.0
    n_elems = 0
    for post, toks, el in zip(posts, ref["tokens"], mine):
        if not toks:
            continue
        hl = reference_forced_logits(student, post, toks).to(el.device)
        agree += int((hl.argmax(-1) == el.argmax(-1)).sum())
        total += len(toks)
        d = (hl - el).abs()
        max_diff = max(max_diff, float(d.max()))
        sum_diff += float(d.sum())
        n_elems += d.numel()
    labels = engine.classify(posts)
    out = {"top1_agreement": round(agree / total, 4) if total else None, "positions": total,
           "max_logit_diff": float(f"{max_diff:.4g}"), "mean_logit_diff": float(f"{sum_diff / max(1, n_elems):.4g}")}
    out.update(label_agreement([r.label_scores for r in labels], ref["scores"]))
    return out
