"""Training the compact student's explainer (SmolLM2-135M + LoRA) on teacher chains.

Chain cross-entropy on the answer tokens only (prompt and padding are masked), conditioned
on the gold label; only teacher chains whose prediction matches the gold label are used.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from model.chain import chain_label, parse_chain
from model.compact.explainer import (
    ExplainerConfig,
    chat_prompt,
    load_base,
    target_from_fields,
    user_prompt,
)

from ..data import Example, data_dir, load_examples
from .features import image_features
from .recipe import CompactRecipe


def chain_examples(paths: list[str], limit: int | None = None) -> list[tuple[Example, dict[str, str]]]:
    """Posts with a parseable teacher chain whose prediction matches the gold label."""
    out = []
    for p in paths:
        for e in load_examples(data_dir() / p, limit=limit):
            if not e.teacher_cot:
                continue
            chain = parse_chain(e.teacher_cot)
            if chain.parsed and chain_label(chain) == e.label:
                out.append((e, chain.fields()))
    return out


def encode_pair(tok, prompt: str, target: str, max_len: int = 384) -> tuple[list[int], list[int]]:
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    t = tok(target + tok.eos_token, add_special_tokens=False)["input_ids"]
    ids = (p + t)[:max_len]
    labels = ([-100] * len(p) + t)[:max_len]
    return ids, labels


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int):
    n = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), n), pad_id)
    labels = torch.full((len(rows), n), -100)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (a, b) in enumerate(rows):  # right padding for training
        ids[i, : len(a)] = torch.tensor(a)
        labels[i, : len(b)] = torch.tensor(b)
        mask[i, : len(a)] = 1
    return ids, mask, labels


def answer_loss(model, ids, mask, labels):
    """Next-token CE on answer positions only; the vocabulary projection runs only there
    (a fifth of SmolLM2's compute is its 49k-word output layer)."""
    base = model.get_base_model()
    hidden = base.model(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = base.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def train_explainer(r: CompactRecipe, out: Path, log) -> dict:
    from peft import get_peft_model
    from transformers import get_linear_schedule_with_warmup

    cfg = ExplainerConfig(**r.explainer)
    rng = random.Random(r.seed)
    torch.manual_seed(r.seed)
    pairs = chain_examples(r.chain_sets, r.limit)
    feats = image_features([e for e, _ in pairs], out / "cache", r.image_size)
    model, tok = load_base(torch.float32)
    model = get_peft_model(model, cfg.lora_config())
    rows = []
    for e, fields in pairs:
        words = feats[str(e.image_path)][1] if e.image_path and str(e.image_path) in feats else None
        prompt = chat_prompt(tok, user_prompt(e.text, e.aspect, words, e.label.value, cfg))
        rows.append(encode_pair(tok, prompt, target_from_fields(fields, cfg)))
    epochs = r.explainer_epochs
    bs = r.explainer_batch_size
    lr = r.explainer_lr
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(len(rows) / bs)
    sched = get_linear_schedule_with_warmup(opt, int(0.05 * steps), steps)
    step, history = 0, []
    for epoch in range(epochs):
        model.train()
        # length-bucketed batches: shuffle, then sort within chunks to cut padding
        order = list(range(len(rows)))
        rng.shuffle(order)
        chunks = [sorted(order[i : i + bs * 16], key=lambda j: len(rows[j][0])) for i in range(0, len(order), bs * 16)]
        batches = [c[i : i + bs] for c in chunks for i in range(0, len(c), bs)]
        rng.shuffle(batches)
        t0, run, seen = time.time(), 0.0, 0
        for b in batches:
            ids, mask, labels = collate([rows[j] for j in b], tok.pad_token_id)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = answer_loss(model, ids, mask, labels)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            seen += len(b)
            run += loss.item()
            if step % 10 == 0:
                rec = {"stage": "explainer", "epoch": epoch, "step": step, "loss": run / 10, "ex_per_s": seen / (time.time() - t0)}
                log(rec)
                history.append(rec)
                run = 0.0
        save_explainer(model, cfg, out)
    return {"train_n": len(rows), "epochs": epochs, "lr": lr, "batch_size": bs, "history": history}


def save_explainer(model, cfg: ExplainerConfig, out: Path) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, out / "explainer.safetensors")
    (out / "explainer.json").write_text(json.dumps(cfg.to_dict(), indent=2))
