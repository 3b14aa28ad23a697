"""Honest model selection for the compact student: stratified k-fold cross-validation over
train + dev.

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

The candidates live in one registry, :data:`CANDIDATES` (short name -> :class:`Candidate`):
the short name is what ``--candidate`` takes; the description is the long name the CV tables,
docs/results.md and the model cards quote (accepted on the command line too); the function
fits on one :class:`Fold`'s training part and returns class probabilities on its held-out
part. A candidate sits in one or more tables, always beside the baseline: ``cv`` (``run``:
round 1's frozen-feature heads, seconds each) and ``ft`` (``finetune``: round 2's fine-tuned
classifier per fold, its mean with the baseline, TF-IDF). Adding a candidate is one
:func:`register` call; ``export`` is optional (a candidate without it is scored only).

``python -m training.compact.select features mvsa_single``, ``... run mvsa_single``, then
``... export mvsa_single --candidate NAME --out model/weights/default`` (``mulcot distill cv``
is the same command).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import click
import numpy as np
from pydantic import Field

from model.types import LABELS

from ..options import Options
from ..recipe import StrictModel

LABEL_INDEX = {l.value: i for i, l in enumerate(LABELS)}
DEFAULT_CACHE = Path("runs/cv")


@dataclass(frozen=True)
class DataSet:
    """A data set selection runs on: its files (concatenated in this order), the F1 average it
    is scored with, and whether its posts have an aspect (then heads also see the aspect)."""

    splits: tuple[str, ...]
    average: str
    aspects: bool


DATASETS = {"mvsa_single": DataSet(("train", "dev"), "weighted", False),
            "t15": DataSet(("train", "dev"), "macro", True)}


# --------------------------------------------------------------------------- features
def examples(dataset: str):
    """Every train + dev post of ``dataset``, in file order (the order of the features' rows)."""
    from ..data import data_dir, load_examples

    out = []
    for split in DATASETS[dataset].splits:
        out += load_examples(data_dir() / dataset / f"{split}.jsonl")
    return out


def text_embeddings(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised), frozen: the encoder the
    served frozen routes use (``model.backends.compact.frozen.SentenceEncoder``)."""
    from model.backends.compact.frozen import SentenceEncoder

    return SentenceEncoder().encode(texts)


def _image_features(ex, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EfficientNet-Lite0 pooled features, ImageNet-1k logits and the has-image flag of ``ex``."""
    import torch
    from PIL import Image, ImageOps

    from model.backends.compact.vision import ImageEncoder

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
    return feats, logits, has


def features(dataset: str, cache: Path = DEFAULT_CACHE, image_size: int = 160) -> dict[str, np.ndarray]:
    """Frozen features of every train + dev post of ``dataset`` (cached in ``cache``)."""
    f = cache / f"{dataset}_features_{image_size}.npz"
    if f.exists():
        return dict(np.load(f))
    cache.mkdir(parents=True, exist_ok=True)
    ex = examples(dataset)
    t0 = time.time()
    text = text_embeddings([e.text for e in ex])
    aspect = text_embeddings([e.aspect or "" for e in ex]) if any(e.aspect for e in ex) else np.zeros((len(ex), 0), np.float32)
    print(f"text embeddings: {len(ex)} posts in {time.time() - t0:.0f}s", file=sys.stderr)
    feats, logits, has = _image_features(ex, image_size)
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


@dataclass
class Fold:
    """One fold of a data set as a candidate sees it: the cached frozen features ``F`` of every
    train + dev post, the indices of the fold's training and held-out parts, and what names
    the fold's by-products in the cache (``index``, ``k``, ``seed``)."""

    dataset: str
    F: dict[str, np.ndarray]
    train: np.ndarray
    test: np.ndarray
    index: int = 0
    cache: Path = DEFAULT_CACHE
    k: int = 5
    seed: int = 0

    @property
    def y(self) -> np.ndarray:
        return self.F["y"]

    @cached_property
    def texts(self) -> list[str]:
        """The posts' texts, in the features' order."""
        return [e.text for e in examples(self.dataset)]


# --------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """One registered candidate.

    ``name``: the short name (``--candidate``); ``description``: the long name of the tables and
    model cards; ``proba(fold)``: fit on ``fold.train``, class probabilities on ``fold.test``;
    ``tables``: which CV tables score it; ``export(candidate, dataset, out, route, cache)``: how it
    becomes a route of a student directory (None: scored only).
    """

    name: str
    description: str
    proba: Callable[[Fold], np.ndarray]
    tables: tuple[str, ...] = ("cv",)
    export: Callable[..., dict] | None = None


#: short name -> candidate, in registration order (the baseline first: every table's first row).
CANDIDATES: dict[str, Candidate] = {}


def register(name: str, description: str, proba: Callable[[Fold], np.ndarray], *,
             tables: tuple[str, ...] = ("cv",), export: Callable[..., dict] | None = None) -> Candidate:
    """Add a candidate to :data:`CANDIDATES` (names and descriptions must be new)."""
    if name in CANDIDATES or any(c.description == description for c in CANDIDATES.values()):
        raise ValueError(f"candidate {name!r} / {description!r} is registered already")
    CANDIDATES[name] = cand = Candidate(name, description, proba, tuple(tables), export)
    return cand


def resolve(name: str) -> Candidate:
    """The candidate a short name or a description names; ValueError listing them otherwise."""
    if name in CANDIDATES:
        return CANDIDATES[name]
    for c in CANDIDATES.values():
        if c.description == name:
            return c
    known = "; ".join(f"{c.name} ({c.description})" for c in CANDIDATES.values())
    raise ValueError(f"no candidate {name!r}; known: {known}")


def table(name: str) -> list[Candidate]:
    """The candidates of CV table ``name`` (``cv`` or ``ft``), the baseline first."""
    return [c for c in CANDIDATES.values() if name in c.tables]


def logreg(C: float = 1.0) -> Callable[[], object]:
    """A maker of scikit-learn's logistic regression (imported when it is first made)."""

    def make():
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=3000)

    return make


def mlp(hidden: int = 256, alpha: float = 1e-3, seed: int = 0) -> Callable[[], object]:
    """A maker of scikit-learn's MLP classifier with early stopping."""

    def make():
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(hidden_layer_sizes=(hidden,), alpha=alpha, early_stopping=True, validation_fraction=0.1,
                             max_iter=300, random_state=seed)

    return make


@dataclass(frozen=True)
class FrozenHead:
    """A head on frozen feature blocks (``model.backends.compact.frozen.design``): the blocks (``aspect``
    only on aspect-level sets) and the sklearn model, refitted on each fold."""

    blocks: tuple[str, ...]
    make: Callable[[], object]

    def parts(self, dataset: str) -> tuple[str, ...]:
        return tuple(b for b in self.blocks if b != "aspect" or DATASETS[dataset].aspects)

    def fit(self, F: dict[str, np.ndarray], parts: tuple[str, ...]):
        """The head fitted on every post of ``F``."""
        from model.backends.compact.frozen import design

        return self.make().fit(design(F, parts), F["y"])

    def __call__(self, fold: Fold) -> np.ndarray:
        from model.backends.compact.frozen import design

        X = design(fold.F, self.parts(fold.dataset))
        return self.make().fit(X[fold.train], fold.y[fold.train]).predict_proba(X[fold.test])


def score(y: np.ndarray, pred: np.ndarray, average: str) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    return float((pred == y).mean()), float(f1_score(y, pred, average=average))


def summary(cand: Candidate, accs: list[float], f1s: list[float], average: str) -> dict:
    return {
        "name": cand.description, "candidate": cand.name, "average": average,
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


def cross_validate(cand: Candidate, folds_: list[Fold]) -> dict:
    """``cand`` scored on every fold (its probabilities' argmax against the gold labels)."""
    average = DATASETS[folds_[0].dataset].average
    accs, f1s = [], []
    for fold in folds_:
        a, f = score(fold.y[fold.test], cand.proba(fold).argmax(1), average)
        accs.append(a)
        f1s.append(f)
    return summary(cand, accs, f1s, average)


def run(dataset: str, cache: Path = DEFAULT_CACHE, k: int = 5, seed: int = 0, table_name: str = "cv") -> list[dict]:
    """The rows of CV table ``table_name`` on ``dataset``: one per candidate, the baseline first,
    each with ``beats_baseline`` (None for the baseline)."""
    F = features(dataset, cache)
    fl = [Fold(dataset, F, tr, te, i, cache, k, seed) for i, (tr, te) in enumerate(folds(F["y"], k, seed))]
    rows = []
    for cand in table(table_name):
        t0 = time.time()
        r = cross_validate(cand, fl)
        r["seconds"] = round(time.time() - t0, 1)
        rows.append(r)
    base = rows[0]
    for r in rows:
        r["beats_baseline"] = beats(r, base) if r is not base else None
    return rows


def print_rows(rows: list[dict], dataset: str, k: int) -> None:
    print(f"{dataset}: {k}-fold CV over train + dev (mean +- sample std across folds)")
    for r in rows:
        print(f"  {r.get('candidate', ''):<16} {r['name']:<48} acc {100 * r['acc_mean']:.2f} +- {100 * r['acc_std']:.2f}   "
              f"{r['average']} F1 {r['f1_mean']:.4f} +- {r['f1_std']:.4f}   beats baseline: {r['beats_baseline']}")


# --------------------------------------------------------------------------- round 2: fine-tuned, TF-IDF
def tfidf_proba(fold: Fold) -> np.ndarray:
    """Round 2's third candidate: the baseline's features beside TF-IDF of the text (word 1-2-grams
    and character 2-5-grams within word bounds, sublinear tf, min_df 2), the vocabulary fitted on
    the fold's training part; logistic regression C=1. Class probabilities on the held-out part."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    from model.backends.compact.frozen import design

    X, y, tr, te, texts = design(fold.F, BASELINE.parts(fold.dataset)), fold.y, fold.train, fold.test, fold.texts
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
    from .recipe import CompactRecipe

    return CompactRecipe(seed=seed, epochs=3, batch_size=32, lr=1e-3, head_lr=1e-3, weight_decay=0.01,
                         warmup=0.06, lam=0.0, calibrate=False, routes={}, specialise={},
                         classifier={"target_pool": True} if DATASETS[dataset].aspects else {})


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

    from .classifier import joint_optimizer, train_epoch
    from .features import Batches

    F, ex = features(dataset, cache), examples(dataset)
    r = finetune_recipe(dataset=dataset)
    torch.manual_seed(r.seed)
    random.seed(r.seed)
    cfg = ClassifierConfig(**r.classifier)
    train = ex if train_idx is None else [ex[i] for i in train_idx]
    batches = Batches(train, _image_store(F, ex), AutoTokenizer.from_pretrained(minilm_path()), cfg)
    model = CompactClassifier(cfg)
    opt, sched = joint_optimizer(model, r, len(train))
    for epoch in range(r.epochs):
        t0 = train_epoch(model, None, batches, train, opt, sched, r, log, epoch, stage=f"{dataset} fine-tune")
        log({"epoch": epoch, "epoch_s": round(time.time() - t0, 1)})
    return model, batches, ex


def finetune_fold(fold: Fold, log=print) -> Path:
    """Train round 2's fine-tuned classifier on ``fold``'s training part and save its class
    probabilities on the held-out part (``<cache>/<dataset>_ft_k<k>_s<seed>_f<index>.npy``;
    kept, so that a rerun resumes)."""
    out = fold.cache / f"{fold.dataset}_ft_k{fold.k}_s{fold.seed}_f{fold.index}.npy"
    if out.exists():
        return out
    from model.backends.compact.frozen import softmax

    from .calibrate import evaluate_classifier

    model, batches, ex = train_finetuned(fold.dataset, fold.train, fold.cache, log)
    _, _, logits = evaluate_classifier(model, batches, [ex[i] for i in fold.test])
    np.save(out, softmax(logits))
    return out


def finetuned_proba(fold: Fold) -> np.ndarray:
    """Round 2's first candidate: the fine-tuned classifier of this fold (trained on first use)."""
    return np.load(finetune_fold(fold))


def mean_proba(fold: Fold) -> np.ndarray:
    """Round 2's second candidate: the mean of the baseline's and the fine-tuned classifier's
    class probabilities."""
    return (BASELINE(fold) + finetuned_proba(fold)) / 2


# --------------------------------------------------------------------------- export
def record_cv(out: Path, route: str, dataset: str, name: str, cache: Path = DEFAULT_CACHE, k: int = 5,
              seed: int = 0) -> dict | None:
    """Write the adopted candidate's (its description ``name``) and the baseline's CV figures for
    ``route`` into the student's ``model_card.json`` (key ``cv``), from the saved CV tables of
    ``cache``; ``mulcot distill evaluate`` reports them beside its own figures. None when no table
    holds ``name``."""
    rows = {}
    for tag in ("cv", "ft"):
        f = cache / f"{dataset}_{tag}_k{k}_s{seed}.json"
        if f.exists():
            rows.update({r["name"]: r for r in json.loads(f.read_text())})
    base = CANDIDATES["baseline"].description
    if name not in rows or base not in rows:
        return None
    keep = ("acc_mean", "acc_std", "f1_mean", "f1_std", "acc_folds", "f1_folds", "average")
    entry = {"dataset": f"{dataset} train + dev", "k": k, "seed": seed, "adopted": name,
             "candidate": {x: rows[name][x] for x in keep}, "baseline": {x: rows[base][x] for x in keep},
             "rule": "docs/results.md, Selection protocol"}
    card_f = out / "model_card.json"
    card = json.loads(card_f.read_text()) if card_f.exists() else {}
    card.setdefault("cv", {})[route] = entry
    card_f.write_text(json.dumps(card, indent=2))
    return entry


def export_frozen(cand: Candidate, dataset: str, out: Path, route: str, cache: Path = DEFAULT_CACHE) -> dict:
    """A frozen head fitted on every train + dev post of ``dataset``, saved into the student
    directory ``out`` as ``classifier_<route>`` (``model.backends.compact.frozen``), with its text-only
    twin (the same head on the text blocks alone, for the chain's Conflict line)."""
    from model.backends.compact.frozen import TEXT_PARTS, save_frozen

    head, F = cand.proba, features(dataset, cache)
    parts = head.parts(dataset)
    model = head.fit(F, parts)
    text_model = head.fit(F, tuple(p for p in parts if p in TEXT_PARTS))
    meta = {"candidate": cand.description, "fitted_on": f"{dataset} train + dev ({len(F['y'])} posts)"}
    save_frozen(out, f"classifier_{route}", parts, model, text_model, meta)
    record_cv(out, route, dataset, cand.description, cache)
    return meta


def _export_finetuned(dataset: str, out: Path, route: str, name: str, members, candidate: str,
                      cache: Path = DEFAULT_CACHE, log=print) -> dict:
    """Train the fine-tuned candidate on every train + dev post of ``dataset``, save it as
    ``<name>`` in the student directory ``out``, name ``members`` for ``route`` in its
    ``student.json`` and record ``candidate``'s CV figures in its model card."""
    from .export import save_classifier

    model, _, ex = train_finetuned(dataset, None, cache, log)
    save_classifier(model.eval(), model.cfg, out, name=name)
    student = json.loads((out / "student.json").read_text())
    student.setdefault("classifiers", {})[route] = members
    (out / "student.json").write_text(json.dumps(student, indent=2))
    record_cv(out, route, dataset, candidate, cache)
    return {"candidate": candidate, "fitted_on": f"{dataset} train + dev ({len(ex)} posts)", "members": members}


def export_finetuned(cand: Candidate, dataset: str, out: Path, route: str, cache: Path = DEFAULT_CACHE) -> dict:
    """The fine-tuned candidate as the route's one classifier ``classifier_<route>`` of ``out``."""
    name = f"classifier_{route}"
    return _export_finetuned(dataset, out, route, name, name, cand.description, cache)


def export_ensemble(cand: Candidate, dataset: str, out: Path, route: str, cache: Path = DEFAULT_CACHE) -> dict:
    """Round 2's adopted candidate into the student directory ``out``: the baseline (refitted on
    every train + dev post, ``classifier_<route>``) and the fine-tuned classifier
    (``classifier_<route>_ft``); ``student.json`` then names both for the route, whose
    probabilities the compact backend averages."""
    export_frozen(CANDIDATES["baseline"], dataset, out, route, cache)
    return _export_finetuned(dataset, out, route, f"classifier_{route}_ft",
                             [f"classifier_{route}", f"classifier_{route}_ft"], cand.description, cache)


def export(dataset: str, name: str, out: Path, route: str, cache: Path = DEFAULT_CACHE) -> dict:
    """Fit candidate ``name`` (short name or description) on every train + dev post of
    ``dataset`` and save it into the student directory ``out`` as the classifier of ``route``."""
    cand = resolve(name)
    if cand.export is None:
        raise ValueError(f"{cand.name} ({cand.description}) is scored only; it has no export")
    return cand.export(cand, dataset, out, route, cache)


# --------------------------------------------------------------------------- the registry
#: Every table's first row, and the other heads' feature blocks.
BASELINE = FrozenHead(("text", "aspect", "image"), logreg(1.0))
_IMAGENET = ("text", "aspect", "image", "imagenet")

register("baseline", "baseline: logreg C=1 on text + image", BASELINE, tables=("cv", "ft"), export=export_frozen)
register("text-only", "logreg C=1 on text only", FrozenHead(("text", "aspect"), logreg(1.0)), export=export_frozen)
register("logreg-c0.3", "logreg C=0.3 on text + image", FrozenHead(BASELINE.blocks, logreg(0.3)), export=export_frozen)
register("logreg-c3", "logreg C=3 on text + image", FrozenHead(BASELINE.blocks, logreg(3.0)), export=export_frozen)
register("imagenet", "logreg C=1 on text + image + ImageNet probs", FrozenHead(_IMAGENET, logreg(1.0)),
         export=export_frozen)
register("mlp", "MLP 256 on text + image", FrozenHead(BASELINE.blocks, mlp(256)), export=export_frozen)
register("mlp-imagenet", "MLP 256 on text + image + ImageNet probs", FrozenHead(_IMAGENET, mlp(256)),
         export=export_frozen)
register("finetune", "fine-tuned MiniLM-LoRA + image", finetuned_proba, tables=("ft",), export=export_finetuned)
register("mean", "mean of fine-tuned and baseline probabilities", mean_proba, tables=("ft",), export=export_ensemble)
register("tfidf", "logreg C=1 on text + image + TF-IDF", tfidf_proba, tables=("ft",))


# --------------------------------------------------------------------------- command line
class DataArgs(StrictModel):
    dataset: Literal[tuple(DATASETS)] = Field(description="The data set (its train + dev files).")
    cache: Path = Field(DEFAULT_CACHE, description="Where the features, the fold probabilities and the tables are kept.")


class TableArgs(DataArgs):
    k: int = Field(5, ge=2, description="Number of folds.")
    seed: int = Field(0, description="Seed of the fold split.")


class ExportArgs(DataArgs):
    candidate: str = Field(description="The candidate: its short name (" + ", ".join(CANDIDATES) + ") or its "
                                       "description, as `run` prints both.")
    out: Path = Field(description="The student directory.")
    route: str = Field("post", description="The route (classifier_<route>).")


_DATA, _TABLE, _EXPORT = (Options(m, arguments=["dataset"]) for m in (DataArgs, TableArgs, ExportArgs))


def _threads() -> None:
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("MULCOT_THREADS", "2")))


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             help="The compact student's model selection by stratified k-fold CV over train + dev "
                  "(`mulcot distill cv` = `python -m training.compact.select`): features, then the tables "
                  "(run, finetune), then export of the adopted candidate. Candidates: "
                  + "; ".join(f"{c.name} ({c.description})" for c in CANDIDATES.values()) + ".")
def cv() -> None:
    pass


@cv.command("features", help="Compute (once; then read from CACHE) the frozen features of DATASET's train + dev posts.")
@_DATA
def features_cmd(**kw) -> None:
    a = _DATA.build(kw)
    _threads()
    print({k: v.shape for k, v in features(a.dataset, a.cache).items()})


def _table(kw: dict, tag: str) -> None:
    a = _TABLE.build(kw)
    _threads()
    rows = run(a.dataset, a.cache, a.k, a.seed, tag)
    print_rows(rows, a.dataset, a.k)
    out = a.cache / f"{a.dataset}_{tag}_k{a.k}_s{a.seed}.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"written {out}")


@cv.command("run", help="Round 1's table: the frozen-feature heads beside the baseline, on the same folds "
                        "(written to CACHE/DATASET_cv_k<k>_s<seed>.json).")
@_TABLE
def run_cmd(**kw) -> None:
    _table(kw, "cv")


@cv.command("finetune", help="Round 2's table: the fine-tuned candidate, trained fold by fold (resumable: the fold "
                             "probabilities stay in CACHE), its mean with the baseline, and TF-IDF "
                             "(CACHE/DATASET_ft_k<k>_s<seed>.json).")
@_TABLE
def finetune_cmd(**kw) -> None:
    _table(kw, "ft")


@cv.command("export", help="Fit CANDIDATE on every train + dev post of DATASET and save it as the route's "
                           "classifier in the student directory OUT; its CV figures go into OUT's model card.")
@_EXPORT
def export_cmd(**kw) -> None:
    a = _EXPORT.build(kw)
    try:
        cand = resolve(a.candidate)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--candidate") from None
    if cand.export is None:
        raise click.BadParameter(f"{cand.name} ({cand.description}) is scored only; it has no export",
                                 param_hint="--candidate")
    _threads()
    print(export(a.dataset, a.candidate, a.out, a.route, a.cache))


if __name__ == "__main__":
    cv()
