"""Honest model selection: stratified k-fold cross-validation over train + dev.

Every candidate is scored on the same folds (``StratifiedKFold(k, shuffle=True, seed)``
over the concatenation of the train and dev files, in file order), and reported as the mean
and the spread (sample standard deviation) of its per-fold accuracy and F1 (weighted for
post-level sets, macro for aspect-level ones). The adoption rule is written in
docs/results.md ("Selection protocol"): a candidate replaces the frozen-feature baseline only
where its mean beats the baseline's by more than the fold spread, on both measures.

Frozen features are computed once per post and cached (``features``): the MiniLM sentence
embedding of the text (mean-pooled, L2-normalised, no LoRA: what all-MiniLM-L6-v2 is trained
to give), of the aspect when there is one, and the EfficientNet-Lite0 pooled feature and
ImageNet-1k logits of the image at the served size. Heads on these features train in seconds,
so every candidate head is refitted on each fold's training part.

``python -m training.cv features mvsa_single``, ``python -m training.cv run mvsa_single``, then
``python -m training.cv export mvsa_single --candidate NAME --out model/weights/default``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.compact.frozen import design
from model.types import LABELS

LABEL_INDEX = {l.value: i for i, l in enumerate(LABELS)}
SPLITS = {"mvsa_single": ("train", "dev"), "t15": ("train", "dev")}
AVERAGE = {"mvsa_single": "weighted", "t15": "macro"}
DEFAULT_CACHE = Path("runs/cv")


# --------------------------------------------------------------------------- features
def _examples(dataset: str):
    from .data import data_dir, load_examples

    out = []
    for split in SPLITS[dataset]:
        out += load_examples(data_dir() / dataset / f"{split}.jsonl")
    return out


def text_embeddings(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised), frozen: the encoder the
    served frozen routes use (``model.compact.frozen.SentenceEncoder``)."""
    from model.compact.frozen import SentenceEncoder

    return SentenceEncoder().encode(texts)


def features(dataset: str, cache: Path = DEFAULT_CACHE, image_size: int = 160) -> dict[str, np.ndarray]:
    """Frozen features of every train + dev post of ``dataset`` (cached in ``cache``)."""
    f = cache / f"{dataset}_features_{image_size}.npz"
    if f.exists():
        return dict(np.load(f))
    import torch
    from PIL import Image, ImageOps

    from model.compact.vision import ImageEncoder

    cache.mkdir(parents=True, exist_ok=True)
    ex = _examples(dataset)
    t0 = time.time()
    text = text_embeddings([e.text for e in ex])
    aspect = text_embeddings([e.aspect or "" for e in ex]) if any(e.aspect for e in ex) else np.zeros((len(ex), 0), np.float32)
    print(f"text embeddings: {len(ex)} posts in {time.time() - t0:.0f}s", file=sys.stderr)
    enc = ImageEncoder(size=image_size)
    feats = np.zeros((len(ex), 1280), np.float32)
    logits = np.zeros((len(ex), 1000), np.float32)
    has = np.zeros(len(ex), np.float32)
    rows = [i for i, e in enumerate(ex) if e.image_path is not None]
    t0 = time.time()
    for s in range(0, len(rows), 32):
        idx = rows[s:s + 32]
        ims = []
        for i in idx:
            with Image.open(ex[i].image_path) as im:
                ims.append(ImageOps.exif_transpose(im).convert("RGB"))
        with torch.inference_mode():
            ft, lg = enc.encode(ims)
        feats[idx], logits[idx], has[idx] = ft.numpy(), lg.numpy(), 1.0
    print(f"image features: {len(rows)} images in {time.time() - t0:.0f}s", file=sys.stderr)
    out = {
        "ids": np.array([e.id for e in ex]), "y": np.array([LABEL_INDEX[e.label.value] for e in ex]),
        "text": text, "aspect": aspect, "image": feats, "logits": logits, "has_image": has,
    }
    np.savez(f, **out)
    return out


def folds(y: np.ndarray, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same stratified folds for every candidate: (train indices, held-out indices)."""
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


# --------------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    """A frozen-feature head: which feature blocks, and how to build the sklearn model."""

    name: str
    parts: tuple[str, ...]
    make: Callable[[], object]


def logreg(C: float = 1.0):
    from sklearn.linear_model import LogisticRegression

    return lambda: LogisticRegression(C=C, max_iter=3000)


def mlp(hidden: int = 256, alpha: float = 1e-3, seed: int = 0):
    from sklearn.neural_network import MLPClassifier

    return lambda: MLPClassifier(hidden_layer_sizes=(hidden,), alpha=alpha, early_stopping=True,
                                 validation_fraction=0.1, max_iter=300, random_state=seed)


BASELINE = Candidate("baseline: logreg C=1 on text + image", ("text", "image"), logreg(1.0))


def candidates(dataset: str) -> list[Candidate]:
    base = ("text", "aspect", "image") if dataset == "t15" else ("text", "image")
    b = Candidate(BASELINE.name, base, logreg(1.0))
    return [
        b,
        Candidate("logreg C=1 on text only", ("text",) + (("aspect",) if dataset == "t15" else ()), logreg(1.0)),
        Candidate("logreg C=0.3 on text + image", base, logreg(0.3)),
        Candidate("logreg C=3 on text + image", base, logreg(3.0)),
        Candidate("logreg C=1 on text + image + ImageNet probs", base + ("imagenet",), logreg(1.0)),
        Candidate("MLP 256 on text + image", base, mlp(256)),
        Candidate("MLP 256 on text + image + ImageNet probs", base + ("imagenet",), mlp(256)),
    ]


def score(y: np.ndarray, pred: np.ndarray, average: str) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    return float((pred == y).mean()), float(f1_score(y, pred, average=average))


def cross_validate(cand: Candidate, F: dict[str, np.ndarray], fold_list, average: str) -> dict:
    X, y = design(F, cand.parts), F["y"]
    accs, f1s = [], []
    for tr, te in fold_list:
        model = cand.make().fit(X[tr], y[tr])
        a, f = score(y[te], model.predict(X[te]), average)
        accs.append(a)
        f1s.append(f)
    return summary(cand.name, accs, f1s, average)


def summary(name: str, accs: list[float], f1s: list[float], average: str) -> dict:
    return {
        "name": name, "average": average,
        "acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs, ddof=1)),
        "f1_mean": float(np.mean(f1s)), "f1_std": float(np.std(f1s, ddof=1)),
        "acc_folds": accs, "f1_folds": f1s,
    }


def beats(cand: dict, base: dict) -> bool:
    """The adoption rule (docs/results.md): the candidate's CV mean is above the baseline's by
    more than the larger of the two fold spreads, for accuracy and for F1."""
    return all(
        cand[f"{m}_mean"] - base[f"{m}_mean"] > max(cand[f"{m}_std"], base[f"{m}_std"]) for m in ("acc", "f1")
    )


def run(dataset: str, cache: Path = DEFAULT_CACHE, k: int = 5, seed: int = 0) -> list[dict]:
    F = features(dataset, cache)
    fl = folds(F["y"], k, seed)
    rows = []
    for cand in candidates(dataset):
        t0 = time.time()
        r = cross_validate(cand, F, fl, AVERAGE[dataset])
        r["seconds"] = round(time.time() - t0, 1)
        rows.append(r)
    base = rows[0]
    for r in rows:
        r["beats_baseline"] = beats(r, base) if r is not base else None
    return rows


def print_rows(rows: list[dict], dataset: str, k: int) -> None:
    print(f"{dataset}: {k}-fold CV over train + dev (mean +- sample std across folds)")
    for r in rows:
        print(f"  {r['name']:<48} acc {100 * r['acc_mean']:.2f} +- {100 * r['acc_std']:.2f}   "
              f"{r['average']} F1 {r['f1_mean']:.4f} +- {r['f1_std']:.4f}   beats baseline: {r['beats_baseline']}")


def export(dataset: str, name: str, out: Path, route: str, cache: Path = DEFAULT_CACHE) -> dict:
    """Fit candidate ``name`` on every train + dev post of ``dataset`` and save it into the student
    directory ``out`` as ``classifier_<route>`` (``model.compact.frozen``), with its text-only twin
    (the same head on the text blocks alone, for the chain's Conflict line)."""
    from model.compact.frozen import TEXT_PARTS, save_frozen

    cand = next((c for c in candidates(dataset) if c.name == name), None)
    if cand is None:
        raise SystemExit(f"no candidate {name!r}; known: {[c.name for c in candidates(dataset)]}")
    F = features(dataset, cache)
    model = cand.make().fit(design(F, cand.parts), F["y"])
    text_parts = tuple(p for p in cand.parts if p in TEXT_PARTS)
    text_model = cand.make().fit(design(F, text_parts), F["y"])
    meta = {"candidate": cand.name, "fitted_on": f"{dataset} train + dev ({len(F['y'])} posts)"}
    save_frozen(out, f"classifier_{route}", cand.parts, model, text_model, meta)
    return meta


def main(argv: list[str] | None = None) -> None:
    import argparse
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("MULCOT_THREADS", "2")))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("verb", choices=["features", "run", "export"])
    ap.add_argument("dataset", choices=sorted(SPLITS))
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidate", help="export: the candidate's name (as `run` prints it)")
    ap.add_argument("--out", type=Path, help="export: the student directory")
    ap.add_argument("--route", default="post", help="export: the route (classifier_<route>)")
    a = ap.parse_args(argv)
    if a.verb == "export":
        print(export(a.dataset, a.candidate, a.out, a.route, a.cache))
        return
    if a.verb == "features":
        F = features(a.dataset, a.cache)
        print({k: v.shape for k, v in F.items()})
        return
    rows = run(a.dataset, a.cache, a.k, a.seed)
    print_rows(rows, a.dataset, a.k)
    out = a.cache / f"{a.dataset}_cv_k{a.k}_s{a.seed}.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
