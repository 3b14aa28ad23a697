#!/usr/bin/env python
"""The student recipe's training step at the real Qwen2.5-VL-3B shape, timed (issue 15, part 3).

Builds two random-weight models of the Qwen2.5-VL-3B architecture (``model.engine.checks.shapes``;
no hub): the student and a frozen assistant. The student gets LoRA on the language model
**and** the vision tower (attention and MLP projections of both), gradient checkpointing, bf16
weights (LoRA weights as peft makes them) under bf16 autocast, and is trained with the student
stage's own loss (``make_student_loss``: per task (chain, label), (1 - lam) * CE + lam * T^2 *
KL(assistant || student) on answer positions only) on batches built by the stage's own
``collate_items`` from posts with 280 x 280 images and a five-field chain of 150 words (its
token count with the small offline tokenizer is reported as ``chain_answer_tokens``).

At each micro-batch size it runs one untimed step, then ``--steps`` timed steps (forward of the
assistant, forward + backward of the student, AdamW step), and reports samples/s (a sample is
one post: its chain item and its label item) and the CUDA peak memory. JSON to ``--json-out``.

    python deploy/gpu/train_check.py --json-out /tmp/train.json          # 3B shape on the GPU
    python deploy/gpu/train_check.py --tiny --micro-batches 1 2          # tiny shape on CPU (tests)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: LoRA on the language model's and the vision tower's attention and MLP projections.
LORA_ALL = (r".*(?:language_model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
            r"|visual\.blocks\.\d+\.(?:attn\.(?:qkv|proj)|mlp\.(?:gate|up|down)_proj))")


def _training():
    """The student stage's pieces (``training.mulcot``), imported when the check runs."""
    from training.mulcot.student import make_student_loss
    from training.mulcot.vlm import Item, add_lora, collate_items, model_inputs

    return make_student_loss, Item, add_lora, collate_items, model_inputs


def _chain_text(words: int = 150) -> str:
    from model.types import ReasoningChain

    filler = ("the text praises the match and the crowd while the picture shows a bright stadium full of "
              "fans so both point the same way ").split()
    part = " ".join(filler[i % len(filler)] for i in range(words // 4))
    return ReasoningChain(text_analysis=part, image_analysis=part, conflict_resolution=part,
                          final_conclusion=part, prediction="positive").render()


def run(tiny: bool, micro_batches: list[int], steps: int, device: str, lam: float = 0.3, T: float = 2.0) -> dict:
    import torch

    from model.engine.checks.bench import bench_posts
    from model.engine.checks.shapes import build_shape
    from model.prompts import label_prompt, reasoning_prompt

    make_student_loss, Item, add_lora, collate_items, model_inputs = _training()
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape, image_size = ("tiny", 56) if tiny else ("3b", 280)
    t0 = time.perf_counter()
    student, processor = build_shape(shape, device=device, dtype=dtype, image_size=image_size, seed=0)
    teacher, _ = build_shape(shape, device=device, dtype=dtype, image_size=image_size, seed=1)
    teacher.eval().requires_grad_(False)
    build_s = time.perf_counter() - t0
    student.config.use_cache = False
    student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = add_lora(student, r=16, alpha=32, dropout=0.05, target_modules=LORA_ALL)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora_vision = sum("visual" in n for n in trainable)
    lora_text = sum("language_model" in n for n in trainable)
    if not lora_vision or not lora_text:
        raise RuntimeError(f"LoRA missed a tower: {lora_text} text, {lora_vision} vision parameters")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = make_student_loss(teacher, lam, T)
    answer = _chain_text()
    family = student.config.model_type

    def batches(n: int, seed: int) -> dict:
        posts = bench_posts(n, image_px=2 * image_size, seed=seed)
        chain = [Item(p, reasoning_prompt(p), answer) for p in posts]
        label = [Item(p, label_prompt(p), "positive") for p in posts]
        out = {}
        for task, items in (("chain", chain), ("label", label)):
            b = collate_items(processor, items, family=family, image_size=image_size, max_answer_tokens=384)
            out[task] = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in b.items()}
        return out

    def step(b: dict) -> float:
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            terms = loss_fn(model, b)
        terms["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(terms["loss"].detach())

    rows = []
    for mb in micro_batches:
        data = [batches(mb, seed=s) for s in range(steps + 1)]
        answer_tokens = int(data[0]["chain"]["answer_mask"].sum()) // mb
        seq_len = int(data[0]["chain"]["input_ids"].shape[1])
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        step(data[0])  # warm-up
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        losses = [step(b) for b in data[1:]]
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        rows.append({
            "micro_batch": mb,
            "steps": steps,
            "samples_per_s": round(mb * steps / wall, 3),
            "seconds_per_step": round(wall / steps, 3),
            "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
            "chain_seq_len": seq_len,
            "chain_answer_tokens": answer_tokens,
            "losses": [round(x, 4) for x in losses],
        })
        print(json.dumps(rows[-1]), flush=True)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "shape": "Qwen2.5-VL-3B" if not tiny else "tiny",
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "image_size": image_size,
        "lora": {"r": 16, "alpha": 32, "targets": "LM q/k/v/o/gate/up/down + vision qkv/proj/gate/up/down",
                 "trainable_parameters": n_trainable, "text_tensors": lora_text, "vision_tensors": lora_vision},
        "gradient_checkpointing": True,
        "loss": f"student stage: sum over chain/label of (1-{lam}) CE + {lam} T^2 KL, T={T}, answer positions only",
        "build_seconds": round(build_s, 1),
        "runs": rows,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shape (CPU test) instead of the 3B shape")
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = run(args.tiny, args.micro_batches, args.steps, device)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("shape", "device", "build_seconds")}))
    return result


if __name__ == "__main__":
    main()
