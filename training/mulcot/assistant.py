"""Assistant stage (docs/training.md, "2. Assistant"): multi-task LoRA fine-tuning of an HF image-text-to-text model.

Two tasks over the same post and image: the reasoning prompt -> the teacher chain, and the label
prompt -> the label word. ``loss = CE(chain) + CE(label)`` (equal weights), each on answer
tokens only (see :mod:`training.mulcot.vlm`). The best epoch (dev accuracy, ties by macro F1) is saved
as a LoRA adapter under ``out_dir/best`` (``load_student("hf:<out_dir>/best")`` loads it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import Example
from ..losses import distill_loss_terms
from .trainer import TrainSettings, fit
from .vlm import LoraSettings, load_model, model_inputs


def ce_on_answers(model: Any, batch: dict):
    """Cross-entropy of the causal LM on the batch's answer tokens (shifted, mean per token)."""
    out = model(**model_inputs(batch), use_cache=False)
    logits = out.logits
    return distill_loss_terms(logits, logits, batch["labels"], batch["answer_mask"], lam=0.0, shift=True).ce


def multitask_loss(model: Any, batches: dict) -> dict:
    """``CE(chain) + CE(label)``; a task missing from the step contributes nothing."""
    terms: dict[str, Any] = {}
    total = None
    for task in ("chain", "label"):
        b = batches.get(task)
        if b is None:
            continue
        ce = ce_on_answers(model, b)
        terms[f"ce_{task}"] = ce
        total = ce if total is None else total + ce
    if total is None:
        raise ValueError("a training step had neither chain nor label items")
    terms["loss"] = total
    terms["ce"] = total
    return terms


def train_assistant(
    *,
    model: str | Path,
    train: Sequence[Example],
    dev: Sequence[Example],
    out_dir: str | Path,
    settings: TrainSettings,
    lora: LoraSettings | None = None,
    dtype: str | None = None,
    card: dict | None = None,
    accelerator: Any = None,
) -> dict:
    """Train the assistant; returns the training summary (see :func:`training.mulcot.trainer.fit`)."""
    lora = lora or LoraSettings()
    chains = sum(1 for ex in train if ex.teacher_cot)
    if chains == 0:
        raise ValueError("assistant stage: no training example has a teacher chain (run the teacher stage first)")
    base, processor, info = load_model(model, device="cpu", dtype=dtype)
    peft_model = lora.apply(base)
    card = {
        "recipe_stage": "assistant",
        "base_model": str(model),
        "lora": lora.card(),
        "loss": "CE(chain) + CE(label), answer tokens only",
        **(card or {}),
    }
    return fit(stage="assistant", model=peft_model, processor=processor, family=info["family"],
               train_examples=train, dev_examples=dev, loss_fn=multitask_loss, out_dir=out_dir, cfg=settings,
               card=card, accelerator=accelerator)


__all__ = ["train_assistant", "multitask_loss", "ce_on_answers"]
