"""The engine behind the HF student: ``HFStudent`` calls these when its ``engine`` option is on
(default ``"auto"``: on CUDA). Predictions are built exactly as ``HFStudent.classify`` /
``explain`` build them (same fields, same ``chain_with_label``), so the worker cannot tell the
paths apart except by speed.

Options (HF student / ``load_student`` options):

* ``engine``: ``"auto"`` (on when the model is on CUDA), ``True`` / ``"on"`` (also on CPU - the
  tests), ``False`` / ``"off"``;
* ``engine_slots``: chains decoded together (default 128 on CUDA, 8 on CPU);
* ``engine_max_len``: tokens per slot (default ``1024 + max_new_tokens``).

A worker passes only ``device`` to the loader, so a GPU worker sets these through the
environment instead: ``MULCOT_ENGINE`` (auto/on/off), ``MULCOT_ENGINE_SLOTS``,
``MULCOT_ENGINE_MAX_LEN`` (read when the option is not given).

The engine is used only where it reproduces the HF path: greedy decoding, the ``reasoning``
chain prompt, label words with distinct first tokens, a Qwen2/2.5-VL or Idefics3 model. A batch
with a post too long for a slot falls back to the HF path: these functions then return None
(logged).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from ..backends.hf import KNOWN_FAMILIES
from ..prompts import PROMPT_VERSION
from ..types import PostInput, Prediction
from .engine import DoesNotFit, Engine, EngineConfig, _round_up

log = logging.getLogger(__name__)

SUPPORTED = KNOWN_FAMILIES


def wanted(option: Any, device: Any) -> bool:
    """Whether the ``engine`` option asks for the engine on ``device``."""
    if isinstance(option, str):
        option = option.strip().lower()
        if option in ("auto", ""):
            return str(device).startswith("cuda")
        return option in ("1", "true", "on", "yes")
    return bool(option)


def attach(student: Any, option: Any = "auto", *, slots: int | None = None, max_len: int | None = None) -> Engine | None:
    """An :class:`Engine` for ``student`` (an ``HFStudent``) when ``option`` asks for one and the
    student's settings are ones the engine reproduces; else None (with a log line saying why)."""
    env = os.environ
    if option is None or option == "auto":
        option = env.get("MULCOT_ENGINE", "auto")
    slots = slots or (int(env["MULCOT_ENGINE_SLOTS"]) if env.get("MULCOT_ENGINE_SLOTS") else None)
    max_len = max_len or (int(env["MULCOT_ENGINE_MAX_LEN"]) if env.get("MULCOT_ENGINE_MAX_LEN") else None)
    if not wanted(option, student.device):
        return None
    why = None
    if student.family not in SUPPORTED:
        why = f"family {student.family}"
    elif student.do_sample:
        why = "sampling (the engine decodes greedily)"
    elif student.chain_prompt != "reasoning":
        why = f"chain_prompt={student.chain_prompt}"
    elif not student.first_token_exact or student.label_scoring == "sequence":
        why = "label words scored as sequences"
    if why:
        log.info("HF student: engine not used (%s)", why)
        return None
    cuda = student.device.type == "cuda"
    new = int(student.max_new_tokens)
    cfg = EngineConfig(
        slots=int(slots or (128 if cuda else 8)),
        max_new_tokens=new,
        max_len=int(max_len or _round_up(1024 + new, 256)),
        sync_every=8 if cuda else 4,
        len_bucket=32 if cuda else 16,
        kv_bucket=256 if cuda else 64,
        image_size=student.image_size,
    )
    engine = Engine(student.model, student.processor, cfg)
    # calls may now come from several threads at once: the engine serialises device work itself
    # and lets posts of concurrent calls share its slots (a caller may run its model calls on
    # several threads when this is True)
    student.thread_safe = True
    log.info("HF student: engine on (%d slots x %d tokens, CUDA graphs %s)", cfg.slots, cfg.max_len,
             cuda and cfg.cuda_graphs)
    return engine


def _label_preds(student: Any, results, ms: float, n: int) -> list[Prediction]:
    import torch

    out = []
    for r in results:
        probs = torch.tensor(r.label_scores).softmax(-1).tolist()
        out.append(student.label_prediction(
            probs, prompt_version=PROMPT_VERSION, prompt_tokens=r.label_prompt_tokens, label_ms=ms,
            extra={"batch_size": n, "label_prompt_tokens": r.label_prompt_tokens, "engine": True}))
    return out


def _fits(call):
    try:
        return call()
    except DoesNotFit as exc:
        log.info("engine: %s; this batch takes the HF path", exc)
        return None


def classify(student: Any, batch: Sequence[PostInput]) -> list[Prediction] | None:
    """``HFStudent.classify`` through the engine."""
    t0 = time.perf_counter()
    results = _fits(lambda: student.engine.classify(list(batch)))
    if results is None:
        return None
    return _label_preds(student, results, (time.perf_counter() - t0) * 1000, len(batch))


def _with_chains(student: Any, preds: Sequence[Prediction], results, ms: float) -> list[Prediction]:
    from ..backends.hf.student import with_generated_chain

    return [with_generated_chain(pred, r.text, r.prompt_tokens, len(r.tokens), ms) for pred, r in zip(preds, results)]


def predict(student: Any, batch: Sequence[PostInput]) -> list[Prediction] | None:
    """Label + chain in one engine pass (one vision pass per post, shared prompt prefix)."""
    batch = list(batch)
    t0 = time.perf_counter()
    results = _fits(lambda: student.engine.run(batch))
    if results is None:
        return None
    ms = (time.perf_counter() - t0) * 1000
    return _with_chains(student, _label_preds(student, results, ms, len(batch)), results, ms)


def explain(student: Any, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction] | None:
    """``HFStudent.explain`` through the engine (the chain prompt does not depend on the label;
    the published label stays the one in ``predictions``)."""
    t0 = time.perf_counter()
    results = _fits(lambda: student.engine.run(list(batch)))
    if results is None:
        return None
    return _with_chains(student, predictions, results, (time.perf_counter() - t0) * 1000)
