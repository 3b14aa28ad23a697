"""Round 4 (issue 22): the route of text-only post-level posts, chosen by cross-validation.

A post-level post without an image is served by a frozen head on the MiniLM sentence embedding of
its text (the post route's text-only twin). This module builds the pool of texts the round-4
candidates are fitted on (MVSA-Single train + dev, and the Twitter-2015 / Twitter-2017 train + dev
tweets that carry exactly one aspect, whose label stands for the post's), cross-validates the
candidates fixed in docs/results.md ("Round 4"), scores each on our own out-of-domain check (the
single-aspect Twitter-2017 *test* tweets, class-balanced) and exports the adopted one as the post
route's text-only twin.

Folds, scores and the cross-validation half of the adoption rule are ``training/compact/select.py``'s
(``folds``, ``score``, ``beats``); what is this module's own is the pool, the out-of-domain check
and the candidates of rounds 4 and 5 (:data:`ROUNDS`).

``python -m training.compact.text_route run`` prints and saves the table
(``runs/cv/text_route_k5_s0.json``); ``... export --candidate NAME --out model/weights/default``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.types import LABELS

LABEL_INDEX = {l.value: i for i, l in enumerate(LABELS)}
CACHE = Path("runs/cv")
SOURCES = (("mvsa_single", ("train", "dev"), False), ("t15", ("train", "dev"), True),
           ("t17_text_only", ("train", "dev"), True))


@dataclass(frozen=True)
class Row:
    source: str
    text: str
    label: int


def single_aspect(examples) -> list:
    """The examples whose tweet (text + image) appears in exactly one row: one aspect, one label."""
    n = Counter((e.text, str(e.image_path)) for e in examples)
    return [e for e in examples if n[(e.text, str(e.image_path))] == 1]


def pool() -> list[Row]:
    """The round-4 pool, de-duplicated by text (first occurrence kept)."""
    from training.data import data_dir, load_examples

    rows, seen = [], set()
    for name, splits, aspect_level in SOURCES:
        ex = [e for s in splits for e in load_examples(data_dir() / name / f"{s}.jsonl")]
        for e in single_aspect(ex) if aspect_level else ex:
            if e.text not in seen and e.label is not None:
                seen.add(e.text)
                rows.append(Row(name, e.text, LABEL_INDEX[e.label.value]))
    return rows


def ood_check() -> list[Row]:
    """Our out-of-domain check: the single-aspect Twitter-2017 and Twitter-2015 test tweets, text only."""
    from training.data import data_dir, load_examples

    out = []
    for name in ("t17_text_only", "t15"):
        out += [Row(f"{name}_test", e.text, LABEL_INDEX[e.label.value])
                for e in single_aspect(load_examples(data_dir() / name / "test.jsonl"))]
    return out


def vader(texts: list[str]) -> np.ndarray:
    """VADER's neg, neu, pos and compound scores of each text."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sia = SentimentIntensityAnalyzer()
    return np.array([[s["neg"], s["neu"], s["pos"], s["compound"]] for s in map(sia.polarity_scores, texts)],
                    np.float32)


def features(rows: list[Row], tag: str, cache: Path = CACHE) -> dict[str, np.ndarray]:
    f = cache / f"text_route_{tag}.npz"
    if f.exists():
        return dict(np.load(f))
    from model.backends.compact.frozen import SentenceEncoder

    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    texts = [r.text for r in rows]
    out = {"text": SentenceEncoder().encode(texts), "vader": vader(texts), "y": np.array([r.label for r in rows]),
           "source": np.array([r.source for r in rows])}
    print(f"{tag}: {len(rows)} texts embedded in {time.time() - t0:.0f}s", file=sys.stderr)
    np.savez(f, **out)
    return out


def mpnet_features(rows: list[Row], tag: str, cache: Path = CACHE) -> np.ndarray:
    """Round 5: the all-mpnet-base-v2 sentence embedding of each row's text (cached apart)."""
    f = cache / f"text_route_{tag}_mpnet.npy"
    if f.exists():
        return np.load(f)
    from model.backends.compact.frozen import SentenceEncoder
    from model.backends.compact.text import mpnet_path

    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    out = SentenceEncoder(path=mpnet_path()).encode([r.text for r in rows], batch=32)
    print(f"{tag}: {len(rows)} texts embedded by all-mpnet-base-v2 in {time.time() - t0:.0f}s", file=sys.stderr)
    np.save(f, out)
    return out


def all_features(rows: list[Row], tag: str, cache: Path, mpnet: bool) -> dict[str, np.ndarray]:
    F = features(rows, tag, cache)
    return {**F, "mpnet": mpnet_features(rows, tag, cache)} if mpnet else F


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    parts: tuple[str, ...]
    mvsa_only: bool
    balanced: bool

    def fit(self, F: dict[str, np.ndarray], idx: np.ndarray):
        from sklearn.linear_model import LogisticRegression

        if self.mvsa_only:
            idx = idx[F["source"][idx] == "mvsa_single"]
        return LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced" if self.balanced else None).fit(
            design(F, self.parts)[idx], F["y"][idx])


def design(F: dict[str, np.ndarray], parts: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([F[p] for p in parts], 1).astype(np.float32)


CANDIDATES = {
    "base": Candidate("base", "served twin: MiniLM text, MVSA-Single rows only, no class weights", ("text",), True, False),
    "pool": Candidate("pool", "MiniLM text, whole pool, balanced class weights", ("text",), False, True),
    "pool_vader": Candidate("pool_vader", "MiniLM text + VADER, whole pool, balanced class weights",
                            ("text", "vader"), False, True),
}
#: Round 5 (docs/results.md): a larger sentence encoder, beside the served ``pool_vader``.
ROUND5 = {
    "pool_vader": CANDIDATES["pool_vader"],
    "mpnet_vader": Candidate("mpnet_vader", "all-mpnet-base-v2 text + VADER, whole pool, balanced class weights",
                             ("mpnet", "vader"), False, True),
    "both_vader": Candidate("both_vader", "MiniLM + all-mpnet-base-v2 text + VADER, whole pool, balanced class weights",
                            ("text", "mpnet", "vader"), False, True),
}
ROUNDS = {4: CANDIDATES, 5: ROUND5}


def _scores(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    from .select import score

    return score(y, pred, "macro")


def run(k: int = 5, seed: int = 0, cache: Path = CACHE, round_: int = 4) -> list[dict]:
    """Every candidate's CV figures over the pool, per-source accuracy, and its out-of-domain check
    (the candidates of round ``round_``, its baseline first)."""
    from .select import folds as cv_folds

    cands = ROUNDS[round_]
    mpnet = any("mpnet" in c.parts for c in cands.values())
    F, O = all_features(pool(), "pool", cache, mpnet), all_features(ood_check(), "ood", cache, mpnet)
    folds = cv_folds(F["y"], k, seed)  # the compact student's one fold maker (training/compact/select.py)
    rows = []
    for cand in cands.values():
        accs, f1s, per = [], [], {s: [] for s in np.unique(F["source"])}
        for tr, te in folds:
            pred = cand.fit(F, tr).predict(design(F, cand.parts)[te])
            a, f = _scores(F["y"][te], pred)
            accs.append(a)
            f1s.append(f)
            for s in per:
                m = F["source"][te] == s
                per[s].append(float((pred[m] == F["y"][te][m]).mean()))
        full = cand.fit(F, np.arange(len(F["y"])))
        oa, of = _scores(O["y"], full.predict(design(O, cand.parts)))
        rows.append({"name": cand.name, "description": cand.description,
                     "acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs, ddof=1)),
                     "f1_mean": float(np.mean(f1s)), "f1_std": float(np.std(f1s, ddof=1)),
                     "acc_folds": accs, "f1_folds": f1s, "per_source_acc": {s: float(np.mean(v)) for s, v in per.items()},
                     "ood_acc": oa, "ood_f1": of, "ood_n": int(len(O["y"]))})
    base = rows[0]
    for r in rows[1:]:
        r["passes"] = adopts(r, base)
    return rows


def adopts(cand: dict, base: dict) -> bool:
    """The round-4 rule (docs/results.md): CV beats base by more than the larger spread on accuracy
    and macro F1, and the out-of-domain macro F1 is at least 0.02 higher."""
    from .select import beats

    return beats(cand, base) and cand["ood_f1"] - base["ood_f1"] >= 0.02


def adopted(rows: list[dict]) -> str:
    passing = [r for r in rows[1:] if r.get("passes")]
    return max(passing, key=lambda r: r["f1_mean"])["name"] if passing else rows[0]["name"]


def export(name: str, out: Path, cache: Path = CACHE) -> dict:
    """Fit candidate ``name`` on the whole pool and save it as the post route's text-only head
    (``<route classifier>.text_only`` in the student directory: ``text_route.safetensors`` + json)."""
    import torch
    from safetensors.torch import save_file

    cand = CANDIDATES[name]
    F = features(pool(), "pool", cache)
    model = cand.fit(F, np.arange(len(F["y"])))
    save_file({"weight": torch.tensor(model.coef_, dtype=torch.float32).contiguous(),
               "bias": torch.tensor(model.intercept_, dtype=torch.float32).contiguous()}, str(out / "text_route.safetensors"))
    meta = {"kind": "text_route", "candidate": name, "description": cand.description, "parts": list(cand.parts),
            "fitted_on": f"round-4 pool ({len(F['y'])} texts)", "rule": "docs/results.md, Round 4"}
    (out / "text_route.json").write_text(json.dumps(meta, indent=2))
    table = cache / "text_route_k5_s0.json"
    if table.exists():  # the CV figures of the adopted candidate and of base, into the model card
        rows = {r["name"]: r for r in json.loads(table.read_text())}
        keep = ("acc_mean", "acc_std", "f1_mean", "f1_std", "acc_folds", "f1_folds", "ood_acc", "ood_f1", "ood_n")
        card_f = out / "model_card.json"
        card = json.loads(card_f.read_text()) if card_f.exists() else {}
        card.setdefault("cv", {})["text_only_posts"] = {
            "dataset": "round-4 pool (MVSA-Single train + dev, single-aspect Twitter-2015/2017 train + dev)", "k": 5,
            "seed": 0, "adopted": name, "candidate": {**{k: rows[name][k] for k in keep}, "average": "macro"},
            "baseline": {**{k: rows["base"][k] for k in keep}, "average": "macro"}, "rule": "docs/results.md, Round 4"}
        card_f.write_text(json.dumps(card, indent=2))
    return meta


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m training.compact.text_route", description=__doc__.split("\n\n")[0])
    ap.add_argument("verb", choices=["run", "export"])
    ap.add_argument("--candidate")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--round", type=int, choices=sorted(ROUNDS), default=4, help="the candidates of this round")
    a = ap.parse_args(argv)
    if a.verb == "export":
        print(export(a.candidate, a.out, a.cache))
        return
    rows = run(cache=a.cache, round_=a.round)
    for r in rows:
        print(f"{r['name']:<11} acc {100 * r['acc_mean']:.2f} +- {100 * r['acc_std']:.2f}  macro F1 {r['f1_mean']:.4f} +- "
              f"{r['f1_std']:.4f}  OOD acc {100 * r['ood_acc']:.1f} F1 {r['ood_f1']:.4f}  per source "
              f"{ {s: round(100 * v, 1) for s, v in r['per_source_acc'].items()} }  passes: {r.get('passes')}")
    print("adopted:", adopted(rows))
    f = a.cache / ("text_route_k5_s0.json" if a.round == 4 else f"text_route_r{a.round}_k5_s0.json")
    f.write_text(json.dumps(rows, indent=2))
    print(f"written {f}")


if __name__ == "__main__":
    main()
