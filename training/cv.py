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

from model.backends.compact.frozen import design
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
    served frozen routes use (``model.backends.compact.frozen.SentenceEncoder``)."""
    from model.backends.compact.frozen import SentenceEncoder

    return SentenceEncoder().encode(texts)


def features(dataset: str, cache: Path = DEFAULT_CACHE, image_size: int = 160) -> dict[str, np.ndarray]:
    """Frozen features of every train + dev post of ``dataset`` (cached in ``cache``)."""
    f = cache / f"{dataset}_features_{image_size}.npz"
    if f.exists():
        return dict(np.load(f))
    import torch
    from PIL import Image, ImageOps

    from model.backends.compact.vision import ImageEncoder

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
    directory ``out`` as ``classifier_<route>`` (``model.backends.compact.frozen``), with its text-only twin
    (the same head on the text blocks alone, for the chain's Conflict line)."""
    from model.backends.compact.frozen import TEXT_PARTS, save_frozen

    if name == ENSEMBLE:
        return export_ensemble(dataset, out, route, cache)
    if name == FINETUNE:
        return export_finetuned(dataset, out, route, cache)
    cand = next((c for c in candidates(dataset) if c.name == name), None)
    if cand is None:
        raise SystemExit(f"no candidate {name!r}; known: {[c.name for c in candidates(dataset)] + [FINETUNE, ENSEMBLE]}")
    F = features(dataset, cache)
    model = cand.make().fit(design(F, cand.parts), F["y"])
    text_parts = tuple(p for p in cand.parts if p in TEXT_PARTS)
    text_model = cand.make().fit(design(F, text_parts), F["y"])
    meta = {"candidate": cand.name, "fitted_on": f"{dataset} train + dev ({len(F['y'])} posts)"}
    save_frozen(out, f"classifier_{route}", cand.parts, model, text_model, meta)
    record_cv(out, route, dataset, cand.name, cache)
    return meta


# --------------------------------------------------------------------------- fine-tuned route
FINETUNE = "fine-tuned MiniLM-LoRA + image"
ENSEMBLE = "mean of fine-tuned and baseline probabilities"
TFIDF = "logreg C=1 on text + image + TF-IDF"


def tfidf_proba(texts: list[str], X, y, tr, te) -> np.ndarray:
    """Round 2's third candidate: the baseline's features beside TF-IDF of the text (word 1-2-grams
    and character 2-5-grams within word bounds, sublinear tf, min_df 2), the vocabulary fitted on
    the fold's training part; logistic regression C=1. Class probabilities on ``te``."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    vec = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
                     TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2))
    T_tr = vec.fit_transform([texts[i] for i in tr])
    T_te = vec.transform([texts[i] for i in te])
    model = logreg(1.0)().fit(hstack([csr_matrix(X[tr]), T_tr]).tocsr(), y[tr])
    return model.predict_proba(hstack([csr_matrix(X[te]), T_te]).tocsr())


def finetune_recipe(seed: int = 14, dataset: str = "mvsa_single"):
    """The fixed recipe of the fine-tuned candidate (docs/results.md, "Round 2", and "Round 3" for
    Twitter-2015): the served classifier architecture (for aspect-level posts with the aspect
    route's target pooling), 3 epochs on the fold's training part only, no assistant, no offsets."""
    from .compact.recipe import CompactRecipe

    return CompactRecipe(seed=seed, epochs=3, batch_size=32, lr=1e-3, head_lr=1e-3, weight_decay=0.01,
                         warmup=0.06, lam=0.0, calibrate=False, routes={}, specialise={},
                         classifier={"target_pool": True} if dataset == "t15" else {})


def _image_store(F: dict[str, np.ndarray], ex) -> dict[str, tuple[np.ndarray, list[str]]]:
    """The cached image features in the form the classifier's batches read (path -> feature,
    top-3 ImageNet names), built from the same ``features`` cache as the frozen heads."""
    import torch

    from model.backends.compact.vision import ImageEncoder

    rows = [i for i, e in enumerate(ex) if e.image_path is not None]
    names = ImageEncoder.top_names(torch.from_numpy(F["logits"][rows]), 3)
    return {str(ex[i].image_path): (F["image"][i], n) for i, n in zip(rows, names)}


def train_finetuned(dataset: str, train_idx=None, cache: Path = DEFAULT_CACHE, log=print):
    """The fine-tuned candidate (``finetune_recipe``) trained on the posts ``train_idx`` of
    ``dataset``'s train + dev (None: all of them); returns (model, its batches, the examples)."""
    import random

    import torch
    from transformers import AutoTokenizer

    from model.backends.compact.text import ClassifierConfig, CompactClassifier, minilm_path

    from .compact.classifier import _train_epoch, joint_optimizer
    from .compact.features import Batches

    F, ex = features(dataset, cache), _examples(dataset)
    r = finetune_recipe(dataset=dataset)
    torch.manual_seed(r.seed)
    random.seed(r.seed)
    cfg = ClassifierConfig(**r.classifier)
    train = ex if train_idx is None else [ex[i] for i in train_idx]
    batches = Batches(train, _image_store(F, ex), AutoTokenizer.from_pretrained(minilm_path()), cfg)
    model = CompactClassifier(cfg)
    opt, sched = joint_optimizer(model, r, len(train))
    for epoch in range(r.epochs):
        t0 = _train_epoch(model, None, batches, train, opt, sched, r, log, epoch, stage=f"{dataset} fine-tune")
        log({"epoch": epoch, "epoch_s": round(time.time() - t0, 1)})
    return model, batches, ex


def finetune_fold(dataset: str, fold: int, cache: Path = DEFAULT_CACHE, k: int = 5, seed: int = 0, log=print) -> Path:
    """Train round 2's fine-tuned classifier on fold ``fold``'s training part and save its class
    probabilities on the held-out part (``<cache>/<dataset>_ft_k<k>_s<seed>_f<fold>.npy``)."""
    out = cache / f"{dataset}_ft_k{k}_s{seed}_f{fold}.npy"
    if out.exists():
        return out
    from model.backends.compact.frozen import softmax

    from .compact.calibrate import evaluate_classifier

    tr, te = folds(features(dataset, cache)["y"], k, seed)[fold]
    model, batches, ex = train_finetuned(dataset, tr, cache, log)
    _, _, logits = evaluate_classifier(model, batches, [ex[i] for i in te])
    np.save(out, softmax(logits))
    return out


def run_finetune(dataset: str, cache: Path = DEFAULT_CACHE, k: int = 5, seed: int = 0) -> list[dict]:
    """Round 2: the baseline, the fine-tuned candidate, their probability mean and the TF-IDF
    candidate, on the same folds (every fold's fine-tuned probabilities must exist: ``finetune_fold``)."""
    F = features(dataset, cache)
    fl, y, average = folds(F["y"], k, seed), F["y"], AVERAGE[dataset]
    base_cand = candidates(dataset)[0]
    X = design(F, base_cand.parts)
    texts = [e.text for e in _examples(dataset)]
    acc = {n: [] for n in (base_cand.name, FINETUNE, ENSEMBLE, TFIDF)}
    f1 = {n: [] for n in acc}
    for fold, (tr, te) in enumerate(fl):
        p_base = base_cand.make().fit(X[tr], y[tr]).predict_proba(X[te])
        p_ft = np.load(cache / f"{dataset}_ft_k{k}_s{seed}_f{fold}.npy")
        p_tfidf = tfidf_proba(texts, X, y, tr, te)
        for name, p in ((base_cand.name, p_base), (FINETUNE, p_ft), (ENSEMBLE, (p_base + p_ft) / 2), (TFIDF, p_tfidf)):
            a, f = score(y[te], p.argmax(1), average)
            acc[name].append(a)
            f1[name].append(f)
    rows = [summary(n, acc[n], f1[n], average) for n in acc]
    for r in rows:
        r["beats_baseline"] = beats(r, rows[0]) if r is not rows[0] else None
    return rows


def record_cv(out: Path, route: str, dataset: str, name: str, cache: Path = DEFAULT_CACHE, k: int = 5,
              seed: int = 0) -> dict | None:
    """Write the adopted candidate's and the baseline's CV figures for ``route`` into the student's
    ``model_card.json`` (key ``cv``), from the saved CV tables of ``cache``; ``mulcot distill
    evaluate`` reports them beside its own figures. None when no table holds ``name``."""
    rows = {}
    for tag in ("cv", "ft"):
        f = cache / f"{dataset}_{tag}_k{k}_s{seed}.json"
        if f.exists():
            rows.update({r["name"]: r for r in json.loads(f.read_text())})
    if name not in rows or BASELINE.name not in rows:
        return None
    keep = ("acc_mean", "acc_std", "f1_mean", "f1_std", "acc_folds", "f1_folds", "average")
    entry = {"dataset": f"{dataset} train + dev", "k": k, "seed": seed, "adopted": name,
             "candidate": {x: rows[name][x] for x in keep}, "baseline": {x: rows[BASELINE.name][x] for x in keep},
             "rule": "docs/results.md, Selection protocol"}
    card_f = out / "model_card.json"
    card = json.loads(card_f.read_text()) if card_f.exists() else {}
    card.setdefault("cv", {})[route] = entry
    card_f.write_text(json.dumps(card, indent=2))
    return entry


def _export_finetuned(dataset: str, out: Path, route: str, name: str, members, candidate: str,
                      cache: Path = DEFAULT_CACHE, log=print) -> dict:
    """Train the fine-tuned candidate on every train + dev post of ``dataset``, save it as
    ``<name>`` in the student directory ``out``, name ``members`` for ``route`` in its
    ``student.json`` and record ``candidate``'s CV figures in its model card."""
    from .compact.export import save_classifier

    model, _, ex = train_finetuned(dataset, None, cache, log)
    save_classifier(model.eval(), model.cfg, out, name=name)
    student = json.loads((out / "student.json").read_text())
    student.setdefault("classifiers", {})[route] = members
    (out / "student.json").write_text(json.dumps(student, indent=2))
    record_cv(out, route, dataset, candidate, cache)
    return {"candidate": candidate, "fitted_on": f"{dataset} train + dev ({len(ex)} posts)", "members": members}


def export_finetuned(dataset: str, out: Path, route: str, cache: Path = DEFAULT_CACHE, log=print) -> dict:
    """The fine-tuned candidate as the route's one classifier ``classifier_<route>`` of ``out``."""
    return _export_finetuned(dataset, out, route, f"classifier_{route}", f"classifier_{route}", FINETUNE, cache, log)


def export_ensemble(dataset: str, out: Path, route: str, cache: Path = DEFAULT_CACHE, log=print) -> dict:
    """Round 2's adopted candidate into the student directory ``out``: the baseline (refitted on
    every train + dev post, ``classifier_<route>``) and the fine-tuned classifier
    (``classifier_<route>_ft``); ``student.json`` then names both for the route, whose
    probabilities the compact backend averages."""
    export(dataset, BASELINE.name, out, route, cache)
    return _export_finetuned(dataset, out, route, f"classifier_{route}_ft",
                             [f"classifier_{route}", f"classifier_{route}_ft"], ENSEMBLE, cache, log)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    import argparse
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("MULCOT_THREADS", "2")))
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("verb", choices=["features", "run", "finetune", "export"],
                    help="finetune: round 2's fine-tuned candidate, fold by fold (resumable), then its table")
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
    if a.verb == "finetune":
        for fold in range(a.k):
            finetune_fold(a.dataset, fold, a.cache, a.k, a.seed)
        rows, tag = run_finetune(a.dataset, a.cache, a.k, a.seed), "ft"
    else:
        rows, tag = run(a.dataset, a.cache, a.k, a.seed), "cv"
    print_rows(rows, a.dataset, a.k)
    out = a.cache / f"{a.dataset}_{tag}_k{a.k}_s{a.seed}.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
