"""Rationale augmentation (docs/training.md, "3. Augmentation"): the trained assistant writes chains for label-only posts.

For each post without a chain, the assistant samples up to ``samples`` chains with the reasoning
prompt (temperature about 0.7); the first whose prediction equals the gold label is kept
(``stage = "augment"``). Rows are written in the teacher stage's format (resumable: a rerun skips
done ids). :func:`merge_chains` then merges the kept chains with the teacher data into one
dataset file for the student stage (teacher chains win when a post has both).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.loading import as_hf_spec

from ..data import Example, read_jsonl
from .teacher import HFTeacher, run_teacher


def augment(
    examples: Sequence[Example],
    assistant: str,
    out_path: str | Path,
    *,
    samples: int = 2,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 384,
    image_size: int | None = None,
    image_max_side: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    progress: bool = False,
    student: Any = None,
) -> dict:
    """Sample chains for ``examples`` that have a gold label and no chain; returns a summary."""
    todo = [ex for ex in examples if ex.label is not None and not ex.teacher_cot]
    opts: dict[str, Any] = dict(do_sample=True, temperature=temperature, top_p=top_p)
    if image_size:
        opts["image_size"] = image_size
    if device:
        opts["device"] = device
    spec = as_hf_spec(assistant)

    def factory() -> HFTeacher:
        return HFTeacher(spec, max_new_tokens=max_new_tokens, batch_size=batch_size, student=student, seed=seed,
                         **opts)

    summary = run_teacher(todo, factory, out_path, max_guided=0, free_samples=samples, free_stage="augment",
                          image_max_side=image_max_side, progress=progress, max_in_flight=max(32, 4 * batch_size))
    summary["candidates"] = len(todo)
    return summary


def merge_chains(teacher_files: Sequence[str | Path], out_path: str | Path, *,
                 base: str | Path | None = None) -> dict:
    """Merge datasets: rows of ``base`` (labels, maybe no chains) get the first kept chain found
    in ``teacher_files`` (in order). Without ``base``, the union of kept rows. Image paths are
    rewritten relative to ``out_path``. Returns counts."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    chains: dict[str, dict] = {}
    order: list[str] = []
    for tf in teacher_files:
        tf = Path(tf)
        if not tf.exists():
            continue
        for row in read_jsonl(tf):
            if row.get("teacher_cot") and row["id"] not in chains:
                if row.get("image"):
                    row["image"] = str((tf.parent / row["image"]).resolve())
                chains[row["id"]] = row
                order.append(row["id"])
    rows = []
    if base is not None:
        base = Path(base)
        for row in read_jsonl(base):
            if row.get("image"):
                row["image"] = str((base.parent / row["image"]).resolve())
            hit = chains.get(str(row["id"]))
            if hit and not row.get("teacher_cot"):
                row["teacher_cot"] = hit["teacher_cot"]
                row["teacher"] = hit.get("teacher")
                row["chain_source"] = hit.get("stage")
            rows.append(row)
    else:
        rows = [chains[i] for i in order]
    n_chain = 0
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            if row.get("image"):
                row["image"] = os.path.relpath(row["image"], out.parent.resolve())
            n_chain += bool(row.get("teacher_cot"))
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"rows": len(rows), "with_chain": n_chain, "out": str(out)}


__all__ = ["augment", "merge_chains"]
