"""Shared pieces of the assistant and student stages for Hugging Face image-text-to-text models:
loading, LoRA, batches with answer-only labels, label scoring, tokenizer compatibility.

Batches: each item is (post, prompt, answer). The text is the model's chat template for the
prompt (ending at the assistant-turn start, exactly what inference sees, via
``model.backends.hf.inputs.render_prompt``) + the answer + the EOS token; images go through the same
``model.backends.hf.inputs.encode_rendered`` as at inference (same shrink, same resize, same pixels). Sequences are left-padded
(as at inference), so the answer occupies the last ``n_answer`` positions of each row; ``labels``
hold the token ids there and ``-100`` everywhere else (prompt, image tokens, padding), and
``answer_mask`` is True there. Losses are therefore computed on answer tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from model import LABELS, PostInput
from model.backends.hf.inputs import answer_lead, encode_batch, encode_rendered, render_prompt
from model.prompts import LABEL_WORDS, label_prompt, reasoning_prompt

from ..data import Example
from ..recipe import StrictModel

#: LoRA on the language model's attention and MLP projections (q/k/v/o/gate/up/down), not on
#: the vision tower (whose blocks reuse some of those names). peft full-matches the regex.
LORA_TARGET_REGEX = r"^(?!.*(?:visual|vision)).*\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"

class LoraSettings(StrictModel):
    """The LoRA adapter of the assistant or the student (a recipe's ``lora`` block)."""

    r: int = Field(16, description="LoRA rank.")
    alpha: int = Field(32, description="LoRA alpha.")
    dropout: float = Field(0.05, description="LoRA dropout.")
    targets: str | list[str] | None = Field(None, description="peft target_modules (default: the language model's "
                                                              "q/k/v/o/gate/up/down projections, not the vision tower).")
    modules_to_save: list[str] | None = Field(None, description="Modules trained fully and saved with the adapter "
                                                                "(e.g. [lm_head] for tiny random test models).")

    def apply(self, model: Any) -> Any:
        """``model`` wrapped with a trainable adapter of these settings (:func:`add_lora`)."""
        return add_lora(model, r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=self.targets,
                        modules_to_save=self.modules_to_save)

    def card(self) -> dict:
        """The adapter's settings as a model card records them."""
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout,
                "targets": self.targets or "language-model q/k/v/o/gate/up/down",
                "modules_to_save": self.modules_to_save}


def load_model(target: str | Path, *, device: str = "cpu", dtype: Any = None, adapter: str | None = None):
    """``(model, processor, info)`` with the HF backend's loader (processor without torchvision)."""
    from model.backends.hf.loading import load_model_and_processor

    model, processor, info = load_model_and_processor(str(target), adapter, device=device, dtype=dtype)
    processor.tokenizer.padding_side = "left"
    return model, processor, info


def add_lora(model: Any, *, r: int = 16, alpha: int = 32, dropout: float = 0.05,
             target_modules: str | list[str] | None = None, modules_to_save: list[str] | None = None) -> Any:
    """Wrap ``model`` with a trainable LoRA adapter (everything else frozen).

    ``modules_to_save`` (peft): modules trained in full and stored in the adapter, e.g.
    ``["lm_head"]`` for the tiny random test models, whose random output layer otherwise
    bounds the logits so that LoRA alone can hardly lower the loss."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                     target_modules=target_modules or LORA_TARGET_REGEX, modules_to_save=modules_to_save)
    peft_model = get_peft_model(model, cfg)
    n = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if n == 0:
        raise ValueError(f"LoRA target_modules {cfg.target_modules!r} matched no module of {type(model).__name__}")
    return peft_model


def label_token_ids(processor: Any) -> list[int]:
    """First token of each label word after the assistant start (``LABELS`` order)."""
    lead = answer_lead(processor)
    ids = [processor.tokenizer.encode(lead + w, add_special_tokens=False)[0] for w in LABEL_WORDS]
    if len(set(ids)) != 3:
        raise ValueError(f"label words share a first token ({ids}); label scoring would conflate classes")
    return ids


@dataclass(frozen=True)
class Item:
    post: PostInput
    prompt: str
    answer: str


def chain_item(ex: Example, post: PostInput) -> Item | None:
    """Reasoning prompt -> the example's chain (canonical five-field form), or None without one."""
    from model import parse_chain

    if not ex.teacher_cot:
        return None
    chain = parse_chain(ex.teacher_cot)
    target = chain.with_prediction(ex.label).render() if (chain.parsed or ex.label) else ex.teacher_cot
    return Item(post, reasoning_prompt(post), target)


def label_item(ex: Example, post: PostInput) -> Item:
    return Item(post, label_prompt(post), ex.label.value)


def collate_items(processor: Any, items: Sequence[Item], *, family: str, image_size: int | None = None,
                  max_answer_tokens: int | None = None) -> dict:
    """Tokenise prompt + answer items into one left-padded batch with answer-only ``labels``."""
    import torch

    tok = processor.tokenizer
    tok.padding_side = "left"
    lead = answer_lead(processor)
    eos = tok.eos_token or ""
    answers = []
    for it in items:
        ids = tok.encode(lead + it.answer, add_special_tokens=False)
        if max_answer_tokens and len(ids) > max_answer_tokens:
            ids = ids[:max_answer_tokens]
        answers.append(ids)
    eos_ids = tok.encode(eos, add_special_tokens=False) if eos else []
    answer_texts = [tok.decode(a) for a in answers]
    # count the answer as it re-tokenises (a cut inside a multi-byte character decodes differently)
    answers = [tok.encode(t, add_special_tokens=False) for t in answer_texts]
    texts = [render_prompt(processor, it.post, it.prompt) + t + eos for it, t in zip(items, answer_texts)]
    batch = dict(encode_rendered(processor, [it.post for it in items], texts, family=family, image_size=image_size))
    input_ids = batch["input_ids"]
    labels = torch.full_like(input_ids, -100)
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    L = input_ids.shape[1]
    for i, a in enumerate(answers):
        n = len(a) + len(eos_ids)
        labels[i, L - n:] = input_ids[i, L - n:]
        mask[i, L - n:] = True
    batch["labels"] = labels
    batch["answer_mask"] = mask
    return batch


def model_inputs(batch: dict) -> dict:
    """The batch without the training-only keys."""
    return {k: v for k, v in batch.items() if k not in ("labels", "answer_mask")}


def check_shared_tokenizer(student_processor: Any, teacher_processor: Any) -> None:
    """Token-level distillation needs identical token ids (and image-token expansion) on both
    sides; raise a clear error otherwise."""
    a, b = student_processor.tokenizer, teacher_processor.tokenizer
    problems = []
    if a.get_vocab() != b.get_vocab():
        va, vb = a.get_vocab(), b.get_vocab()
        diff = len(set(va.items()) ^ set(vb.items()))
        problems.append(f"vocabularies differ ({len(va)} vs {len(vb)} tokens, {diff} entries not shared)")
    for attr in ("eos_token", "pad_token"):
        if getattr(a, attr) != getattr(b, attr):
            problems.append(f"{attr} differs ({getattr(a, attr)!r} vs {getattr(b, attr)!r})")
    if type(student_processor).__name__ != type(teacher_processor).__name__:
        problems.append(f"processor types differ ({type(student_processor).__name__} vs {type(teacher_processor).__name__})")
    if problems:
        raise ValueError(
            "student and assistant must share a tokenizer for token-level distillation (KL over the "
            "same token ids): " + "; ".join(problems) + ". Use models of one family (e.g. Qwen2.5-VL-7B -> "
            "Qwen2.5-VL-3B), or a classifier student with training.losses.kl_on_label_space."
        )


def check_same_vision_tokens(student_model: Any, teacher_model: Any) -> None:
    """Both models must expand an image into the same number of tokens."""
    def key(m):
        c = m.config
        v = getattr(c, "vision_config", None)
        return (c.model_type, getattr(v, "patch_size", None), getattr(v, "spatial_merge_size", None),
                getattr(c, "scale_factor", None), getattr(c, "image_token_id", None))

    if key(student_model) != key(teacher_model):
        raise ValueError(f"student and assistant tokenise images differently: {key(student_model)} vs {key(teacher_model)}")


def label_scores(model: Any, processor: Any, examples: Sequence[Example], *, family: str,
                 image_size: int | None = None, batch_size: int = 8, image_max_side: int | None = None,
                 logits: bool = False):
    """Softmax over the three label words after the label prompt: ``[N, 3]`` float tensor in
    ``LABELS`` order (``logits=True``: the raw logits of those words, e.g. as the teacher side
    of :func:`training.losses.kl_on_label_space`)."""
    import torch

    ids = label_token_ids(processor)
    device = next(model.parameters()).device
    out = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            posts = [ex.post(max_side=image_max_side) for ex in examples[i : i + batch_size]]
            enc = encode_batch(processor, posts, [label_prompt(p) for p in posts], family=family,
                               image_size=image_size, device=device)
            last = model(**enc, use_cache=False).logits[:, -1, :].float()[:, ids]
            out.append((last if logits else last.softmax(-1)).cpu())
    if was_training:
        model.train()
    return torch.cat(out) if out else torch.zeros(0, 3)


def dev_metrics(model: Any, processor: Any, examples: Sequence[Example], *, family: str,
                image_size: int | None = None, batch_size: int = 8, image_max_side: int | None = None) -> dict:
    """Dev accuracy / macro F1 / weighted F1 of the label task (for model selection)."""
    from ..evaluate import classification_metrics

    scored = [ex for ex in examples if ex.label is not None]
    if not scored:
        return {"dev_accuracy": None, "dev_f1": None}
    probs = label_scores(model, processor, scored, family=family, image_size=image_size,
                         batch_size=batch_size, image_max_side=image_max_side)
    pred = [LABELS[int(i)].value for i in probs.argmax(-1)]
    m = classification_metrics([ex.label.value for ex in scored], pred)
    return {"dev_accuracy": m["accuracy"], "dev_f1": m["macro_f1"], "dev_weighted_f1": m["weighted_f1"]}


__all__ = [
    "LORA_TARGET_REGEX",
    "LoraSettings",
    "Item",
    "load_model",
    "add_lora",
    "answer_lead",
    "label_token_ids",
    "chain_item",
    "label_item",
    "collate_items",
    "model_inputs",
    "check_shared_tokenizer",
    "check_same_vision_tokens",
    "label_scores",
    "dev_metrics",
]
