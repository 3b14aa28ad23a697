"""Training the compact student's explainer (SmolLM2-135M + LoRA) on teacher chains.

Chain cross-entropy on the answer tokens only (prompt and padding are masked), conditioned
on the gold label; only teacher chains whose prediction matches the gold label are used.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from pathlib import Path

import torch

from model.backends.compact.explainer import (
    ExplainerConfig,
    chat_prompt,
    first_sentence,
    load_base,
    target_from_fields,
    user_prompt,
)
from model.chain import chain_label, parse_chain

from ..data import Example, data_dir, load_examples
from ..grounding import claims_pixels
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


# ---------------------------------------------------------------------------- grounded targets
_OPENER = re.compile(
    r"^(?:by )?integrating (?:the )?insights (?:from )?(?:both )?(?:the )?(?:text and (?:the )?image|modalities)"
    r"(?: modalities)?,?\s*", re.IGNORECASE)


def conclusion_rest(conclusion: str) -> str:
    """A teacher conclusion without its "Integrating insights from both the text and the image,"
    opener (a claim about pixels the student never sees), first letter lower-cased, to follow a
    forced start from ``model.backends.compact.grounded.conclusion_start``."""
    rest = _OPENER.sub("", conclusion.strip()).strip()
    return rest[:1].lower() + rest[1:] if rest else rest


def grounded_rows(pairs, cfg: ExplainerConfig, tok, student, no_image_every: int = 3, batch: int = 32):
    """Training rows whose targets say only what the student can know (issue 14).

    Each post is run through ``student`` (a compact student: its labels and its
    ``grounded_lines``). Posts whose label is not the gold label are left out (the Conflict line
    would then describe another decision than the one explained), and so are posts whose Text
    line or Conclusion (after :func:`conclusion_rest`) uses a word that describes pixels or mentions the image
    (``training.grounding.claims_pixels``). A row is
    the chat prompt, then ``Text: <teacher's first sentence>``, the student's own Image and
    Conflict lines, and ``Conclusion: <forced start> <teacher's conclusion, opener removed>``.
    The loss covers only the Text line and the Conclusion after its forced start: the model learns
    to write those with the grounded lines in context, as it does when serving. Every
    ``no_image_every``-th kept post is repeated without its image (no image words, the no-image
    lines, "From the text alone,"). Returns (rows, counts)."""
    from model.backends.compact.grounded import NO_IMAGE, NO_IMAGE_CONFLICT, conclusion_start

    rows, counts = [], {"posts": len(pairs), "wrong_label": 0, "pixel_claims": 0, "kept": 0, "no_image_rows": 0}
    for s in range(0, len(pairs), batch):
        chunk = pairs[s : s + batch]
        posts = [e.post() for e, _ in chunk]
        preds = student.classify(posts)
        lines = student.grounded_lines(posts, preds)
        for (e, fields), post, pr, g in zip(chunk, posts, preds, lines):
            if pr.label != e.label:
                counts["wrong_label"] += 1
                continue
            text = first_sentence(fields["Text_analysis"], cfg.max_words_per_field)
            rest = conclusion_rest(first_sentence(fields["Final_conclusion"], cfg.max_words_per_field))
            if not rest or claims_pixels(text, mentions=True) or claims_pixels(rest, mentions=True):
                counts["pixel_claims"] += 1
                continue
            counts["kept"] += 1
            words = pr.extra.get("image_words") if post.image is not None else None
            variants = [(words, g.image, g.conflict_line, conclusion_start(post.image is not None, g.conflict, True))]
            if post.image is not None and counts["kept"] % no_image_every == 0:
                variants.append((None, NO_IMAGE, NO_IMAGE_CONFLICT, conclusion_start(False, False, True)))
                counts["no_image_rows"] += 1
            for w, image_line, conflict_line, start in variants:
                prompt = chat_prompt(tok, user_prompt(e.text, e.aspect, w, e.label.value, cfg))
                segments = [(prompt + "Text:", False), (f" {text}\n", True),
                            (f"Image: {image_line}\nConflict: {conflict_line}\nConclusion: {start}", False),
                            (f" {rest}{tok.eos_token}", True)]
                rows.append(encode_segments(tok, segments))
    return rows, counts


def encode_segments(tok, segments: list[tuple[str, bool]], max_len: int = 384) -> tuple[list[int], list[int]]:
    """Token ids of the concatenated ``(text, learn)`` segments, tokenised as one string (as the
    serving prompt is), with labels -100 except on tokens that lie inside a ``learn`` segment."""
    text, spans, pos = "", [], 0
    for part, learn in segments:
        if learn:
            spans.append((pos, pos + len(part)))
        text += part
        pos += len(part)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:max_len]
    labels = [i if any(a <= s and e <= b for a, b in spans) and e > s else -100
              for i, (s, e) in zip(ids, enc["offset_mapping"][:max_len])]
    return ids, labels


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
    rows, counts = [], None
    if cfg.grounded_targets:
        from model import load_student

        rows, counts = grounded_rows(pairs, cfg, tok, load_student(r.grounding_student))
        log({"stage": "explainer", "grounded_targets": counts, "rows": len(rows)})
    else:
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
    return {"train_n": len(rows), "epochs": epochs, "lr": lr, "batch_size": bs, "history": history,
            **({"grounded_targets": counts} if counts else {})}


def save_explainer(model, cfg: ExplainerConfig, out: Path) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, out / "explainer.safetensors")
    (out / "explainer.json").write_text(json.dumps(cfg.to_dict(), indent=2))
