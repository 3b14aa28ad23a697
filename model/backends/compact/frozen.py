"""A frozen-feature route classifier: a linear (logistic-regression) head on frozen features.

The features are the all-MiniLM-L6-v2 sentence embedding of the text (mean-pooled,
L2-normalised, the pretrained model without any adapter), the aspect's embedding for
aspect-level routes, and the image's EfficientNet-Lite0 pooled feature (L2-normalised) and,
optionally, its ImageNet-1k probabilities; image blocks are zero for a post without an image.
``training/compact/select.py`` cross-validates heads on exactly these features (:func:`design`) and exports
the adopted one. Saved as ``<name>.json`` (``{"kind": "frozen", "parts": [...], ...}``) and
``<name>.safetensors`` (``weight`` [3, d], ``bias`` [3], and ``text_weight`` / ``text_bias``:
the same head fitted on the text blocks alone, which the chain's Conflict line compares with).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TEXT_PARTS = ("text", "aspect")
MAX_LENGTH = 128


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-6, None)


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def design(F: dict[str, np.ndarray], parts: tuple[str, ...] | list[str]) -> np.ndarray:
    """The input matrix of a frozen head: the named feature blocks side by side. ``F`` holds
    ``text`` / ``aspect`` (sentence embeddings), ``image`` (pooled features), ``logits``
    (ImageNet-1k logits) and ``has_image`` (0/1) for n posts."""
    cols = []
    for p in parts:
        if p in ("text", "aspect"):
            cols.append(F[p])
        elif p == "image":
            cols.append(unit(F["image"]) * F["has_image"][:, None])
        elif p == "imagenet":
            cols.append(softmax(F["logits"]) * F["has_image"][:, None])
        elif p == "has_image":
            cols.append(F["has_image"][:, None])
        else:
            raise ValueError(f"unknown feature block {p!r}")
    return np.concatenate(cols, 1).astype(np.float32)


class SentenceEncoder:
    """all-MiniLM-L6-v2 (or the sentence-transformers model at ``path``, e.g.
    :func:`~.text.mpnet_path`) as a sentence encoder (mean-pooled, L2-normalised), frozen."""

    def __init__(self, device: str = "cpu", path: str | Path | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        from .text import minilm_path

        path = path or minilm_path()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().to(device)
        self.device = torch.device(device)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            b = self.tok(texts[i:i + batch], padding=True, truncation=True, max_length=MAX_LENGTH,
                         return_tensors="pt").to(self.device)
            h = self.model(**b).last_hidden_state.float()
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1).cpu())
        return (torch.cat(out).numpy().astype(np.float32) if out
                else np.zeros((0, self.model.config.hidden_size), np.float32))


class FrozenClassifier:
    """A saved frozen head; ``probs`` takes the posts' texts, aspects and image features."""

    kind = "frozen"

    def __init__(self, cfg: dict, state: dict[str, torch.Tensor], encoder: SentenceEncoder | None = None) -> None:
        self.cfg = cfg
        self.parts = tuple(cfg["parts"])
        self.image_dim = int(cfg.get("image_dim", 1280))
        self.w, self.b = state["weight"].float().numpy(), state["bias"].float().numpy()
        self.tw, self.tb = state["text_weight"].float().numpy(), state["text_bias"].float().numpy()
        self.encoder = encoder or SentenceEncoder()

    @classmethod
    def load(cls, path: str | Path, name: str, encoder: SentenceEncoder | None = None) -> FrozenClassifier:
        from safetensors.torch import load_file

        path = Path(path)
        return cls(json.loads((path / f"{name}.json").read_text()), load_file(path / f"{name}.safetensors"), encoder)

    def features(self, texts: list[str], aspects: list[str | None], image_feats: np.ndarray,
                 image_logits: np.ndarray | None, has_image: np.ndarray) -> dict[str, np.ndarray]:
        F = {"text": self.encoder.encode(texts), "image": image_feats, "has_image": has_image}
        if "aspect" in self.parts:
            F["aspect"] = self.encoder.encode([a or "" for a in aspects])
        if "imagenet" in self.parts:
            F["logits"] = image_logits if image_logits is not None else np.zeros((len(texts), 1000), np.float32)
        return F

    def probs(self, F: dict[str, np.ndarray], text_only: bool = False) -> np.ndarray:
        """Class probabilities (positive, neutral, negative) from features (see :func:`design`)."""
        if text_only:
            z = design(F, [p for p in self.parts if p in TEXT_PARTS]) @ self.tw.T + self.tb
        else:
            z = design(F, self.parts) @ self.w.T + self.b
        return softmax(z)


def save_frozen(path: str | Path, name: str, parts: tuple[str, ...], model, text_model, meta: dict | None = None) -> None:
    """Write a fitted scikit-learn linear head (and its text-only twin) as ``<name>.json/.safetensors``.
    The class order must be (positive, neutral, negative) = 0, 1, 2."""
    from safetensors.torch import save_file

    for m in (model, text_model):
        if list(m.classes_) != [0, 1, 2]:
            raise ValueError(f"expected classes 0, 1, 2, got {m.classes_}")
    path = Path(path)
    state = {
        "weight": torch.tensor(model.coef_, dtype=torch.float32), "bias": torch.tensor(model.intercept_, dtype=torch.float32),
        "text_weight": torch.tensor(text_model.coef_, dtype=torch.float32),
        "text_bias": torch.tensor(text_model.intercept_, dtype=torch.float32),
    }
    save_file({k: v.contiguous() for k, v in state.items()}, path / f"{name}.safetensors")
    (path / f"{name}.json").write_text(json.dumps({"kind": "frozen", "parts": list(parts), "image_dim": 1280,
                                                   **(meta or {})}, indent=2))


def vader_scores(texts: list[str]) -> np.ndarray:
    """VADER's neg, neu, pos and compound scores of each text (``vaderSentiment``: a rule-based
    sentiment lexicon for social media, Hutto & Gilbert 2014)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    global _SIA
    if _SIA is None:
        _SIA = SentimentIntensityAnalyzer()
    return np.array([[s["neg"], s["neu"], s["pos"], s["compound"]] for s in map(_SIA.polarity_scores, texts)],
                    np.float32).reshape(len(texts), 4)


_SIA = None


class TextRoute:
    """The head that serves post-level posts without an image (``text_route.json`` +
    ``.safetensors``, round 4 of docs/results.md): a linear head on the frozen MiniLM sentence
    embedding and, when its parts name it, VADER's four scores."""

    def __init__(self, cfg: dict, state: dict[str, torch.Tensor], encoder: SentenceEncoder | None = None) -> None:
        self.cfg, self.parts = cfg, tuple(cfg["parts"])
        self.w, self.b = state["weight"].float().numpy(), state["bias"].float().numpy()
        self.encoder = encoder or SentenceEncoder()

    @classmethod
    def load(cls, path: str | Path, encoder: SentenceEncoder | None = None) -> TextRoute | None:
        """The text route of the student at ``path``, or None if it has none."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "text_route.json").exists():
            return None
        return cls(json.loads((path / "text_route.json").read_text()), load_file(path / "text_route.safetensors"), encoder)

    def probs(self, texts: list[str]) -> np.ndarray:
        blocks = {"text": lambda: self.encoder.encode(texts), "vader": lambda: vader_scores(texts)}
        X = np.concatenate([blocks[p]() for p in self.parts], 1)
        return softmax(X @ self.w.T + self.b)
