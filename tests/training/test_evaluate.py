"""training.evaluate and training.textmetrics: metric values on controlled students."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from model import LABELS, BaseStudent, Label, PostInput, Prediction, parse_chain
from model.types import probabilities_dict
from training.data import load_examples
from training.evaluate import evaluate, plot_loss_curves
from training.textmetrics import bleu4, distinct_n, rouge_l, rouge_l_pair, tokenize


class ScriptedStudent(BaseStudent):
    """Returns a fixed label per post id and a chain written in the teacher's format."""

    name = "scripted"

    def __init__(self, answers: dict[str, str], raw_override: dict[str, str] | None = None):
        self.answers = answers
        self.raw_override = raw_override or {}

    def classify(self, batch: Sequence[PostInput]) -> list[Prediction]:
        out = []
        for p in batch:
            lab = Label.parse(self.answers[p.id])
            out.append(Prediction(label=lab, probabilities=probabilities_dict([0.9 if l is lab else 0.05 for l in LABELS])))
        return out

    def explain(self, batch, predictions):
        out = []
        for p, pred in zip(batch, predictions):
            raw = self.raw_override.get(p.id) or (
                f'"Text_analysis": "about {p.aspect}"\n"Image_analysis": "an image"\n'
                f'"Conflict_resolution": "none"\n"Final_conclusion": "it is {pred.label.value}"\n'
                f'"Prediction": {pred.label.value}'
            )
            chain = parse_chain(raw).with_prediction(pred.label)
            out.append(Prediction(**{**pred.__dict__, "chain": chain}))
        return out


def test_textmetrics_hand_computed():
    assert tokenize("Hello, World!") == ["hello", ",", "world", "!"]
    assert bleu4(["a b c d e"], ["a b c d e"]) == pytest.approx(1.0)
    assert bleu4(["a b c"], ["x y z"]) == 0.0
    # hyp "a b c d e f" vs ref "a b c d e g": p1=5/6 p2=4/5 p3=3/4 p4=2/3, equal length -> BP 1
    expected = math.exp((math.log(5 / 6) + math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3)) / 4)
    assert bleu4(["a b c d e f"], ["a b c d e g"]) == pytest.approx(expected)
    # brevity penalty: hyp 4 tokens, ref 8 tokens
    assert bleu4(["a b c d"], ["a b c d e f g h"]) == pytest.approx(math.exp(1 - 8 / 4))
    # LCS("a b c d", "a c d e") = 3 -> P = R = 3/4
    assert rouge_l_pair("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l(["a b", "x"], ["a b", "y"]) == pytest.approx(0.5)
    assert distinct_n(["a a a", "a b"], 1) == pytest.approx(2 / 5)
    assert distinct_n(["a a a", "a b"], 2) == pytest.approx(2 / 3)


def test_evaluate_metrics_on_scripted_student(synthetic_jsonl: Path, tmp_path: Path):
    examples = load_examples(synthetic_jsonl)
    answers = {ex.id: ex.label.value for ex in examples}
    # make 3 mistakes: two neutrals called positive, one negative called neutral
    wrong = [ex for ex in examples if ex.label is Label.NEUTRAL][:2] + [ex for ex in examples if ex.label is Label.NEGATIVE][:1]
    answers[wrong[0].id] = "positive"
    answers[wrong[1].id] = "positive"
    answers[wrong[2].id] = "neutral"
    # one chain written without the Prediction field and an opposite conclusion: unparsed + disagreeing
    broken = examples[0].id
    raw = {broken: '"Text_analysis": "x"\n"Final_conclusion": "clearly negative"'}
    report = evaluate(ScriptedStudent(answers, raw), examples, out_dir=tmp_path / "out", batch_size=5,
                      embeddings=False)
    assert report["n"] == 12
    assert report["accuracy"] == pytest.approx(9 / 12)
    # gold rows/pred cols in (positive, neutral, negative) order: 4 pos, 4 neu (2->pos), 4 neg (1->neu)
    assert report["confusion"] == [[4, 0, 0], [2, 2, 0], [0, 1, 3]]
    from sklearn.metrics import f1_score

    gold = [ex.label.value for ex in examples]
    pred = [answers[ex.id] for ex in examples]
    assert report["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    assert report["weighted_f1"] == pytest.approx(f1_score(gold, pred, average="weighted"))
    assert examples[0].label is Label.POSITIVE
    assert report["chain_parse_rate"] == pytest.approx(11 / 12)
    assert report["label_chain_agreement"] == pytest.approx(11 / 12)
    assert 0 < report["bleu4"] < 1 and 0 < report["rouge_l"] < 1
    assert 0 < report["distinct_1"] <= 1 and 0 < report["distinct_2"] <= 1
    assert report["n_with_teacher"] == 12
    assert report["posts_per_s"] > 0

    out = tmp_path / "out"
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("n", "accuracy", "weighted_f1", "macro_f1", "confusion", "chain_parse_rate",
                "label_chain_agreement", "posts_per_s", "bleu4", "rouge_l", "distinct_1", "distinct_2"):
        assert key in on_disk
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and sum(r["correct"] for r in rows) == 9
    # chain keys spelt as in the stream's results (stream.protocol)
    assert list(rows[0]["chain"]) == ["text_analysis", "image_analysis", "conflict_resolution", "final_conclusion",
                                      "prediction"]
    png = (out / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_evaluate_noop_label_only_and_limit(synthetic_jsonl: Path):
    report = evaluate("noop", load_examples(synthetic_jsonl), chain=False, limit=5)
    assert report["n"] == 5
    assert report["chain_parse_rate"] is None and "bleu4" not in report
    assert sum(map(sum, report["confusion"])) == 5


def test_embedding_cosine_minilm():
    from training.textmetrics import MiniLMEmbedder, embedding_cosine

    emb = MiniLMEmbedder()
    same = embedding_cosine(["The image shows a happy crowd."], ["The image shows a happy crowd."], emb)
    close = embedding_cosine(["The picture shows a cheerful crowd."], ["The image shows a happy crowd."], emb)
    far = embedding_cosine(["Quarterly tax filing deadlines for corporations."], ["The image shows a happy crowd."], emb)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert far < close < same


def test_loss_curve_plot(tmp_path: Path):
    log = tmp_path / "log.jsonl"
    rows = [{"kind": "train", "stage": "student", "step": i, "loss": 2 - i * 0.1, "ce": 1.5, "kl": 0.5} for i in range(10)]
    rows += [{"kind": "dev", "stage": "student", "epoch": e, "dev_accuracy": 0.5 + e / 10, "dev_f1": 0.4} for e in range(3)]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_loss_curves(log, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.data
def test_evaluate_real_posts_noop(data_dir: Path, tmp_path: Path):
    """A few real Twitter-2015 dev posts with teacher chains, through the model-free student."""
    examples = load_examples(data_dir / "t15" / "dev.jsonl", limit=6)
    report = evaluate("noop", examples, out_dir=tmp_path, embeddings=False)
    assert report["n"] == 6 and report["n_with_teacher"] == 6
    assert report["chain_parse_rate"] == 1.0 and report["label_chain_agreement"] == 1.0
    assert 0 <= report["bleu4"] < 0.2  # placeholder chains share little with the teacher's


def test_bit_parallel_lcs_matches_dynamic_programming():
    import random

    from training.textmetrics import _lcs, _lcs_dp

    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 80))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 80))]
        assert _lcs(a, b) == _lcs_dp(a, b)


def test_bootstrap_intervals_match_sklearn_on_each_resample():
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    from training.evaluate import LABEL_NAMES, bootstrap_ci

    rng = np.random.default_rng(7)
    gold = list(rng.choice(LABEL_NAMES, 300, p=[0.3, 0.55, 0.15]))
    pred = [g if rng.random() < 0.7 else rng.choice(LABEL_NAMES) for g in gold]
    ci = bootstrap_ci(gold, pred, resamples=50, seed=3)
    rows = np.random.default_rng(3).integers(0, 300, (50, 300))  # the same resamples
    g, p = np.array(gold), np.array(pred)
    want = {
        "accuracy": [accuracy_score(g[r], p[r]) for r in rows],
        "weighted_f1": [f1_score(g[r], p[r], labels=LABEL_NAMES, average="weighted", zero_division=0) for r in rows],
        "macro_f1": [f1_score(g[r], p[r], labels=LABEL_NAMES, average="macro", zero_division=0) for r in rows],
    }
    for key, vals in want.items():
        assert ci[key] == pytest.approx(list(np.percentile(vals, [2.5, 97.5])), abs=1e-9), key
        assert ci[key][0] < ci[key][1]


def test_bootstrap_interval_width_and_perfect_predictions():
    from training.evaluate import bootstrap_ci, classification_metrics

    gold = ["positive", "neutral", "negative"] * 100
    assert bootstrap_ci(gold, gold) == {k: [1.0, 1.0] for k in ("accuracy", "weighted_f1", "macro_f1")}
    pred = gold[:225] + ["neutral"] * 75  # 250 of 300 right
    m = classification_metrics(gold, pred)
    lo, hi = m["ci95"]["accuracy"]
    assert lo < m["accuracy"] < hi
    assert 0.06 < hi - lo < 0.11  # about 2 x 1.96 x sqrt(p(1-p)/n) = 0.084
