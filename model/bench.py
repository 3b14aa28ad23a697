"""``mulcot bench model`` (:func:`bench_model`, registered under the ``mulcot.bench`` entry
points): throughput of a student on its own (no Kafka, no Redis).

Measures, for one student spec and one batch size, over the same posts:

* labels-only: ``predict(batch, chain=False)`` (one forward pass per batch);
* label + chain: ``predict(batch)`` (scoring pass + chain generation);

and reports posts/s, prompt and generated tokens, label/chain agreement, the share of chains
that parse into all five fields, and peak memory (process RSS; ``torch.cuda`` peak allocated
on a GPU). A rich table is printed; the same numbers are returned as a dict (and written as
JSON when ``json_out`` is given).

API::

    run_model_bench(spec="default", posts=None, *, batch_size=8, image_size=None, n_posts=32,
                    max_new_tokens=None, warmup=1, json_out=None, print_table=True,
                    **load_options) -> dict
    synthetic_posts(n, *, seed=0, image_px=320, with_images=0.75, aspect_every=3) -> list[PostInput]
    data_posts(data_dir, n, *, dataset="t15", split="test") -> list[PostInput]
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import random
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .types import PostInput, Student

_WORDS = ("great day at the beach love it terrible service again so annoying the match tonight was "
          "amazing council meeting on tuesday budget new phone camera battery dies fast rainy weekend "
          "perfect traffic jam concert tickets sold out proud of the team").split()


def synthetic_posts(n: int, *, seed: int = 0, image_px: int = 320, with_images: float = 0.75,
                    aspect_every: int = 3) -> list[PostInput]:
    """``n`` deterministic posts: random word texts, most with a random-colour image of varied
    aspect ratio (longest side ``image_px``), every ``aspect_every``-th with an aspect target."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    posts = []
    for i in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 24))]
        image = None
        if rng.random() < with_images:
            w = image_px
            h = max(32, int(image_px * rng.uniform(0.5, 1.0)))
            if rng.random() < 0.5:
                w, h = h, w
            image = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
            draw = ImageDraw.Draw(image)
            for _ in range(4):
                x0, y0 = rng.randrange(w), rng.randrange(h)
                draw.rectangle([x0, y0, min(w, x0 + w // 3), min(h, y0 + h // 3)],
                               fill=tuple(rng.randrange(256) for _ in range(3)))
        aspect = words[0] if aspect_every and i % aspect_every == 0 else None
        posts.append(PostInput(" ".join(words), image=image, aspect=aspect, id=f"synthetic-{i}"))
    return posts


def data_posts(data_dir: str | Path, n: int, *, dataset: str = "t15", split: str = "test") -> list[PostInput]:
    """The first ``n`` posts of ``<data_dir>/<dataset>/<split>.jsonl`` with their images loaded."""
    from PIL import Image

    root = Path(data_dir) / dataset
    posts = []
    with open(root / f"{split}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            image = None
            if row.get("image"):
                with Image.open(root / row["image"]) as im:
                    image = im.convert("RGB")
            posts.append(PostInput(row["text"], image=image, aspect=row.get("aspect"), id=row.get("id")))
            if len(posts) >= n:
                break
    return posts


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cuda():
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    return torch if torch.cuda.is_available() else None


def _run_mode(student: Student, posts: Sequence[PostInput], batch_size: int, chain: bool) -> dict:
    torch = _cuda()
    if torch is not None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    preds = []
    t0 = time.perf_counter()
    for i in range(0, len(posts), batch_size):
        preds += student.predict(posts[i : i + batch_size], chain=chain)
    if torch is not None:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    gen = sum(p.generated_tokens for p in preds)
    out = {
        "posts": len(preds),
        "seconds": round(wall, 4),
        "posts_per_s": round(len(preds) / wall, 3) if wall > 0 else None,
        "prompt_tokens_mean": round(sum(p.prompt_tokens for p in preds) / max(1, len(preds)), 1),
        "generated_tokens": gen,
        "generated_tokens_per_s": round(gen / wall, 1) if wall > 0 else None,
        "label_chain_agreement": None,
        "chains_parsed": None,
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch is not None else None,
    }
    with_chain = [p for p in preds if p.chain is not None]
    if with_chain:
        out["label_chain_agreement"] = sum(p.chain.prediction == p.label.value for p in with_chain) / len(with_chain)
        out["chains_parsed"] = sum(p.chain.parsed for p in with_chain) / len(with_chain)
    return out


def run_model_bench(
    spec: str = "default",
    posts: Sequence[PostInput] | None = None,
    *,
    batch_size: int = 8,
    image_size: int | None = None,
    n_posts: int = 32,
    max_new_tokens: int | None = None,
    warmup: int = 1,
    json_out: str | Path | None = None,
    print_table: bool = True,
    student: Student | None = None,
    **load_options: Any,
) -> dict:
    """Benchmark a student (``spec`` for ``load_student``, or an already loaded ``student``).

    ``posts``: the posts to run (default: ``synthetic_posts(n_posts)``). ``image_size`` and
    ``max_new_tokens`` are passed to the loader when given, with any other ``load_options``.
    Returns a dict with ``labels_only`` and ``label_chain`` sections (posts/s, tokens, agreement,
    chains parsed, CUDA peak) plus environment fields; writes it to ``json_out`` if given.
    """
    from .loading import load_student

    posts = list(posts) if posts is not None else synthetic_posts(n_posts)
    if not posts:
        raise ValueError("no posts to benchmark")
    batch_size = max(1, int(batch_size))
    opts = dict(load_options)
    if image_size is not None:
        opts["image_size"] = image_size
    if max_new_tokens is not None:
        opts["max_new_tokens"] = max_new_tokens
    t0 = time.perf_counter()
    student = student or load_student(spec, **opts)
    load_s = time.perf_counter() - t0
    for _ in range(max(0, warmup)):
        # every batch's shapes once (a GPU's first pass over new image shapes is slower), and
        # one batch with chains
        _run_mode(student, posts, batch_size, chain=False)
        student.predict(posts[:batch_size], chain=True)
    labels = _run_mode(student, posts, batch_size, chain=False)
    chains = _run_mode(student, posts, batch_size, chain=True)
    torch = _cuda()
    info = getattr(student, "info", {}) or {}
    result = {
        "spec": spec,
        "model": getattr(student, "name", spec),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(0) if torch is not None else f"CPU ({platform.processor() or platform.machine()})",
        "dtype": info.get("dtype"),
        "parameters": info.get("parameters"),
        "batch_size": batch_size,
        "image_size": getattr(student, "image_size", image_size),
        "max_new_tokens": getattr(student, "max_new_tokens", max_new_tokens),
        "posts": len(posts),
        "posts_with_image": sum(p.image is not None for p in posts),
        "load_seconds": round(load_s, 2),
        "labels_only": labels,
        "label_chain": chains,
        "peak_rss_mb": round(_rss_peak_mb(), 1),
    }
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2))
    if print_table:
        print_bench_table(result)
    return result


def print_bench_table(result: dict, console: Any = None) -> None:
    """Print a ``run_model_bench`` result as a rich table."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        console = Console(width=max(console.width, 112))
    title = (f"{result['model']} on {result['device']} - batch {result['batch_size']}, "
             f"image {result['image_size']}, {result['posts']} posts, {result['date']}")
    table = Table(title=title)
    for col in ("mode", "posts/s", "s", "prompt tok", "gen tok", "tok/s", "agree", "parsed", "CUDA MB"):
        table.add_column(col, justify="right" if col != "mode" else "left", no_wrap=col == "mode")

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.3g}" if isinstance(v, float) and v < 10 else str(v)

    for mode in ("labels_only", "label_chain"):
        r = result[mode]
        table.add_row({"labels_only": "labels-only", "label_chain": "label+chain"}[mode], fmt(r["posts_per_s"]), fmt(r["seconds"]), fmt(r["prompt_tokens_mean"]),
                      fmt(r["generated_tokens"]), fmt(r["generated_tokens_per_s"]),
                      fmt(r["label_chain_agreement"]), fmt(r["chains_parsed"]), fmt(r["cuda_peak_mb"]))
    console.print(table)
    console.print(f"peak RSS {result['peak_rss_mb']} MB, load {result['load_seconds']} s, "
                  f"params {result.get('parameters') or '-'}, dtype {result.get('dtype') or '-'}")



# --------------------------------------------------------------------------- CLI
@click.command("model")
@click.option("--model", "spec", default="default", show_default=True, help="student spec for model.load_student")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--posts", "n_posts", type=int, default=32, show_default=True, help="how many posts")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="use real posts (t15 test) from this data folder instead of synthetic ones")  # fmt: skip
@click.option("--dataset", default="t15", show_default=True,
              help="with --data-dir: the data set's folder (e.g. mvsa_single for post-level posts)")
@click.option("--split", default="test", show_default=True, help="with --data-dir: the split's file (e.g. dev)")
@click.option("--image-size", type=int, help="image side passed to the student")
@click.option("--max-new-tokens", type=int, help="chain token budget passed to the student")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="other load_student option, e.g. chain_decoder=generate (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of a table")
def bench_model(spec: str, batch_size: int, n_posts: int, data_dir: Path | None, dataset: str, split: str,
                image_size: int | None, max_new_tokens: int | None, options: tuple[str, ...],
                as_json: bool) -> None:  # fmt: skip
    """The student alone: labels-only and label+chain posts/s, tokens, agreement, memory
    (model.bench.run_model_bench; see docs/model.md)."""
    from .loading import load_error_message, parse_options

    try:
        opts = parse_options(options)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--option") from None
    posts = data_posts(data_dir, n_posts, dataset=dataset, split=split) if data_dir else None
    try:
        result = run_model_bench(spec, posts, batch_size=batch_size, n_posts=n_posts, image_size=image_size,
                                 max_new_tokens=max_new_tokens, print_table=not as_json, **opts)  # fmt: skip
    except Exception as exc:
        raise click.ClickException(load_error_message(spec, exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))


__all__ = ["bench_model", "run_model_bench", "synthetic_posts", "data_posts", "print_bench_table"]
