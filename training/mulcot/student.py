"""Student stage (docs/training.md, "4. Student"): joint chain + label training distilled from the frozen assistant.

For each task (chain, label)::

    loss_task = (1 - lam) * CE(student, gold) + lam * T^2 * KL(assistant || student) at temperature T

on answer positions only (:func:`training.losses.distill_loss_terms`; prompt, image and padding
positions are masked - the MulCoT-RD reference code's defect is not reproduced), summed over
the two tasks. Defaults ``lam = 0.3``, ``T = 2.0``. Student and assistant must share a tokenizer
(and image tokenisation): checked before training, with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import Example
from ..losses import distill_loss_terms
from .trainer import TrainSettings, fit
from .vlm import LoraSettings, check_same_vision_tokens, check_shared_tokenizer, load_model, model_inputs


def make_student_loss(assistant: Any, lam: float = 0.3, T: float = 2.0):
    """``loss_fn(model, batches)`` for :func:`training.mulcot.trainer.fit`."""
    import torch

    def loss_fn(model: Any, batches: dict) -> dict:
        out: dict[str, Any] = {}
        total = ce_sum = kl_sum = None
        for task in ("chain", "label"):
            b = batches.get(task)
            if b is None:
                continue
            inputs = model_inputs(b)
            with torch.no_grad():
                t_logits = assistant(**inputs, use_cache=False).logits
            s_logits = model(**inputs, use_cache=False).logits
            terms = distill_loss_terms(s_logits, t_logits, b["labels"], b["answer_mask"], lam=lam, T=T, shift=True)
            out[f"ce_{task}"], out[f"kl_{task}"] = terms.ce, terms.kl
            total = terms.loss if total is None else total + terms.loss
            ce_sum = terms.ce if ce_sum is None else ce_sum + terms.ce
            kl_sum = terms.kl if kl_sum is None else kl_sum + terms.kl
        if total is None:
            raise ValueError("a training step had neither chain nor label items")
        out.update(loss=total, ce=ce_sum, kl=kl_sum)
        return out

    return loss_fn


def load_assistant(spec: str | Path, *, device: str = "cpu", dtype: str | None = None):
    """The frozen assistant: ``<dir>`` of a trained adapter (its base is read from
    ``adapter_config.json``), ``<base>+<adapter>``, or a plain model; merged, eval, no grads."""
    from model.loading import hf_source

    base, adapter = hf_source(spec)
    model, processor, info = load_model(base, device=device, dtype=dtype, adapter=adapter)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, processor, info


def train_student(
    *,
    model: str | Path,
    assistant: str | Path,
    train: Sequence[Example],
    dev: Sequence[Example],
    out_dir: str | Path,
    settings: TrainSettings,
    lam: float = 0.3,
    T: float = 2.0,
    lora: LoraSettings | None = None,
    dtype: str | None = None,
    card: dict | None = None,
    accelerator: Any = None,
) -> dict:
    """Train the student by joint distillation; returns the training summary."""
    from accelerate import Accelerator

    lora = lora or LoraSettings()
    acc = accelerator or Accelerator(cpu=settings.cpu, gradient_accumulation_steps=settings.grad_accum,
                                     mixed_precision=settings.mixed_precision)
    base, processor, info = load_model(model, device="cpu", dtype=dtype)
    teacher, t_processor, t_info = load_assistant(assistant, device=str(acc.device), dtype=dtype)
    check_shared_tokenizer(processor, t_processor)
    check_same_vision_tokens(base, teacher)
    peft_model = lora.apply(base)
    card = {
        "recipe_stage": "student",
        "base_model": str(model),
        "assistant": str(assistant),
        "lora": lora.card(),
        "loss": f"sum over tasks (chain, label) of (1-{lam})*CE + {lam}*T^2*KL(assistant||student), T={T}, "
                "answer tokens only",
        "lam": lam,
        "T": T,
        **(card or {}),
    }
    return fit(stage="student", model=peft_model, processor=processor, family=info["family"],
               train_examples=train, dev_examples=dev, loss_fn=make_student_loss(teacher, lam, T), out_dir=out_dir,
               cfg=settings, card=card, accelerator=acc)


__all__ = ["train_student", "make_student_loss", "load_assistant"]
