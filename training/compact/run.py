"""The compact student's driver: run the stages of a recipe, log them, write the model card and,
optionally, export a loadable student."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..recipe import git_commit
from .recipe import CompactRecipe

#: What ``--stage`` accepts: one stage, or all of them in this order.
STAGES = ("classifier", "specialise", "explainer", "all")


class RunLog:
    """Appends each record, time-stamped, to ``train_log.jsonl`` and echoes it as a JSON line."""

    def __init__(self, path: Path, echo: bool = True):
        self.f = path.open("a")
        self.echo = echo

    def __call__(self, rec: dict) -> None:
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **rec}
        line = json.dumps(rec)
        self.f.write(line + "\n")
        self.f.flush()
        if self.echo:
            print(line, flush=True)

    def close(self) -> None:
        self.f.close()


def copy_explainer(src: Path, out: Path) -> dict:
    """Copy the chain writer of an earlier run into ``out``; its model-card entry."""
    for f in ("explainer.safetensors", "explainer.json"):
        shutil.copy2(src / f, out / f)
    prev = json.loads((src / "model_card.json").read_text()) if (src / "model_card.json").exists() else {}
    return {"from": str(src), **(prev.get("explainer") or {})}


def run_compact(r: CompactRecipe, *, stage: str = "all", export: str | Path | None = None,
                version: str | None = None, echo: bool = True) -> dict:
    """Run ``stage`` (or all stages) of ``r`` into ``r.out``; returns the model card (also
    written to ``model_card.json`` after each stage). ``export``: then write a loadable student
    there (:func:`training.compact.export.export_student`)."""
    import torch

    from .classifier import specialise_routes, train_classifier
    from .explainer import train_explainer
    from .export import export_student

    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {STAGES}")
    torch.set_num_threads(r.threads)
    out = Path(r.out)
    out.mkdir(parents=True, exist_ok=True)
    card_path = out / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    card.update({"recipe": r.model_dump(), "git_commit": git_commit()})
    log = RunLog(out / "train_log.jsonl", echo=echo)
    try:
        if stage in ("classifier", "all"):
            card["classifier"] = train_classifier(r, out, log)
            card_path.write_text(json.dumps(card, indent=2))
        if stage in ("specialise", "all") and r.specialise:
            card["specialise"] = specialise_routes(r, out, log)
            card_path.write_text(json.dumps(card, indent=2))
        if stage in ("explainer", "all"):
            if r.explainer_from:
                card["explainer"] = copy_explainer(Path(r.explainer_from), out)
            else:
                card["explainer"] = train_explainer(r, out, log)
            card_path.write_text(json.dumps(card, indent=2))
    finally:
        log.close()
    if export:
        export_student(out, Path(export), image_size=r.image_size, version=version)
    return card
