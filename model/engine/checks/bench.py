"""``mulcot bench engine``: the engine and the HF reference side by side on the same posts.

    mulcot bench engine --shape tiny --json                 # CPU, seconds (tests run it)
    mulcot bench engine --shape 3b --batch 256 --json       # GPU, Qwen2.5-VL-3B shape, random weights
    mulcot bench engine --shape 3b --check --json           # GPU: fp32 greedy + bf16 teacher-forced checks

Both sides get the same posts (synthetic texts, every post with an image: ``--images DIR`` for
real pictures, else random-colour ones) and the same token budget. Random weights never write
the ``Prediction`` key, so every chain runs to the budget (a worst case, and the same work on
both sides). Per side: ``posts_per_s`` (label + chain), ``labels_posts_per_s`` (labels only),
``tokens_per_s`` (chain tokens), ``p50_batch_ms`` (median wall time of one caller batch of
``--batch`` posts, label + chain), ``peak_gb`` (CUDA peak allocated; on CPU the process's peak
RSS, shared by both sides). The engine also reports ``stream_posts_per_s`` - all posts given to
one ``Engine.run``, so slots are refilled across caller batches. Plus ``token_agreement``,
``label_agreement`` (engine vs reference) and ``device``.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import platform
import resource
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from ...types import PostInput


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def _sync(device: str) -> None:
    import torch

    if _cuda(device):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    if _cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: str) -> float:
    import torch

    if _cuda(device):
        return round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)


def bench_posts(n: int, *, image_px: int, images: str | Path | None = None, seed: int = 0) -> list[PostInput]:
    """``n`` synthetic posts, each with an image (from ``images`` if given, cycled)."""
    from ...bench import synthetic_posts

    posts = synthetic_posts(n, seed=seed, image_px=image_px, with_images=1.0)
    if images:
        from PIL import Image

        files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        if not files:
            raise click.ClickException(f"no images in {images}")
        pics = []
        for f in files[:n]:
            with Image.open(f) as im:
                pics.append(im.convert("RGB"))
        posts = [PostInput(p.text, image=pics[i % len(pics)], aspect=p.aspect, id=p.id) for i, p in enumerate(posts)]
    return posts


def defaults(shape: str, device: str) -> dict:
    """Image size and engine buckets per shape/device."""
    gpu = _cuda(device)
    return {
        "image_size": 56 if shape.startswith("tiny") else 280,
        "len_bucket": 32 if gpu else 16,
        "kv_bucket": 256 if gpu else 64,
        "sync_every": 8 if gpu else 4,
    }


def make_engine(model: Any, processor: Any, posts: list[PostInput], *, slots: int, new_tokens: int, device: str,
                image_size: int, cuda_graphs: bool = True):
    """An engine sized for ``posts`` (``max_len`` from their longest prompt)."""
    from ..config import EngineConfig, round_up
    from ..engine import Engine
    from ..inputs import Planner

    d = defaults("tiny" if image_size < 100 else "3b", device)
    planner = Planner(model, processor, image_size=image_size)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        longest = max(pool.map(lambda ip: len(planner.plan(*ip).reason_ids), enumerate(posts)))
    max_len = round_up(longest + 64 + new_tokens + d["sync_every"] + 2 * d["len_bucket"], d["kv_bucket"])
    cfg = EngineConfig(slots=slots, max_new_tokens=new_tokens, max_len=max_len, sync_every=d["sync_every"],
                       len_bucket=d["len_bucket"], kv_bucket=d["kv_bucket"], image_size=image_size,
                       cuda_graphs=cuda_graphs)
    return Engine(model, processor, cfg)


def _timed(device: str, fn):
    """``(fn(), seconds)``, the device synchronised on both sides."""
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def _time_engine(engine: Any, posts: list[PostInput], batch: int, device: str, dtype: Any) -> tuple[dict, list, list]:
    """The engine's side (after a warm-up of every graph / shape): labels-only, caller batches of
    ``batch``, then every post at once. Returns ``(figures, per-batch results, stream results)``."""
    from ..engine import summarize_latency

    engine.run(posts[:batch])  # warm-up (not timed)
    engine.classify(posts[:batch])
    _reset_peak(device)
    _, lab_s = _timed(device, lambda: engine.classify(posts))
    per_batch, got = [], []
    for i in range(0, len(posts), batch):
        res, s = _timed(device, lambda i=i: engine.run(posts[i : i + batch]))
        got += res
        per_batch.append(s * 1000)
    stream, stream_s = _timed(device, lambda: engine.run(posts))
    tokens = sum(len(r.tokens) for r in got)
    return {
        "posts_per_s": round(len(posts) / (sum(per_batch) / 1000), 3),
        "stream_posts_per_s": round(len(posts) / stream_s, 3),
        "labels_posts_per_s": round(len(posts) / lab_s, 3),
        "tokens_per_s": round(tokens / (sum(per_batch) / 1000), 1),
        "p50_batch_ms": round(statistics.median(per_batch), 1),
        "peak_gb": _peak_gb(device),
        "generated_tokens": tokens,
        "cuda_graphs": engine.cuda_graphs,
        "graph_error": engine.graph_error,
        "vision_attention": _vision_attention(device, dtype),
        "refills": engine.stats["refills"],
        "p50_post_latency_ms": summarize_latency(stream),  # admission to finished, in the stream run
    }, got, stream


def _time_reference(student: Any, posts: list[PostInput], batch: int, new_tokens: int, device: str) -> tuple[dict, dict]:
    """The HF reference's side (after a short warm-up): labels-only, then label + chain."""
    from .reference import reference_run

    reference_run(student, posts[:batch], batch_size=batch, max_new_tokens=min(8, new_tokens))  # warm-up
    _reset_peak(device)
    _, lab_s = _timed(device, lambda: reference_run(student, posts, batch_size=batch, max_new_tokens=new_tokens,
                                                    chain=False))
    ref, ref_s = _timed(device, lambda: reference_run(student, posts, batch_size=batch, max_new_tokens=new_tokens))
    tokens = sum(len(t) for t in ref["tokens"])
    return {
        "posts_per_s": round(len(posts) / ref_s, 3),
        "labels_posts_per_s": round(len(posts) / lab_s, 3),
        "tokens_per_s": round(tokens / ref_s, 1),
        "p50_batch_ms": round(statistics.median(ref["batch_ms"]), 1),
        "peak_gb": _peak_gb(device),
        "generated_tokens": tokens,
    }, ref


def run_engine_bench(shape: str = "tiny", *, batch: int = 8, new_tokens: int | None = None, n_posts: int | None = None,
                     images: str | Path | None = None, device: str | None = None, dtype: str | None = None,
                     cuda_graphs: bool = True, reference: bool = True, built: tuple | None = None) -> dict:
    """One side-by-side run (see the module docstring). Returns the JSON dict. ``built``: an
    already built ``(model, processor)`` of ``shape`` in ``dtype`` (saves a build per run)."""
    import torch

    from .reference import hf_student, label_agreement, token_agreement
    from .shapes import build_shape

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tdtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[
        dtype or ("bf16" if _cuda(device) else "fp32")]
    new_tokens = int(new_tokens or (256 if shape == "3b" else 32))
    n_posts = int(n_posts or 2 * batch)
    d = defaults(shape, device)
    t0 = time.perf_counter()
    model, processor = built or build_shape(shape, device=device, dtype=tdtype, image_size=d["image_size"])
    build_s = time.perf_counter() - t0
    posts = bench_posts(n_posts, image_px=max(2 * d["image_size"], 96), images=images)
    engine = make_engine(model, processor, posts, slots=batch, new_tokens=new_tokens, device=device,
                         image_size=d["image_size"], cuda_graphs=cuda_graphs)
    student = hf_student(model, processor, image_size=d["image_size"], max_new_tokens=new_tokens)
    eng, got, stream = _time_engine(engine, posts, batch, device, tdtype)
    result: dict[str, Any] = {"engine": eng}
    cfg = engine.cfg
    engine.close()
    engine = None  # its KV cache and graphs must not count in the reference's peak
    gc.collect()
    if _cuda(device):
        torch.cuda.empty_cache()
    if reference:
        result["reference"], ref = _time_reference(student, posts, batch, new_tokens, device)
        result.update(token_agreement([r.tokens for r in got], ref["tokens"]))
        result.update(label_agreement([r.label_scores for r in got], ref["scores"]))
        result["stream_token_agreement"] = token_agreement([r.tokens for r in stream], ref["tokens"])["token_agreement"]
        result["speedup"] = {k: round(eng[k] / result["reference"][k], 2) for k in ("posts_per_s", "labels_posts_per_s")
                             if result["reference"].get(k)}
    result.update(_env(device, shape, tdtype, batch, new_tokens, len(posts), d["image_size"], build_s,
                       cfg, bool(images)))
    return result


def _vision_attention(device: str, dtype: Any) -> str:
    from .. import vision

    if vision.varlen_available(__import__("torch").device(device), dtype) and vision._VARLEN_ERROR is None:
        return "torch varlen_attn"
    return "packed SDPA" + (f" (varlen_attn failed: {vision._VARLEN_ERROR})" if vision._VARLEN_ERROR else "")


def _env(device, shape, tdtype, batch, new_tokens, n_posts, image_size, build_s, cfg, real_images) -> dict:
    import torch
    import transformers

    if _cuda(device):
        name = torch.cuda.get_device_name(0)
    else:
        flags = ""
        try:
            text = Path("/proc/cpuinfo").read_text()
            flags = "AVX-512" if "avx512f" in text else "no AVX-512"
            flags += ", bf16" if "avx512_bf16" in text or "amx_bf16" in text else ", no bf16"
        except OSError:
            pass
        name = f"CPU ({platform.machine()}, {flags}, {torch.get_num_threads()} threads)"
    return {
        "device": name,
        "shape": shape,
        "dtype": str(tdtype).replace("torch.", ""),
        "batch": batch,
        "new_tokens": new_tokens,
        "posts": n_posts,
        "image_size": image_size,
        "real_images": real_images,
        "engine_config": {k: getattr(cfg, k) for k in ("slots", "max_len", "sync_every", "len_bucket", "kv_bucket")},
        "build_seconds": round(build_s, 1),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def run_engine_checks(shape: str = "tiny", *, n_posts: int = 8, new_tokens: int = 32, device: str | None = None,
                      forced_tokens: int | None = None, built_forced: tuple | None = None) -> dict:
    """The correctness checks: greedy tokens in fp32 (TF32 off) and, in bf16 on CUDA (fp32 on
    CPU), teacher-forced next-token logits and labels, engine vs reference."""
    import torch

    from .reference import greedy_check, hf_student, teacher_forced_check
    from .shapes import build_shape

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    d = defaults(shape, device)
    posts = bench_posts(n_posts, image_px=max(2 * d["image_size"], 96), seed=1)
    out: dict[str, Any] = {"device": None, "shape": shape, "posts": n_posts, "new_tokens": new_tokens}
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for label, dtype in (("fp32_greedy", torch.float32),
                             ("teacher_forced", torch.bfloat16 if _cuda(device) else torch.float32)):
            t0 = time.perf_counter()
            if label == "teacher_forced" and built_forced is not None:
                model, processor = built_forced
            else:
                model, processor = build_shape(shape, device=device, dtype=dtype, image_size=d["image_size"])
            engine = make_engine(model, processor, posts, slots=n_posts, new_tokens=new_tokens, device=device,
                                 image_size=d["image_size"])
            student = hf_student(model, processor, image_size=d["image_size"], max_new_tokens=new_tokens)
            if label == "fp32_greedy":
                res = greedy_check(engine, student, posts, max_new_tokens=new_tokens, batch_size=n_posts)
            else:
                res = teacher_forced_check(engine, student, posts, max_new_tokens=forced_tokens or new_tokens,
                                           batch_size=n_posts)
            res.update(dtype=str(dtype).replace("torch.", ""), seconds=round(time.perf_counter() - t0, 1))
            out[label] = res
            engine.close()
            del engine, student, model
            if _cuda(device):
                gc.collect()  # the engine thread's cycle holds the KV cache and graphs
                torch.cuda.empty_cache()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out.update({k: v for k, v in _env(device, shape, torch.float32, n_posts, new_tokens, n_posts, d["image_size"],
                                      0.0, make_cfg_stub(n_posts), False).items()
                if k in ("device", "date", "torch", "transformers")})
    return out


def make_cfg_stub(slots: int):
    from ..config import EngineConfig

    return EngineConfig(slots=slots)


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"engine vs HF reference - {result['shape']} on {result['device']}, batch {result['batch']}, "
                    f"{result['new_tokens']} new tokens, {result['posts']} posts, {result['date']}")
    keys = ("posts_per_s", "labels_posts_per_s", "tokens_per_s", "p50_batch_ms", "peak_gb")
    t.add_column("side")
    for k in keys:
        t.add_column(k, justify="right")
    for side in ("engine", "reference"):
        if side in result:
            t.add_row(side, *[str(result[side].get(k)) for k in keys])
    if "speedup" in result:
        t.add_row("engine / reference", str(result["speedup"].get("posts_per_s")),
                  str(result["speedup"].get("labels_posts_per_s")), "", "", "")
    Console().print(t)
    print(f"engine stream (one run, refill across batches): {result['engine']['stream_posts_per_s']} posts/s; "
          f"token agreement {result.get('token_agreement')}, label agreement {result.get('label_agreement')}")


@click.command("engine")
@click.option("--shape", type=click.Choice(["tiny", "tiny-smolvlm", "3b"]), default="tiny", show_default=True,
              help="random-weight model: the tiny test Qwen2.5-VL / SmolVLM, or the Qwen2.5-VL-3B shape")
@click.option("--batch", type=int, default=8, show_default=True, help="engine slots = caller batch size")
@click.option("--new-tokens", type=int, default=None, help="chain budget (default 256 for 3b, 32 for tiny)")
@click.option("--posts", "n_posts", type=int, default=None, help="posts (default 2 x batch)")
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="folder of pictures for the posts (default: random-colour images)")
@click.option("--device", default=None, help="default: cuda if available")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="default: bf16 on cuda, fp32 on cpu")
@click.option("--no-graphs", is_flag=True, help="eager decode steps on CUDA")
@click.option("--no-reference", is_flag=True, help="engine only")
@click.option("--check", is_flag=True,
              help="instead: the correctness checks (fp32 greedy, teacher-forced) on --posts (8) x --new-tokens (32)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="also write the JSON here")
def engine(shape: str, batch: int, new_tokens: int | None, n_posts: int | None, images: str | None,
           device: str | None, dtype: str | None, no_graphs: bool, no_reference: bool, check: bool, as_json: bool,
           json_out: str | None) -> None:
    """The batched engine beside the HF reference (posts/s, labels-only posts/s, tokens/s, p50
    batch ms, peak memory, token and label agreement). See docs/engine.md."""
    if check:
        result = run_engine_checks(shape, n_posts=n_posts or 8, new_tokens=new_tokens or 32, device=device)
    else:
        result = run_engine_bench(shape, batch=batch, new_tokens=new_tokens, n_posts=n_posts, images=images,
                                  device=device, dtype=dtype, cuda_graphs=not no_graphs, reference=not no_reference)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif check:
        click.echo(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":  # `python -m model.engine.checks.bench ...` where the mulcot CLI is not installed (a GPU box)
    engine()
