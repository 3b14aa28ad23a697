#!/usr/bin/env python
"""Issue 15's engine measurements in one process on a GPU (run by deploy/gpu/engine.sh).

Builds the Qwen2.5-VL-3B shape once in bf16 (random weights, no hub) and runs, writing one JSON
file per stage as soon as it is done (so a stage cut off by a time limit loses only itself):

1. ``engine_b<N>.json`` for the first ``--batches`` N: ``run_engine_bench`` - the engine and the
   HF reference side by side on 2 x N posts, ``--new-tokens`` each (``mulcot bench engine``'s JSON);
2. ``engine_checks.json``: ``run_engine_checks`` - greedy tokens in fp32 with TF32 off (8 posts x
   32 new tokens, its own fp32 build) and the bf16 teacher-forced logits + label agreement (on
   the bf16 build of step 1);
3. ``engine_b<N>.json`` for the other batch sizes.

    python3 deploy/gpu/engine_check.py --out /tmp/out --images .gpu_data/t15/images
    python deploy/gpu/engine_check.py --shape tiny --batches 4 --new-tokens 8 --out /tmp/x   # CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="3b", choices=["3b", "tiny"])
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--check-posts", type=int, default=8)
    ap.add_argument("--check-tokens", type=int, default=32)
    ap.add_argument("--images", default=None, help="folder of pictures (default: random-colour images)")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--out", default="/tmp/engine_check")
    args = ap.parse_args(argv)

    import torch

    from model.engine.checks.bench import defaults, print_table, run_engine_bench, run_engine_checks
    from model.engine.checks.shapes import build_shape

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    images = args.images if args.images and Path(args.images).is_dir() else None
    t0 = time.perf_counter()
    built = build_shape(args.shape, device=device, dtype=dtype, image_size=defaults(args.shape, device)["image_size"])
    print(f"built {args.shape} in {time.perf_counter() - t0:.1f} s", flush=True)
    summary: dict = {}

    def bench(b: int) -> None:
        t = time.perf_counter()
        try:
            res = run_engine_bench(args.shape, batch=b, new_tokens=args.new_tokens, images=images, device=device,
                                   built=built)
            (out / f"engine_b{b}.json").write_text(json.dumps(res, indent=2))
            print_table(res)
            summary[f"b{b}"] = {"engine": res["engine"], "reference": res.get("reference"),
                                "speedup": res.get("speedup")}
        except Exception as exc:  # keep going: the other stages still measure something
            traceback.print_exc()
            summary[f"b{b}"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"batch {b}: {time.perf_counter() - t:.1f} s", flush=True)
        (out / "engine_summary.json").write_text(json.dumps(summary, indent=2))
        if device == "cuda":
            gc.collect()  # the engine thread's cycle holds the KV cache and graphs
            torch.cuda.empty_cache()

    def checks() -> None:
        t = time.perf_counter()
        try:
            res = run_engine_checks(args.shape, n_posts=args.check_posts, new_tokens=args.check_tokens, device=device,
                                    built_forced=built if device == "cuda" else None)
            (out / "engine_checks.json").write_text(json.dumps(res, indent=2))
            print(json.dumps(res, indent=2), flush=True)
            summary["checks"] = res
        except Exception as exc:
            traceback.print_exc()
            summary["checks"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"checks: {time.perf_counter() - t:.1f} s", flush=True)
        (out / "engine_summary.json").write_text(json.dumps(summary, indent=2))
        if device == "cuda":
            gc.collect()  # the engine thread's cycle holds the KV cache and graphs
            torch.cuda.empty_cache()

    # the first batch size, then the (short) checks, then the other batch sizes: a time limit
    # cuts the last one rather than the checks
    bench(args.batches[0])
    if not args.skip_checks:
        checks()
    for b in args.batches[1:]:
        bench(b)
    (out / "engine_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
