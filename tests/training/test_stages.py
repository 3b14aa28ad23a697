"""Assistant, augment and student stages end to end on tiny random VLMs (model.backends.tiny.build) and
synthetic posts with Pillow-made images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import load_student
from tests.support.mulcot_train_synth import write_dataset
from training.data import load_examples
from training.mulcot.assistant import train_assistant
from training.mulcot.augment import augment, merge_chains
from training.mulcot.student import make_student_loss, train_student
from training.mulcot.trainer import TrainSettings
from training.mulcot.vlm import (
    LoraSettings,
    chain_item,
    check_shared_tokenizer,
    collate_items,
    label_item,
    load_model,
    model_inputs,
)

FAST = dict(batch_size=4, grad_accum=1, lr=2e-2, image_size=56, log_every=1, progress=False, max_answer_tokens=96)


def _log(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()]


@pytest.fixture
def splits(tmp_path: Path):
    train = write_dataset(tmp_path / "d", n=12, text_only_every=5)
    dev = write_dataset(tmp_path / "d", n=6, name="dev.jsonl", seed=1)
    label_only = write_dataset(tmp_path / "d", n=3, name="label_only.jsonl", seed=2, chains=False)
    return train, dev, label_only


@pytest.mark.parametrize("family", ["qwen", "smolvlm"])
def test_batches_put_labels_on_answer_tokens_only(family, tiny_qwen, tiny_smolvlm, synthetic_jsonl):
    path = tiny_qwen if family == "qwen" else tiny_smolvlm
    model, processor, info = load_model(path)
    exs = load_examples(synthetic_jsonl)[:3]
    items = [chain_item(exs[0], exs[0].post()), label_item(exs[1], exs[1].post()), label_item(exs[2], exs[2].post())]
    b = collate_items(processor, items, family=info["family"], image_size=56)
    tok = processor.tokenizer
    for i, it in enumerate(items):
        answer = tok.decode(b["input_ids"][i][b["answer_mask"][i]], skip_special_tokens=True).strip()
        assert answer == it.answer.strip()
        assert (b["labels"][i][~b["answer_mask"][i]] == -100).all()
    # padding (left) is never an answer position
    pad = b["attention_mask"] == 0
    assert pad.any() and not (pad & b["answer_mask"]).any()
    out = model(**model_inputs(b))
    assert out.logits.shape[:2] == b["input_ids"].shape
    # label-space scores: probabilities are the softmax of the label-word logits
    from training.mulcot.vlm import label_scores

    probs = label_scores(model, processor, exs, family=info["family"], image_size=56)
    logits = label_scores(model, processor, exs, family=info["family"], image_size=56, logits=True)
    assert probs.shape == (3, 3) and torch.allclose(probs, logits.softmax(-1), atol=1e-6)


def test_assistant_trains_resumes_and_loads(splits, tiny_qwen, tmp_path: Path):
    train, dev, _ = splits
    out = tmp_path / "assistant"
    settings = TrainSettings(epochs=3, **FAST)
    s = train_assistant(model=tiny_qwen, train=load_examples(train), dev=load_examples(dev), out_dir=out,
                        settings=settings, lora=LoraSettings(r=8, alpha=16, modules_to_save=["lm_head"]))
    assert s["epochs_run"] == 3 and s["steps"] == 9
    rows = [r for r in _log(out / "train_log.jsonl") if r["kind"] == "train"]
    assert {"ce_chain", "ce_label", "loss"} <= set(rows[0])
    # the multi-task loss goes down on this learnable toy task
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    assert rows[0]["loss"] == pytest.approx(rows[0]["ce_chain"] + rows[0]["ce_label"], rel=1e-5)
    card = json.loads((out / "model_card.json").read_text())
    assert card["stage"] == "assistant" and card["metrics"]["best"]["epoch"] in (1, 2, 3)
    assert card["git_commit"] and card["lora"]["r"] == 8
    assert (out / "best" / "adapter_model.safetensors").exists()

    # the best adapter is a student spec; its dev accuracy equals the one recorded in training
    student = load_student(f"hf:{out / 'best'}", image_size=56, max_new_tokens=16)
    preds = student.classify([ex.post() for ex in load_examples(dev)])
    acc = sum(p.label == ex.label for p, ex in zip(preds, load_examples(dev))) / len(preds)
    assert acc == pytest.approx(card["metrics"]["best"]["dev_accuracy"])

    # resume: a rerun with more epochs continues after epoch 3 (no step is redone)
    s2 = train_assistant(model=tiny_qwen, train=load_examples(train), dev=load_examples(dev), out_dir=out,
                         settings=TrainSettings(epochs=4, **FAST), lora=LoraSettings(r=8, alpha=16, modules_to_save=["lm_head"]))
    assert s2["epochs_run"] == 4 and s2["steps"] == 12
    dev_rows = [r for r in _log(out / "train_log.jsonl") if r["kind"] == "dev"]
    assert [r["epoch"] for r in dev_rows] == [1, 2, 3, 4]


def test_assistant_smolvlm_runs_with_grad_accumulation(splits, tiny_smolvlm, tmp_path: Path):
    train, dev, _ = splits
    settings = TrainSettings(epochs=1, **{**FAST, "grad_accum": 2, "batch_size": 2})
    s = train_assistant(model=tiny_smolvlm, train=load_examples(train)[:8], dev=load_examples(dev)[:3],
                        out_dir=tmp_path / "a", settings=settings, lora=LoraSettings(r=4, alpha=8, modules_to_save=["lm_head"]))
    # 8 posts / batch 2 = 4 micro-batches, accumulated 2 at a time = 2 optimizer steps
    assert s["steps"] == 2 and (tmp_path / "a" / "best" / "adapter_config.json").exists()
    assert [r["step"] for r in _log(tmp_path / "a" / "train_log.jsonl") if r["kind"] == "train"] == [1, 2]


def test_augment_and_student(splits, tiny_qwen, tmp_path: Path):
    train, dev, label_only = splits
    a_dir = tmp_path / "assistant"
    train_assistant(model=tiny_qwen, train=load_examples(train), dev=load_examples(dev), out_dir=a_dir,
                    settings=TrainSettings(epochs=1, **FAST), lora=LoraSettings(r=8, alpha=16, modules_to_save=["lm_head"]))

    # augment: one row per label-only post, kept iff the sampled chain's prediction equals gold
    aug = tmp_path / "aug.jsonl"
    s = augment(load_examples(label_only), str(a_dir / "best"), aug, samples=2, max_new_tokens=32, image_size=56)
    assert s["processed"] == 3 and s["usage"]["requests"] >= 3
    rows = [json.loads(l) for l in aug.read_text().splitlines()]
    assert len(rows) == 3
    for r in rows:
        assert r["keep"] == (r["prediction"] == r["label"])
        assert (r["teacher_cot"] is not None) == r["keep"]
        assert r["stage"] in ("augment", "failed") and 1 <= r["attempts"] <= 2
    again = augment(load_examples(label_only), str(a_dir / "best"), aug, samples=2, max_new_tokens=32, image_size=56)
    assert again["skipped_done"] == 3 and again["processed"] == 0
    merged = merge_chains([train, aug], tmp_path / "merged.jsonl", base=label_only)
    assert merged["rows"] == 3 and merged["with_chain"] == sum(r["keep"] for r in rows)
    assert all(ex.load_image() is not None for ex in load_examples(tmp_path / "merged.jsonl") if ex.image_path)

    # student: distilled from the frozen assistant
    out = tmp_path / "student"
    s = train_student(model=tiny_qwen, assistant=a_dir / "best", train=load_examples(train),
                      dev=load_examples(dev), out_dir=out, settings=TrainSettings(epochs=3, **FAST),
                      lam=0.3, T=2.0, lora=LoraSettings(r=8, alpha=16, modules_to_save=["lm_head"]))
    assert s["steps"] == 9
    rows = [r for r in _log(out / "train_log.jsonl") if r["kind"] == "train"]
    for r in rows:
        assert r["kl_chain"] >= 0 and r["kl_label"] >= 0
        parts = 0.7 * (r["ce_chain"] + r["ce_label"]) + 0.3 * (r["kl_chain"] + r["kl_label"])
        assert r["loss"] == pytest.approx(parts, rel=1e-4)
    print([round(r["loss"], 2) for r in rows])
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3])
    card = json.loads((out / "model_card.json").read_text())
    assert card["lam"] == 0.3 and card["T"] == 2.0 and card["assistant"].endswith("best")
    assert (out / "best" / "adapter_model.safetensors").exists()


def test_student_loss_uses_answer_positions_only(splits, tiny_qwen):
    """Changing the prompt side of the assistant's output does not change the student's loss."""
    train, _, _ = splits
    student, processor, info = load_model(tiny_qwen)
    teacher, _, _ = load_model(tiny_qwen)
    exs = load_examples(train)[:2]
    b = collate_items(processor, [label_item(ex, ex.post()) for ex in exs], family=info["family"], image_size=56)

    class Perturbed(torch.nn.Module):
        def __init__(self, inner, mask):
            super().__init__()
            self.inner, self.mask = inner, mask

        def forward(self, **kw):
            out = self.inner(**kw)
            noise = torch.randn_like(out.logits) * 50
            keep = torch.zeros_like(self.mask)
            keep[:, :-1] = self.mask[:, 1:]  # logits at t predict token t+1: answer-predicting positions
            out.logits = torch.where(keep.unsqueeze(-1), out.logits, noise)
            return out

    batches = {"label": b, "chain": None}
    plain = make_student_loss(teacher, 0.3, 2.0)(student, batches)
    noisy = make_student_loss(Perturbed(teacher, b["answer_mask"]), 0.3, 2.0)(student, batches)
    assert torch.allclose(plain["loss"], noisy["loss"], atol=1e-5)
    assert plain["kl"].item() == pytest.approx(0.0, abs=1e-6)  # same weights: no divergence


def test_student_requires_shared_tokenizer(tiny_qwen, tiny_smolvlm):
    _, p_qwen, _ = load_model(tiny_qwen)
    _, p_smol, _ = load_model(tiny_smolvlm)
    check_shared_tokenizer(p_qwen, p_qwen)
    with pytest.raises(ValueError, match="share a tokenizer"):
        check_shared_tokenizer(p_qwen, p_smol)


def test_train_student_refuses_mismatched_assistant(splits, tiny_qwen, tiny_smolvlm, tmp_path: Path):
    train, dev, _ = splits
    with pytest.raises(ValueError, match="share a tokenizer"):
        train_student(model=tiny_qwen, assistant=tiny_smolvlm, train=load_examples(train), dev=load_examples(dev),
                      out_dir=tmp_path / "s", settings=TrainSettings(epochs=1, **FAST))
