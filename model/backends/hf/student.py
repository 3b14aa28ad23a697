"""The HF student: labels from one forward pass, chains by generation.

How a prediction is made (see docs/model.md for the reasoning):


1. **Label** (``classify``): the label prompt (``prompts.label_prompt``) is rendered with the
   model's chat template, the batch is left-padded and run through ONE forward pass; the
   next-token logits at the start of the assistant turn are read at the *first token* of each
   label word (``positive``/``neutral``/``negative``, with the leading space when the template
   ends without whitespace, e.g. SmolVLM's ``Assistant:``), and a softmax over those three
   logits gives the probabilities. This is exact when the three first tokens differ (true for
   the Qwen2 and SmolVLM tokenizers: each word is one token) since the model commits to a label
   at its first token; when two label words share their first token, ``label_scoring="auto"``
   scores the full words instead (each word appended to the prompt, 3 x batch rows in the same
   single forward pass, summed log-probabilities).
2. **Chain** (``explain``): the reasoning prompt (``prompts.reasoning_prompt``, the prompt the
   student was trained on) is generated from, greedy by default. Decoding stops as soon as the
   model writes the ``Prediction`` key; the text before it is kept and ``"Prediction": <label>``
   is appended with the label from step 1, so label and chain agree for every prediction by
   construction. What the model's own conclusion argued for is kept in
   ``Prediction.extra["chain_label"]`` / ``["chain_agrees"]`` so disagreement is measurable.
   ``chain_prompt="guided"`` instead conditions the chain on the label
   (``prompts.guided_reasoning_prompt``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...chain import STOP_STRINGS, with_generated_chain
from ...prompts import LABEL_WORDS, PROMPT_VERSION, guided_reasoning_prompt, label_prompt, reasoning_prompt
from ...types import BaseStudent, PostInput, Prediction
from . import QWEN_FAMILIES
from .inputs import answer_lead, encode_batch, encode_rendered, render_prompt
from .loading import load_model_and_processor, version_of

log = logging.getLogger(__name__)

#: Default square resolution for Qwen-family images (pixels per side; the method's ~280x280).
DEFAULT_IMAGE_SIZE = 280

class HFStudent(BaseStudent):
    """A Hugging Face VLM student. Build with :meth:`from_pretrained` (or ``load_student``)."""

    thread_safe: bool = False  # True while it holds an engine path (attach_engine)

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        name: str = "hf",
        version: str = "0",
        family: str | None = None,
        image_size: int | None = None,
        max_new_tokens: int = 384,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int | None = None,
        chain: bool = True,
        chain_prompt: str = "reasoning",
        label_scoring: str = "auto",
        vision_attention: str = "packed",
        cache_implementation: str | None = None,
        info: dict | None = None,
        engine: Any = "auto",
        engine_slots: int | None = None,
        engine_max_len: int | None = None,
    ) -> None:
        if chain_prompt not in ("reasoning", "guided"):
            raise ValueError("chain_prompt must be 'reasoning' or 'guided'")
        if vision_attention not in ("packed", "model"):
            raise ValueError("vision_attention must be 'packed' or 'model'")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.version = version
        self.family = family or model.config.model_type
        if image_size is None and self.family in QWEN_FAMILIES:
            image_size = DEFAULT_IMAGE_SIZE
        self.image_size = image_size
        self.max_new_tokens = int(max_new_tokens)
        self.do_sample = bool(do_sample)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = seed
        self.chain = bool(chain)
        self.chain_prompt = chain_prompt
        self.info = dict(info or {})
        self.cache_implementation = cache_implementation
        if vision_attention == "packed":
            from ...kernels.attention import PACKED_SDPA, use_packed_vision_attention

            if use_packed_vision_attention(model):
                self.info["vision_attention"] = PACKED_SDPA
        if label_scoring not in ("auto", "first_token", "sequence"):
            raise ValueError("label_scoring must be 'auto', 'first_token' or 'sequence'")
        self.label_scoring = label_scoring
        self.label_word_ids = self._label_token_ids()
        if label_scoring == "first_token" and not self.first_token_exact:
            raise ValueError(
                f"label words {LABEL_WORDS} share a first token with this tokenizer "
                f"({self.label_token_ids}); use label_scoring='sequence' or 'auto'"
            )
        # the batched engine (model/engine, docs/engine.md): "auto" = on CUDA; None when off or
        # when these settings are ones it does not reproduce
        self.engine = None
        if engine not in (None, False, "off"):
            self.attach_engine(engine, slots=engine_slots, max_len=engine_max_len)

    # ---- the engine path ----------------------------------------------------------------
    def engine_settings(self):
        """What the engine needs to know of this student (:class:`model.engine.path.EngineSettings`)."""
        from ...engine.path import EngineSettings

        return EngineSettings(
            family=self.family, device=self.device, max_new_tokens=self.max_new_tokens, image_size=self.image_size,
            greedy=not self.do_sample, chain_prompt=self.chain_prompt,
            first_token_labels=self.first_token_exact and self.label_scoring != "sequence")

    def attach_engine(self, option: Any = "auto", *, slots: int | None = None, max_len: int | None = None):
        """Hold an engine path (:class:`model.engine.path.EnginePath`) when ``option`` asks for
        one and these settings are ones the engine reproduces; returns it (or None). With it,
        ``classify``, ``explain`` and ``predict`` go through the engine unless it declines a
        batch, and calls may come from several threads at once (``thread_safe``)."""
        from ...engine.path import EnginePath

        self.engine = EnginePath.attach(self.model, self.processor, self.engine_settings(), self.label_prediction,
                                        option, slots=slots, max_len=max_len)
        self.thread_safe = self.engine is not None
        return self.engine

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, target: str | Path, adapter: str | Path | None = None, **options: Any) -> HFStudent:
        """Load ``target`` (directory or hub id) with an optional LoRA ``adapter`` merged in.

        Options: ``device`` (default cuda if available), ``dtype`` (bf16 on GPU, fp32 on CPU),
        ``image_size`` (Qwen: square pixel budget, default 280), ``max_new_tokens`` (384),
        ``do_sample`` (False = greedy), ``temperature``, ``top_p``, ``seed``, ``chain`` (False =
        labels-only: ``predict`` never generates), ``chain_prompt`` ("reasoning" | "guided"),
        ``label_scoring`` ("auto": first-token logits when the label words' first tokens differ,
        else full-word log-probabilities; "first_token"; "sequence"), ``merge_adapter`` (True),
        ``attn_implementation``, ``vision_attention`` ("packed": Qwen-VL vision towers run all
        their windows in one attention call instead of one call per window, unless flash-attn is
        in use; "model": leave the model's own), ``cache_implementation`` (passed to
        ``generate``, e.g. "static"; default: transformers' dynamic cache), ``engine`` ("auto": the
        batched engine of ``model/engine`` on CUDA; "on"; "off"), ``engine_slots``,
        ``engine_max_len`` (docs/engine.md), ``name``, ``version``.
        Unknown options are ignored with a log line (settings objects pass extra keys).
        """
        load_keys = ("device", "dtype", "merge_adapter", "attn_implementation")
        init_keys = ("name", "version", "image_size", "max_new_tokens", "do_sample", "temperature", "top_p",
                     "seed", "chain", "chain_prompt", "label_scoring", "vision_attention", "cache_implementation",
                     "engine", "engine_slots", "engine_max_len")
        unknown = sorted(set(options) - set(load_keys) - set(init_keys))
        if unknown:
            log.info("HFStudent ignores options %s", unknown)
        model, processor, info = load_model_and_processor(
            str(target), str(adapter) if adapter else None, **{k: options[k] for k in load_keys if k in options}
        )
        init = {k: options[k] for k in init_keys if k in options and options[k] is not None}
        init.setdefault("name", f"hf:{target}" + (f"+{adapter}" if adapter else ""))
        init.setdefault("version", "+".join(
            version_of(Path(d)) for d in (info["local_base"], info["local_adapter"]) if d))
        return cls(model, processor, family=info["family"], info=info, **init)

    # ---- label scoring ------------------------------------------------------------------
    def _label_token_ids(self) -> list[list[int]]:
        """Token ids of each label word as it would follow the assistant-turn start."""
        self.label_lead = answer_lead(self.processor)
        return [self.tokenizer.encode(self.label_lead + word, add_special_tokens=False) for word in LABEL_WORDS]

    @property
    def label_token_ids(self) -> list[int]:
        """First token of each label word (``LABELS`` order)."""
        return [ids[0] for ids in self.label_word_ids]

    @property
    def first_token_exact(self) -> bool:
        """True when the three label words start with three different tokens."""
        return len(set(self.label_token_ids)) == len(LABEL_WORDS)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _inference(self):
        import torch

        return torch.inference_mode()

    def label_logits(self, batch: Sequence[PostInput]):
        """``(scores, prompt_lengths)``: scores of the three label words (``LABELS`` order) for
        each post, from one forward pass: first-token logits, or (``label_scoring="sequence"``, or automatically when two
        label words share a first token) the summed log-probabilities of every token of each
        word. A softmax over them gives the probabilities."""
        if self.label_scoring == "sequence" or (self.label_scoring == "auto" and not self.first_token_exact):
            return self._sequence_scores(batch)
        enc = encode_batch(self.processor, batch, [label_prompt(p) for p in batch], family=self.family,
                           image_size=self.image_size, device=self.device)
        with self._inference():
            out = self.model(**enc, use_cache=False, logits_to_keep=1)
        logits = out.logits[:, -1, :].float()
        return logits[:, self.label_token_ids], enc["attention_mask"].sum(-1).tolist()

    def _sequence_scores(self, batch: Sequence[PostInput]):
        """Full-continuation scoring: each post appears three times (prompt + each label word),
        all rows in one forward pass; score = sum of the word tokens' log-probabilities."""
        import torch

        k = len(LABEL_WORDS)
        rows = [p for p in batch for _ in range(k)]
        rendered = [render_prompt(self.processor, p, label_prompt(p)) for p in batch]
        texts = [r + self.label_lead + w for r in rendered for w in LABEL_WORDS]
        full = encode_rendered(self.processor, rows, texts, family=self.family, image_size=self.image_size)
        full = full.to(self.device)
        # how many tokens the word adds to its prompt (text-only counts: image expansion is equal)
        n_prompt_text = [len(self.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in rendered]
        n_word = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) - n_prompt_text[i // k]
                  for i, t in enumerate(texts)]
        width = max(n_word)
        with self._inference():
            out = self.model(**full, use_cache=False, logits_to_keep=width + 1)
        logp = out.logits.float().log_softmax(-1)  # (3B, width+1, V); left padding: rows end together
        ids = full["input_ids"]
        scores = torch.empty(len(rows), device=logp.device)
        for r, n in enumerate(n_word):
            # the logits at position t predict token t+1: the last n tokens (the word) are
            # predicted by the n positions just before them
            target = ids[r, -n:]
            scores[r] = logp[r, -(n + 1):-1, :].gather(-1, target.unsqueeze(-1)).sum()
        lengths = full["attention_mask"].sum(-1).view(len(batch), k)[:, 0] - torch.tensor(
            [n_word[i * k] for i in range(len(batch))], device=full["attention_mask"].device)
        return scores.view(len(batch), k), lengths.tolist()

    def classify(self, batch: Sequence[PostInput]) -> list[Prediction]:
        batch = list(batch)
        if not batch:
            return []
        if self.engine is not None:
            preds = self.engine.classify(batch)
            if preds is not None:  # None: a post too long for the engine's slots
                return preds
        t0 = time.perf_counter()
        scores, prompt_lens = self.label_logits(batch)
        probs = scores.softmax(-1).cpu().tolist()
        ms = (time.perf_counter() - t0) * 1000
        return [
            self.label_prediction(
                p, prompt_version=PROMPT_VERSION, prompt_tokens=int(n), label_ms=ms,
                extra={"batch_size": len(batch), "label_prompt_tokens": int(n)},
            )
            for p, n in zip(probs, prompt_lens)
        ]

    # ---- chain generation ---------------------------------------------------------------
    def generate_raw(self, batch: Sequence[PostInput], prompts: Sequence[str], *, stop_at_prediction: bool = True,
                     max_new_tokens: int | None = None) -> tuple[list[str], list[int], list[int]]:
        """Generate from ``prompts``; returns (texts, prompt token counts, generated token counts)."""
        import torch

        enc = encode_batch(self.processor, batch, prompts, family=self.family, image_size=self.image_size,
                           device=self.device)
        gen: dict[str, Any] = dict(max_new_tokens=int(max_new_tokens or self.max_new_tokens),
                                   do_sample=self.do_sample, pad_token_id=self.tokenizer.pad_token_id)
        eos = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        gen["eos_token_id"] = eos
        if self.do_sample:
            gen.update(temperature=self.temperature, top_p=self.top_p)
        else:
            gen.update(temperature=None, top_p=None, top_k=None)
        if stop_at_prediction:
            gen.update(stop_strings=list(STOP_STRINGS), tokenizer=self.tokenizer)
        if self.cache_implementation:
            gen["cache_implementation"] = self.cache_implementation
        if self.seed is not None:
            torch.manual_seed(self.seed)
        with self._inference():
            out = self.model.generate(**enc, **gen)
        new = out[:, enc["input_ids"].shape[1]:]
        eos_ids = set([eos] if isinstance(eos, int) else list(eos or []))
        pad = self.tokenizer.pad_token_id
        counts = []
        for row in new.tolist():
            # new tokens up to the first end-of-turn (counted) or padding (not counted: rows that
            # stopped early, on a stop string or eos, are padded to the batch's length)
            n = len(row)
            for i, t in enumerate(row):
                if t == pad or t in eos_ids:
                    n = i + (0 if t == pad else 1)
                    break
            counts.append(n)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return texts, enc["attention_mask"].sum(-1).tolist(), counts

    def explain(self, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction]:
        batch = self.explain_inputs(batch, predictions)
        if not batch:
            return []
        if self.engine is not None:
            out = self.engine.explain(batch, predictions)
            if out is not None:
                return out
        t0 = time.perf_counter()
        if self.chain_prompt == "guided":
            prompts = [guided_reasoning_prompt(p, pr.label) for p, pr in zip(batch, predictions)]
        else:
            prompts = [reasoning_prompt(p) for p in batch]
        texts, prompt_lens, counts = self.generate_raw(batch, prompts)
        ms = (time.perf_counter() - t0) * 1000
        return [with_generated_chain(pred, text, n_prompt, n_gen, ms)
                for pred, text, n_prompt, n_gen in zip(predictions, texts, prompt_lens, counts)]

    def predict(self, batch: Sequence[PostInput], *, chain: bool = True) -> list[Prediction]:
        """Label (+ chain unless ``chain=False`` or the student was loaded with ``chain=False``).
        With the engine, label and chain come from one pass (one vision pass per post)."""
        if self.engine is not None and chain and self.chain and batch:
            preds = self.engine.predict(batch)
            if preds is not None:
                return preds
        return super().predict(batch, chain=chain and self.chain)

