"""The HF student's fast path through the engine: :class:`EnginePath`, which ``HFStudent`` holds
when its ``engine`` option is on (default ``"auto"``: on CUDA). Predictions are built exactly as
``HFStudent.classify`` / ``explain`` build them (same fields, same
:func:`model.chain.with_generated_chain`), so the worker cannot tell the paths apart except by
speed. Each method returns None when the engine cannot take the batch (a post too long for a
slot, logged): the student then takes its own path.

The engine gets what it needs explicitly - the model, the processor, and an
:class:`EngineSettings` the student fills in - and reads nothing else of the student.

Options (HF student / ``load_student`` options):

* ``engine``: ``"auto"`` (on when the model is on CUDA), ``True`` / ``"on"`` (also on CPU - the
  tests), ``False`` / ``"off"``;
* ``engine_slots``: chains decoded together (default 128 on CUDA, 8 on CPU);
* ``engine_max_len``: tokens per slot (default ``1024 + max_new_tokens``).

A worker passes only ``device`` to the loader, so a GPU worker sets these through the
environment instead: ``MULCOT_ENGINE`` (auto/on/off), ``MULCOT_ENGINE_SLOTS``,
``MULCOT_ENGINE_MAX_LEN`` (read when the option is not given).

The engine is used only where it reproduces the HF path: greedy decoding, the ``reasoning``
chain prompt, label words with distinct first tokens, a Qwen2/2.5-VL or Idefics3 model.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.hf import KNOWN_FAMILIES
from ..chain import with_generated_chain
from ..prompts import PROMPT_VERSION
from ..types import PostInput, Prediction
from .config import DoesNotFit, EngineConfig, round_up
from .engine import Engine
from .request import EngineResult

log = logging.getLogger(__name__)

SUPPORTED = KNOWN_FAMILIES

#: ``label_prediction(probs, prompt_version=, prompt_tokens=, label_ms=, extra=)``: the student's
#: chain-less prediction (``BaseStudent.label_prediction``)
LabelPrediction = Callable[..., Prediction]


@dataclass(frozen=True)
class EngineSettings:
    """What the engine needs to know of an HF student: where it runs, what it decodes, and
    whether its settings are ones the engine reproduces."""

    family: str
    device: Any
    max_new_tokens: int
    image_size: int | None
    greedy: bool
    chain_prompt: str
    first_token_labels: bool
    """The label words start with distinct tokens and are scored by their first token."""

    def unsupported(self) -> str | None:
        """Why the engine cannot stand in for the HF path with these settings, or None."""
        if self.family not in SUPPORTED:
            return f"family {self.family}"
        if not self.greedy:
            return "sampling (the engine decodes greedily)"
        if self.chain_prompt != "reasoning":
            return f"chain_prompt={self.chain_prompt}"
        if not self.first_token_labels:
            return "label words scored as sequences"
        return None


def wanted(option: Any, device: Any) -> bool:
    """Whether the ``engine`` option asks for the engine on ``device``."""
    if isinstance(option, str):
        option = option.strip().lower()
        if option in ("auto", ""):
            return str(device).startswith("cuda")
        return option in ("1", "true", "on", "yes")
    return bool(option)


def engine_config(settings: EngineSettings, *, slots: int | None = None, max_len: int | None = None) -> EngineConfig:
    """The engine's settings for a student: slots and buckets by device, the student's budget."""
    cuda = str(settings.device).startswith("cuda")
    new = int(settings.max_new_tokens)
    return EngineConfig(
        slots=int(slots or (128 if cuda else 8)),
        max_new_tokens=new,
        max_len=int(max_len or round_up(1024 + new, 256)),
        sync_every=8 if cuda else 4,
        len_bucket=32 if cuda else 16,
        kv_bucket=256 if cuda else 64,
        image_size=settings.image_size,
    )


class EnginePath:
    """``classify`` / ``predict`` / ``explain`` of an HF student through an :class:`Engine`;
    each returns None to make the student fall back to its own path."""

    #: calls may come from several threads at once: the engine serialises device work itself and
    #: lets posts of concurrent calls share its slots
    thread_safe = True

    def __init__(self, engine: Engine, label_prediction: LabelPrediction) -> None:
        self.engine = engine
        self.label_prediction = label_prediction

    @classmethod
    def attach(cls, model: Any, processor: Any, settings: EngineSettings, label_prediction: LabelPrediction,
               option: Any = "auto", *, slots: int | None = None, max_len: int | None = None) -> EnginePath | None:
        """An engine path when ``option`` (or ``$MULCOT_ENGINE``) asks for one and ``settings``
        are ones the engine reproduces; else None (with a log line saying why)."""
        env = os.environ
        if option is None or option == "auto":
            option = env.get("MULCOT_ENGINE", "auto")
        slots = slots or (int(env["MULCOT_ENGINE_SLOTS"]) if env.get("MULCOT_ENGINE_SLOTS") else None)
        max_len = max_len or (int(env["MULCOT_ENGINE_MAX_LEN"]) if env.get("MULCOT_ENGINE_MAX_LEN") else None)
        if not wanted(option, settings.device):
            return None
        why = settings.unsupported()
        if why:
            log.info("HF student: engine not used (%s)", why)
            return None
        cfg = engine_config(settings, slots=slots, max_len=max_len)
        engine = Engine(model, processor, cfg)
        log.info("HF student: engine on (%d slots x %d tokens, CUDA graphs %s)", cfg.slots, cfg.max_len,
                 engine.cuda and cfg.cuda_graphs)
        return cls(engine, label_prediction)

    def _label_preds(self, results: Sequence[EngineResult], ms: float, n: int) -> list[Prediction]:
        import torch

        out = []
        for r in results:
            probs = torch.tensor(r.label_scores).softmax(-1).tolist()
            out.append(self.label_prediction(
                probs, prompt_version=PROMPT_VERSION, prompt_tokens=r.label_prompt_tokens, label_ms=ms,
                extra={"batch_size": n, "label_prompt_tokens": r.label_prompt_tokens, "engine": True}))
        return out

    @staticmethod
    def _fits(call: Callable[[], list[EngineResult]]) -> list[EngineResult] | None:
        try:
            return call()
        except DoesNotFit as exc:
            log.info("engine: %s; this batch takes the HF path", exc)
            return None

    def classify(self, batch: Sequence[PostInput]) -> list[Prediction] | None:
        """``HFStudent.classify`` through the engine."""
        t0 = time.perf_counter()
        results = self._fits(lambda: self.engine.classify(list(batch)))
        if results is None:
            return None
        return self._label_preds(results, (time.perf_counter() - t0) * 1000, len(batch))

    def predict(self, batch: Sequence[PostInput]) -> list[Prediction] | None:
        """Label + chain in one engine pass (one vision pass per post, shared prompt prefix)."""
        batch = list(batch)
        t0 = time.perf_counter()
        results = self._fits(lambda: self.engine.run(batch))
        if results is None:
            return None
        ms = (time.perf_counter() - t0) * 1000
        return _with_chains(self._label_preds(results, ms, len(batch)), results, ms)

    def explain(self, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction] | None:
        """``HFStudent.explain`` through the engine (the chain prompt does not depend on the label;
        the published label stays the one in ``predictions``)."""
        t0 = time.perf_counter()
        results = self._fits(lambda: self.engine.run(list(batch)))
        if results is None:
            return None
        return _with_chains(predictions, results, (time.perf_counter() - t0) * 1000)

    def close(self) -> None:
        self.engine.close()


def _with_chains(preds: Sequence[Prediction], results: Sequence[EngineResult], ms: float) -> list[Prediction]:
    return [with_generated_chain(pred, r.text, r.prompt_tokens, len(r.tokens), ms) for pred, r in zip(preds, results)]
