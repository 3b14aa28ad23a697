"""Inputs of the compact classifier: cached image features, dataset files, encoded batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model import LABELS
from model.backends.compact.text import ClassifierConfig, encode_pairs
from model.backends.compact.vision import ImageEncoder

from ..data import Example, data_dir, load_examples

LABEL_INDEX = {lab: i for i, lab in enumerate(LABELS)}


def image_features(examples: list[Example], cache: Path, size: int, batch: int = 32) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Pooled EfficientNet-Lite0 features and top-3 ImageNet names per image path, cached."""
    cache.mkdir(parents=True, exist_ok=True)
    f = cache / f"images_{size}.npz"
    names_f = cache / f"images_{size}_names.json"
    store: dict[str, tuple[np.ndarray, list[str]]] = {}
    if f.exists():
        z = np.load(f)
        names = json.loads(names_f.read_text())
        store = {k: (z[k], names[k]) for k in z.files}
    todo = sorted({str(e.image_path) for e in examples if e.image_path and str(e.image_path) not in store})
    if todo:
        from PIL import Image, ImageOps
        from tqdm import tqdm

        enc = ImageEncoder(size=size)
        for i in tqdm(range(0, len(todo), batch), desc=f"image features @{size}"):
            paths = todo[i : i + batch]
            ims = []
            for p in paths:
                with Image.open(p) as im:
                    ims.append(ImageOps.exif_transpose(im).convert("RGB"))
            feats, logits = enc.encode(ims)
            for p, ft, nm in zip(paths, feats.numpy().astype(np.float16), enc.top_names(logits, 3)):
                store[p] = (ft, nm)
        np.savez(f, **{k: v[0] for k, v in store.items()})
        names_f.write_text(json.dumps({k: v[1] for k, v in store.items()}))
    return store


def load_sets(paths: list[str], limit: int | None = None) -> list[Example]:
    """Examples of the given files (relative to the data directory)."""
    out: list[Example] = []
    for p in paths:
        out.extend(load_examples(data_dir() / p, limit=limit))
    return out


class Batches:
    """Encodes examples for the classifier, with their cached image features."""

    def __init__(self, examples, feats, tokenizer, cfg: ClassifierConfig):
        self.examples, self.feats, self.tok, self.cfg = examples, feats, tokenizer, cfg

    def encode(self, exs: list[Example], cfg: ClassifierConfig | None = None):
        """Tokenised pairs, image features and image flags of ``exs``, in the input format of
        ``cfg`` (default: the model being trained)."""
        cfg = cfg or self.cfg
        posts, imgs, has = [], [], []
        for e in exs:
            f = self.feats.get(str(e.image_path)) if e.image_path else None
            posts.append((e.text, e.aspect, f[1][: cfg.image_words] if f else None))
            imgs.append(f[0].astype(np.float32) if f else np.zeros(cfg.image_dim, np.float32))
            has.append(1.0 if f else 0.0)
        enc = encode_pairs(self.tok, posts, cfg)
        return enc, torch.from_numpy(np.stack(imgs)), torch.tensor(has)


def classifier_logits(model, enc, imgs, has):
    """The classifier's logits for one encoded batch (:meth:`Batches.encode`)."""
    return model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), imgs, has, enc.get("target_mask"))
