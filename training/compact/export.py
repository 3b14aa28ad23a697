"""Files of the compact student: a saved classifier, and a loadable student directory."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from model.backends.compact.text import ClassifierConfig, CompactClassifier

STUDENT_FILES = ("classifier.safetensors", "classifier.json", "explainer.safetensors", "explainer.json")
ROUTES = ("aspect", "post")


def save_classifier(model: CompactClassifier, cfg: ClassifierConfig, out: Path, name: str = "classifier") -> None:
    """``<name>.safetensors`` (trained weights in float16) and ``<name>.json`` (its config) in ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in model.trained_state().items()}
    save_file(state, out / f"{name}.safetensors")
    (out / f"{name}.json").write_text(json.dumps(cfg.to_dict(), indent=2))


def export_student(run: Path, dest: Path, *, name: str = "mulcot-compact", version: str | None = None,
                   image_size: int = 160) -> Path:
    """Copy a run's trained parts into a loadable student directory (``compact:<dest>``).

    When the run has a classifier per route (``classifier_aspect``, ``classifier_post``), those
    are exported and named in ``student.json``; otherwise the single ``classifier``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    routes = {r: f"classifier_{r}" for r in ROUTES if (run / f"classifier_{r}.safetensors").exists()}
    files = [f for f in STUDENT_FILES if not (routes and f.startswith("classifier."))]
    files += [f"{n}.{ext}" for n in routes.values() for ext in ("safetensors", "json")]
    for f in files:
        shutil.copy2(run / f, dest / f)
    card = json.loads((run / "model_card.json").read_text()) if (run / "model_card.json").exists() else {}
    version = version or time.strftime("%Y.%m.%d")
    meta = {"name": name, "version": version, "image_size": image_size}
    if routes:
        meta["classifiers"] = routes
    (dest / "student.json").write_text(json.dumps(meta, indent=2))
    (dest / "model_card.json").write_text(json.dumps(card, indent=2))
    return dest
