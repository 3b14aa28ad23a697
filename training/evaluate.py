"""Evaluation of a student on a labelled JSONL dataset (``mulcot distill evaluate``).

:func:`evaluate` runs any :class:`model.Student` (or spec string for :func:`model.load_student`)
over :class:`training.data.Example` rows and returns a report dict; with ``out_dir`` it also
writes ``report.json``, ``predictions.jsonl`` and PNG plots (confusion matrix, confidence
histogram, and loss curves when a training log is given).

Metrics:
* classification: accuracy, weighted F1, macro F1, per-class P/R/F1, confusion matrix (rows =
  gold, columns = predicted, in ``model.LABELS`` order), via scikit-learn;
* chains (unless ``chain=False``): parse rate (five fields read from what the model wrote),
  label-chain agreement (the label the model's *own* chain argues for equals the returned
  label: ``Prediction.extra["chain_label"]`` when the backend records it, else read from the
  raw chain with ``model.chain.chain_label``), distinct-1/2 of generated chains;
  against the teacher chains of rows that have ``teacher_cot``: corpus BLEU-4, ROUGE-L F1 and
  MiniLM (all-MiniLM-L6-v2) embedding cosine, all on a 0..1 scale, comparing the canonical
  rendered form of both chains (``ReasoningChain.render``);
* speed: ``posts_per_s`` = posts / seconds spent inside the student's ``predict`` calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model import LABELS, Label, Prediction, ReasoningChain, Student, chain_label, load_student, parse_chain

from .data import Example, load_examples
from .textmetrics import MiniLMEmbedder, bleu4, distinct_n, embedding_cosine, rouge_l

LABEL_NAMES = [l.value for l in LABELS]


def _own_label(pred: Prediction) -> Label | None:
    """The label the model's own chain argues for: ``extra["chain_label"]`` when the backend
    records it (the HF backend appends the decided label to the chain, so its raw text always
    agrees), else read from the raw chain text."""
    if "chain_label" in pred.extra:
        value = pred.extra["chain_label"]
        try:
            return Label.parse(value) if value else None
        except ValueError:
            return None
    return _raw_label(pred.chain) if pred.chain is not None else None


def _raw_label(chain: ReasoningChain) -> Label | None:
    """The label the chain text argues for (raw text when there is one)."""
    source = parse_chain(chain.raw) if chain.raw else chain
    try:
        return chain_label(source)
    except ValueError:
        return None


def _chain_parsed(chain: ReasoningChain) -> bool:
    return parse_chain(chain.raw).parsed if chain.raw else chain.parsed


def _canonical(text_or_chain: str | ReasoningChain) -> str:
    chain = parse_chain(text_or_chain) if isinstance(text_or_chain, str) else text_or_chain
    if not any(chain.fields().values()):
        return chain.raw
    return chain.render()


def bootstrap_ci(gold: Sequence[str], pred: Sequence[str], *, resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of accuracy, weighted F1 and macro F1: the posts are
    resampled with replacement ``resamples`` times. On a few hundred posts the interval is
    several points wide, which is what a difference between two models has to beat."""
    import numpy as np

    k = len(LABEL_NAMES)
    idx = {name: i for i, name in enumerate(LABEL_NAMES)}
    g = np.array([idx[x] for x in gold])
    p = np.array([idx[x] for x in pred])
    rows = np.random.default_rng(seed).integers(0, len(g), (resamples, len(g)))
    cells = g[rows] * k + p[rows]  # (resamples, n) cell of the confusion matrix
    conf = np.stack([(cells == c).sum(1) for c in range(k * k)], 1).reshape(resamples, k, k).astype(float)
    tp = conf[:, np.arange(k), np.arange(k)]
    support, predicted = conf.sum(2), conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * tp / (support + predicted))  # F1 = 2TP / (2TP + FP + FN)
    n = len(g)
    stats = {"accuracy": tp.sum(1) / n, "weighted_f1": (f1 * support).sum(1) / n, "macro_f1": f1.mean(1)}
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {key: [float(v) for v in np.percentile(vals, q)] for key, vals in stats.items()}


def classification_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    if not gold:
        return {"accuracy": None, "weighted_f1": None, "macro_f1": None, "confusion": None, "per_class": {},
                "ci95": None}
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=LABEL_NAMES, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "weighted_f1": float(f1_score(gold, pred, labels=LABEL_NAMES, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(gold, pred, labels=LABEL_NAMES, average="macro", zero_division=0)),
        "confusion": confusion_matrix(gold, pred, labels=LABEL_NAMES).tolist(),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(LABEL_NAMES)
        },
        "ci95": bootstrap_ci(gold, pred),
    }


def evaluate(
    student: Student | str,
    examples: Sequence[Example],
    *,
    chain: bool = True,
    batch_size: int = 8,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    image_max_side: int | None = None,
    embeddings: bool = True,
    train_log: str | Path | None = None,
    progress: bool = False,
    console: Any = None,
    grounding: bool = False,
    grounding_limit: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``student`` on ``examples`` and return the report dict.

    Args:
        student: a Student, or a spec string for :func:`model.load_student`.
        examples: rows from :func:`training.data.load_examples`; rows without a gold label
            are predicted but not scored (counted in ``n_unlabeled``).
        chain: also generate and score reasoning chains (False: label only).
        batch_size: posts per ``predict`` call.
        limit: evaluate only the first ``limit`` examples.
        out_dir: if set, write ``report.json``, ``predictions.jsonl`` and PNG plots there.
        image_max_side: downscale images to this longer side before the student sees them.
        embeddings: compute the MiniLM embedding cosine (needs the installed MiniLM package).
        train_log: a training log JSONL (``training.mulcot.trainer`` format) to plot loss curves from.
        progress: show a progress bar.
        grounding: also run the grounding metrics (``training.grounding``: each post with an
            image again with another post's image and with none; about three times the work),
            reported under ``grounding``; ``grounding_limit``: only the first N posts with images.

    Report keys: ``n``, ``n_unlabeled``, ``accuracy``, ``weighted_f1``, ``macro_f1``,
    ``confusion``, ``labels``, ``per_class``, ``chain_parse_rate``, ``label_chain_agreement``,
    ``posts_per_s``, ``predict_s``, ``student``; with chains also ``distinct_1``, ``distinct_2``,
    and when teacher chains exist ``n_with_teacher``, ``bleu4``, ``rouge_l``,
    ``embedding_cosine`` (chain metrics are None when not computed).
    """
    if isinstance(student, str):
        student = load_student(student)
    examples = list(examples)[:limit] if limit else list(examples)
    preds, predict_s, wall_s = predict_all(student, examples, chain=chain, batch_size=batch_size,
                                           image_max_side=image_max_side, progress=progress)
    scored = [(ex, p) for ex, p in zip(examples, preds) if ex.label is not None]
    report: dict[str, Any] = {
        "student": f"{getattr(student, 'name', type(student).__name__)}@{getattr(student, 'version', '?')}",
        "n": len(scored),
        "n_unlabeled": len(examples) - len(scored),
        "labels": LABEL_NAMES,
        **classification_metrics([ex.label.value for ex, _ in scored], [p.label.value for _, p in scored]),
        "chain_parse_rate": None,
        "label_chain_agreement": None,
        "posts_per_s": (len(examples) / predict_s) if predict_s > 0 else None,
        "predict_s": predict_s,
        "wall_s": wall_s,
        "chain": chain,
    }
    if chain:
        report.update(chain_metrics(examples, preds, embeddings=embeddings))
    cv = selection_cv(student)
    if cv:
        report["cv"] = cv
    if grounding:
        from .grounding import evaluate_grounding

        with_images = [ex for ex in examples if ex.image_path is not None][:grounding_limit]
        report["grounding"] = evaluate_grounding(student, with_images, batch_size=batch_size, out_dir=out_dir,
                                                 image_max_side=image_max_side)
    if out_dir is not None:
        report["plots"] = write_outputs(Path(out_dir), examples, preds, report, train_log=train_log)
        (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if console is not None:
        print_report(report, console)
    return report


def selection_cv(student: Any) -> dict | None:
    """The cross-validated figures the student's routes were chosen by (``model_card.json`` key
    ``cv``, written by ``training/compact/select.py export``), for students that have a model card."""
    path = getattr(student, "path", None)
    card = Path(path) / "model_card.json" if path is not None else None
    if card is None or not card.exists():
        return None
    return json.loads(card.read_text()).get("cv") or None


def predict_all(student: Student, examples: Sequence[Example], *, chain: bool, batch_size: int,
                image_max_side: int | None = None, progress: bool = False) -> tuple[list[Prediction], float, float]:
    """``(predictions, seconds in predict, wall seconds)`` for ``examples``, ``batch_size`` at a time."""
    preds: list[Prediction] = []
    predict_s = 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), desc="evaluate", unit="post")
    t_wall = time.perf_counter()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        posts = [ex.post(max_side=image_max_side) for ex in chunk]
        t0 = time.perf_counter()
        out = student.predict(posts, chain=chain)
        predict_s += time.perf_counter() - t0
        if len(out) != len(chunk):
            raise RuntimeError(f"student returned {len(out)} predictions for {len(chunk)} posts")
        preds.extend(out)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return preds, predict_s, time.perf_counter() - t_wall


def chain_metrics(examples: Sequence[Example], preds: Sequence[Prediction], *, embeddings: bool = True) -> dict:
    """Parse rate, label/chain agreement, distinct-n, and (with teacher chains) BLEU-4, ROUGE-L
    and the MiniLM embedding cosine of the chains in ``preds``."""
    have = [p.chain for p in preds if p.chain is not None]
    out: dict[str, Any] = {
        "n_chains": len(have),
        "chain_parse_rate": (sum(_chain_parsed(c) for c in have) / len(preds)) if preds else None,
        "label_chain_agreement": (sum(1 for p in preds if p.chain is not None and _own_label(p) == p.label)
                                  / len(preds)) if preds else None,
    }
    gen_texts = [_canonical(c) for c in have]
    out["distinct_1"] = distinct_n(gen_texts, 1)
    out["distinct_2"] = distinct_n(gen_texts, 2)
    pairs = [(_canonical(p.chain), _canonical(ex.teacher_cot))
             for ex, p in zip(examples, preds) if ex.teacher_cot and p.chain is not None]
    out["n_with_teacher"] = len(pairs)
    if pairs:
        hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
        out["bleu4"] = bleu4(hyps, refs)
        out["rouge_l"] = rouge_l(hyps, refs)
        out["embedding_cosine"] = embedding_cosine(hyps, refs, MiniLMEmbedder()) if embeddings else None
    return out


#: The chain fields of a prediction row, spelt as in the stream's results (``stream.protocol``).
ROW_CHAIN_FIELDS = ("text_analysis", "image_analysis", "conflict_resolution", "final_conclusion", "prediction")


def prediction_row(ex: Example, p: Prediction) -> dict[str, Any]:
    """One line of ``predictions.jsonl``."""
    return {
        "id": ex.id,
        "gold": ex.label.value if ex.label else None,
        "label": p.label.value,
        "correct": (ex.label == p.label) if ex.label else None,
        "probabilities": p.probabilities,
        "chain": {k: getattr(p.chain, k) for k in ROW_CHAIN_FIELDS} if p.chain else None,
        "chain_raw": p.chain.raw if p.chain else None,
        "chain_parsed": _chain_parsed(p.chain) if p.chain else None,
    }


def write_outputs(out: Path, examples: Sequence[Example], preds: Sequence[Prediction], report: dict[str, Any], *,
                  train_log: str | Path | None = None) -> dict[str, str]:
    """``predictions.jsonl`` and the PNG plots in ``out``; returns the plots written."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for ex, p in zip(examples, preds):
            f.write(json.dumps(prediction_row(ex, p), ensure_ascii=False) + "\n")
    plots = {}
    if report["confusion"] is not None:
        plot_confusion(report["confusion"], out / "confusion.png", title=report["student"])
        plots["confusion"] = str(out / "confusion.png")
    plot_confidence([(ex, p) for ex, p in zip(examples, preds) if ex.label is not None], out / "confidence.png")
    plots["confidence"] = str(out / "confidence.png")
    if train_log is not None and Path(train_log).exists() and plot_loss_curves(train_log, out / "loss_curves.png"):
        plots["loss_curves"] = str(out / "loss_curves.png")
    return plots


def evaluate_file(student: Student | str, data: str | Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate` on a JSONL file."""
    limit = kwargs.pop("limit", None)
    return evaluate(student, load_examples(data, limit=limit), **kwargs)


# ---------------------------------------------------------------- display and plots

def print_report(report: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console

    from .report import rich_table

    console = console or Console()
    t = rich_table(f"evaluation of {report.get('student')} on {report['n']} posts", "metric", "value",
                   "95% CI (bootstrap)")
    ci = report.get("ci95") or {}

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    for key in ("accuracy", "weighted_f1", "macro_f1", "chain_parse_rate", "label_chain_agreement",
                "bleu4", "rouge_l", "embedding_cosine", "distinct_1", "distinct_2", "posts_per_s"):
        if key in report:
            t.add_row(key, fmt(report[key]), " - ".join(f"{v:.4f}" for v in ci[key]) if key in ci else "")
    console.print(t)
    for route, cv in (report.get("cv") or {}).items():
        c, b = cv["candidate"], cv["baseline"]
        console.print(
            f"[dim]selection ({route} route, {cv['k']}-fold CV over {cv['dataset']}, not this data): "
            f"{cv['adopted']}: accuracy {100 * c['acc_mean']:.2f} +- {100 * c['acc_std']:.2f}, "
            f"{c['average']} F1 {c['f1_mean']:.4f} +- {c['f1_std']:.4f}; baseline {100 * b['acc_mean']:.2f} +- "
            f"{100 * b['acc_std']:.2f} / {b['f1_mean']:.4f} +- {b['f1_std']:.4f}[/dim]")
    if report.get("confusion"):
        c = rich_table("confusion (rows gold, columns predicted)", "gold \\ pred", *LABEL_NAMES)
        for name, row in zip(LABEL_NAMES, report["confusion"]):
            c.add_row(name, *[str(v) for v in row])
        console.print(c)
    if report.get("grounding"):
        from .grounding import print_grounding

        print_grounding(report["grounding"], console)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: list[list[int]], path: str | Path, title: str = "") -> None:
    import numpy as np

    plt = _plt()
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(LABEL_NAMES)), LABEL_NAMES)
    ax.set_yticks(range(len(LABEL_NAMES)), LABEL_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of gold row")
    ax.set_title(title or "confusion matrix", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confidence(scored: Sequence[tuple[Example, Prediction]], path: str | Path) -> None:
    plt = _plt()
    right = [p.confidence for ex, p in scored if ex.label == p.label]
    wrong = [p.confidence for ex, p in scored if ex.label != p.label]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    bins = [i / 20 for i in range(21)]
    ax.hist([right, wrong], bins=bins, label=["correct", "wrong"], color=["#4c72b0", "#dd8452"], stacked=True)
    ax.set_xlabel("confidence of the predicted label")
    ax.set_ylabel("posts")
    ax.legend()
    ax.set_title("confidence by outcome", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def read_train_log(path: str | Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            rows.append(json.loads(line))
    return rows


def plot_loss_curves(log_path: str | Path, path: str | Path) -> bool:
    """Plot train losses (``loss``/``ce``/``kl`` by ``step``) and dev metrics (``dev_accuracy``,
    ``dev_f1`` by ``epoch``) from a training log JSONL. Returns False when nothing to plot."""
    rows = read_train_log(log_path)
    train = [r for r in rows if r.get("kind", "train") == "train" and "loss" in r and "step" in r]
    dev = [r for r in rows if r.get("kind") == "dev"]
    if not train and not dev:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if dev else 1, figsize=(9 if dev else 5, 3.3), dpi=120, squeeze=False)
    ax = axes[0][0]
    stages = sorted({r.get("stage", "") for r in train})
    for stage in stages:
        rs = [r for r in train if r.get("stage", "") == stage]
        for key in ("loss", "ce", "kl"):
            pts = [(r["step"], r[key]) for r in rs if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=f"{stage} {key}".strip(), lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss", fontsize=9)
    ax.legend(fontsize=7)
    if dev:
        ax2 = axes[0][1]
        for key in ("dev_accuracy", "dev_f1"):
            pts = [(r["epoch"], r[key]) for r in dev if r.get(key) is not None]
            if pts:
                ax2.plot(*zip(*pts), marker="o", label=key)
        from matplotlib.ticker import MaxNLocator

        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_xlabel("epoch")
        ax2.set_title("dev metrics", fontsize=9)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


__all__ = [
    "evaluate",
    "evaluate_file",
    "classification_metrics",
    "print_report",
    "plot_confusion",
    "plot_loss_curves",
    "read_train_log",
]
