#!/usr/bin/env python
"""GPU check of the Hugging Face student path at the real Qwen2.5-VL-3B shape.

Builds a random-initialised ``Qwen2_5_VLForConditionalGeneration`` with the architecture of
Qwen2.5-VL-3B-Instruct (written out below; no hub access needed) directly on the device in
bf16, wraps it in ``model.backends.hf.student.HFStudent`` (the code the worker runs) and runs on a
batch of real posts with images from ``../shared/data`` (or synthetic ones):

* labels-only (one scoring forward pass per batch),
* label + chain (scoring + generation, the batched predict path),
* a plain ``model.generate`` baseline on the same reasoning prompts and token budget,
* with ``--compare``, labels-only passes with the packed vision attention (the default) and
  with the model's own per-window loop, alternated A B A B after a warm-up of both over every
  post (the first pass over new image shapes is slower), so the speed-up is measured side by
  side on one card in one process,

then prints card, date, batch size, image size, tokens, posts/s and peak memory, and writes
JSON with ``--json-out``. The weights are random, so the chains are gibberish: this checks
that the path runs on a GPU and what it costs, not quality. The tokenizer is the small one of
``model.backends.tiny.build`` (the real one is not reachable offline); the model's token ids are set to
it, so the vocabulary/embedding shape stays the real 151,936 rows.

    python deploy/gpu/check_hf.py                      # 3B shape, cuda, bf16
    python deploy/gpu/check_hf.py --tiny --n-posts 8   # tiny config on CPU (tests run this)
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

def build(tiny: bool, device: str, dtype, image_size: int):
    """The tiny test Qwen2.5-VL or the real 3B shape, random weights (``model.engine.checks.shapes``)."""
    from model.engine.checks.shapes import build_shape

    return build_shape("tiny" if tiny else "3b", device=device, dtype=dtype, image_size=image_size)


def baseline_generate(student, posts, batch_size: int, max_new_tokens: int) -> dict:
    """Plain ``model.generate`` on the reasoning prompts: same inputs, no scoring pass, no
    stop strings, no parsing, the model's own attention (what a hand-written loop would do)."""
    import torch

    from model.backends.hf.inputs import encode_batch
    from model.prompts import reasoning_prompt

    cuda = torch.cuda.is_available() and student.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    gen_tokens = 0
    t0 = time.perf_counter()
    for i in range(0, len(posts), batch_size):
        chunk = posts[i : i + batch_size]
        enc = encode_batch(student.processor, chunk, [reasoning_prompt(p) for p in chunk], family=student.family,
                           image_size=student.image_size, device=student.device)
        with torch.inference_mode():
            out = student.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                         pad_token_id=student.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        gen_tokens += int((new != student.tokenizer.pad_token_id).sum())
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {
        "posts": len(posts),
        "seconds": round(wall, 4),
        "posts_per_s": round(len(posts) / wall, 3),
        "generated_tokens": gen_tokens,
        "generated_tokens_per_s": round(gen_tokens / wall, 1),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }


def compare_vision_attention(model, processor, posts, batch_size: int, image_size: int, stock: str,
                             rounds: int = 3) -> dict:
    """Labels-only posts/s with the packed vision attention and with the model's own (``stock``),
    alternated ``rounds`` times after an untimed warm-up pass of each; medians are reported."""
    import statistics

    import torch

    from model.backends.hf.student import HFStudent

    def student(kind: str) -> HFStudent:
        model.set_attn_implementation({"vision_config": stock})
        return HFStudent(model, processor, image_size=image_size, chain=False, vision_attention=kind, engine="off")

    def timed(st: HFStudent) -> float:
        if torch.cuda.is_available() and st.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, len(posts), batch_size):
            st.classify(posts[i : i + batch_size])
        if torch.cuda.is_available() and st.device.type == "cuda":
            torch.cuda.synchronize()
        return len(posts) / (time.perf_counter() - t0)

    kinds = ("packed", "model")
    for kind in kinds:
        timed(student(kind))  # warm-up: every image shape once
    runs: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind in kinds:
            runs[kind].append(round(timed(student(kind)), 2))
    out = {k: {"posts_per_s_median": statistics.median(v), "runs": v} for k, v in runs.items()}
    out["speedup"] = round(out["packed"]["posts_per_s_median"] / out["model"]["posts_per_s_median"], 2)
    print(f"labels-only, vision attention packed vs the model's own ({stock}), {rounds} alternated rounds: "
          f"{out['packed']['runs']} vs {out['model']['runs']} posts/s -> x{out['speedup']}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config instead of the 3B shape (CPU test)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=280)
    ap.add_argument("--n-posts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"),
                    help="posts with real images from <data-dir>/t15/test.jsonl; synthetic if absent")
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                    help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--compare", action="store_true",
                    help="also time labels-only with packed vs per-window vision attention, alternated")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="HFStudent option for the timed runs, e.g. cache_implementation=static (repeatable)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

    import torch

    from model.bench import data_posts, print_bench_table, run_model_bench, synthetic_posts
    from model.backends.hf.student import HFStudent
    from model.loading import parse_options

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.startswith("cuda") else "fp32")]
    data = Path(args.data_dir)
    if (data / "t15" / "test.jsonl").exists():
        posts, source = data_posts(data, args.n_posts), f"{data}/t15/test.jsonl"
    else:
        posts, source = synthetic_posts(args.n_posts), "synthetic"
    t0 = time.perf_counter()
    model, processor = build(args.tiny, device, dtype, args.image_size)
    build_s = time.perf_counter() - t0
    stock_attention = model.config.vision_config._attn_implementation
    info = {"dtype": str(dtype).replace("torch.", ""), "parameters": sum(p.numel() for p in model.parameters())}
    name = "qwen2.5-vl-3b-shape(random)" if not args.tiny else "qwen2.5-vl-tiny"

    options = parse_options(args.option)
    # this check measures the HF path (generate) unless --option engine=on; the engine has its
    # own benchmark (mulcot bench engine)
    student = HFStudent(model, processor, name=name, image_size=args.image_size, max_new_tokens=args.max_new_tokens,
                        info=info, **{"engine": "off", **options})
    result = run_model_bench("check_hf", posts, student=student, batch_size=args.batch_size, print_table=False)
    result.update(vision_attention=student.info.get("vision_attention", stock_attention), options=options,
                  build_seconds=round(build_s, 1), posts_source=source, shape="tiny" if args.tiny else "Qwen2.5-VL-3B",
                  date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), torch=torch.__version__)
    print_bench_table(result)
    if args.compare:
        result["compare_vision_attention"] = compare_vision_attention(
            model, processor, posts, args.batch_size, args.image_size, stock_attention)
    # the baseline is what a hand-written loop gets: the model's own attention
    model.set_attn_implementation({"vision_config": stock_attention})
    if not args.no_baseline:
        result["baseline_generate"] = base = baseline_generate(student, posts, args.batch_size, args.max_new_tokens)
        print(f"baseline model.generate: {base['posts_per_s']} posts/s, {base['generated_tokens']} tokens "
              f"({base['generated_tokens_per_s']} tok/s), CUDA peak {base['cuda_peak_mb']} MB")
    print(json.dumps({k: result[k] for k in ("device", "date", "shape", "parameters", "batch_size", "image_size",
                                              "posts", "posts_with_image", "peak_rss_mb")}))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
