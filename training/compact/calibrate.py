"""Scoring a compact classifier on dev: accuracy and F1, per-label logit offsets tuned on dev,
and the uniform average of several epochs' weights (kept only when it scores better)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model.backends.compact.text import CompactClassifier, load_classifier

from ..data import Example
from .export import save_classifier
from .features import LABEL_INDEX, Batches, classifier_logits

#: The F1 each route is calibrated and compared on.
ROUTE_F1 = {"aspect": "macro", "post": "weighted"}


def evaluate_classifier(model, batches: Batches, exs: list[Example], bs: int = 64) -> tuple[float, float, np.ndarray]:
    """Accuracy, macro F1 and the logits of ``model`` on ``exs``."""
    from sklearn.metrics import f1_score

    model.eval()
    logits = []
    with torch.inference_mode():
        for i in range(0, len(exs), bs):
            enc, imgs, has = batches.encode(exs[i : i + bs])
            logits.append(classifier_logits(model, enc, imgs, has).float())
    p = torch.cat(logits).numpy()
    y = np.array([LABEL_INDEX[e.label] for e in exs])
    pred = p.argmax(-1)
    return float((pred == y).mean()), float(f1_score(y, pred, average="macro")), p


def bias_metrics(logits: np.ndarray, y: np.ndarray, bias, average: str = "macro") -> tuple[float, float]:
    """Accuracy and ``average`` F1 of ``logits + bias``."""
    from sklearn.metrics import f1_score

    pred = (logits + np.asarray(bias)).argmax(-1)
    return float((pred == y).mean()), float(f1_score(y, pred, average=average))


_GRID = np.round(np.arange(-1.5, 1.51, 0.1), 2)


def calibrate_bias(logits: np.ndarray, y: np.ndarray, average: str = "macro",
                   grid: np.ndarray = _GRID) -> tuple[tuple[float, float, float], float]:
    """Logit offsets (positive, 0, negative) maximising accuracy + F1 on (dev) logits.

    Neutral, the majority class of the aspect-level sets, stays the reference at 0; ties keep
    the smallest offsets, so a calibration that does not help leaves the classifier as it was.
    """

    def score(b) -> float:
        return sum(bias_metrics(logits, y, b, average))

    best, best_s = (0.0, 0.0, 0.0), score((0.0, 0.0, 0.0))
    for bp in grid:
        for bn in grid:
            b = (float(bp), 0.0, float(bn))
            sc = score(b)
            if sc > best_s + 1e-9 or (abs(sc - best_s) <= 1e-9 and abs(bp) + abs(bn) < sum(map(abs, best))):
                best, best_s = b, sc
    return best, best_s


def calibrated(model: CompactClassifier, batches: Batches, dev: list[Example], average: str) -> dict:
    """Dev metrics of ``model`` before and after tuning its logit offsets on ``dev`` (the
    offsets it has are set aside for this)."""
    saved = model.label_bias.clone()
    model.label_bias.zero_()
    try:
        _, _, logits = evaluate_classifier(model, batches, dev)
    finally:
        model.label_bias.copy_(saved)
    y = np.array([LABEL_INDEX[e.label] for e in dev])
    bias, _ = calibrate_bias(logits, y, average)
    f1 = f"{average}_f1"
    before, after = bias_metrics(logits, y, (0.0, 0.0, 0.0), average), bias_metrics(logits, y, bias, average)
    return {"label_bias": list(bias), "dev_before": {"accuracy": before[0], f1: before[1]},
            "dev_after": {"accuracy": after[0], f1: after[1]}}


def tuned(cal: dict) -> tuple[float, float]:
    """(accuracy, F1) after the offsets were tuned, from a :func:`calibrated` record."""
    return tuple(cal["dev_after"].values())


def calibrate_classifier(out: Path, name: str, dev: list[Example], batches: Batches, average: str) -> dict:
    """Tune a saved classifier's logit offsets on ``dev`` and store them in its json."""
    model = load_classifier(out, name)
    cal = calibrated(model, batches, dev, average)
    model.cfg.label_bias = tuple(cal["label_bias"])
    (out / f"{name}.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))
    return cal


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform average of trained states with the same keys (``CompactClassifier.trained_state``)."""
    if not states:
        raise ValueError("nothing to average")
    return {k: torch.stack([st[k].float() for st in states]).mean(0) for k in states[0]}


def keep_last(states: list[dict], model: CompactClassifier, n: int) -> list[dict]:
    """``states`` with a copy of ``model``'s trained state appended, the last ``n`` kept (none
    kept when ``n`` < 2: nothing to average)."""
    if n < 2:
        return []
    return [*states[-(n - 1):], {k: v.float().clone() for k, v in model.trained_state().items()}]


def try_average(model: CompactClassifier, states: list[dict], batches: Batches, dev: list[Example],
                average: str, beat: tuple[float, float], out: Path, name: str, log, stage: str) -> dict | None:
    """Load the average of ``states`` (from :func:`keep_last`) into ``model`` and tune its
    offsets on ``dev``; saved as ``name`` only when its tuned (accuracy, F1) beats ``beat``.
    None when fewer than two states are there to average."""
    if len(states) < 2:
        return None
    model.load_trained_state(average_states(states))
    cal = calibrated(model, batches, dev, average)
    kept = tuned(cal) > beat
    if kept:
        model.cfg.label_bias = tuple(cal["label_bias"])
        save_classifier(model, model.cfg, out, name=name)
    rec = {"epochs_averaged": len(states), "kept": kept, **cal}
    log({"stage": stage, "average": rec})
    return rec
