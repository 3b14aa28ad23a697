"""Datasets in the JSON Lines format of ``../shared/data`` (and the same format from users).

One post a line: ``id``, ``text``, ``aspect`` (or null), ``label``, ``image`` (path relative to
the file's folder, or null), optional ``teacher_cot`` and ``teacher``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from model import Label, PostInput

#: Where the research data lives relative to the project root; ``MULCOT_DATA_DIR`` overrides.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_dir() -> Path:
    return Path(os.environ.get("MULCOT_DATA_DIR", DEFAULT_DATA_DIR))


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: Label | None
    aspect: str | None = None
    image_path: Path | None = None
    teacher_cot: str | None = None
    teacher: str | None = None

    def load_image(self, max_side: int | None = None) -> Image.Image | None:
        """The image as RGB (EXIF orientation applied), or None for text-only posts."""
        if self.image_path is None:
            return None
        with Image.open(self.image_path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            if max_side and max(im.size) > max_side:
                im.thumbnail((max_side, max_side))
            return im

    def post(self, *, with_image: bool = True, max_side: int | None = None) -> PostInput:
        return PostInput(
            text=self.text,
            aspect=self.aspect,
            image=self.load_image(max_side) if with_image else None,
            id=self.id,
        )


def read_jsonl(path: str | Path) -> Iterator[dict]:
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from None


def load_examples(path: str | Path, *, limit: int | None = None) -> list[Example]:
    """Read a JSONL dataset; image paths are resolved against the file's folder."""
    path = Path(path)
    out: list[Example] = []
    for row in read_jsonl(path):
        try:
            label = Label.parse(row["label"]) if row.get("label") else None
            image = row.get("image")
            out.append(
                Example(
                    id=str(row["id"]),
                    text=str(row.get("text") or ""),
                    label=label,
                    aspect=row.get("aspect") or None,
                    image_path=(path.parent / image) if image else None,
                    teacher_cot=row.get("teacher_cot") or None,
                    teacher=row.get("teacher") or None,
                )
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: row {len(out) + 1}: {e}") from None
        if limit and len(out) >= limit:
            break
    return out


# ----------------------------------------------------------------------------- splits and stats
# (added for the training stages; the functions above are the stable API)


def resolve_data_path(spec: str | Path) -> Path:
    """A JSONL path, or a split name relative to :func:`data_dir` such as ``t15/dev``."""
    p = Path(spec)
    if p.exists():
        return p
    candidate = data_dir() / (str(spec) if str(spec).endswith(".jsonl") else f"{spec}.jsonl")
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"no dataset at {spec!r} (nor {candidate})")


def split_examples(examples: list[Example], dev_fraction: float = 0.1, seed: int = 0
                   ) -> tuple[list[Example], list[Example]]:
    """A stratified (by label) random train/dev split; deterministic for a seed."""
    import random

    rng = random.Random(seed)
    by_label: dict[object, list[Example]] = {}
    for ex in examples:
        by_label.setdefault(ex.label, []).append(ex)
    train: list[Example] = []
    dev: list[Example] = []
    for key in sorted(by_label, key=lambda k: str(k)):
        group = list(by_label[key])
        rng.shuffle(group)
        k = int(round(len(group) * dev_fraction))
        dev += group[:k]
        train += group[k:]
    return train, dev


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except (OSError, ValueError):
        return None


def dataset_stats(source: str | Path | list[Example], *, image_sizes: bool = True) -> dict:
    """Facts about a dataset for its card: counts, label balance, images, texts, chains."""
    from statistics import median

    from model import chain_label, parse_chain

    examples = load_examples(source) if isinstance(source, (str, Path)) else list(source)
    n = len(examples)
    labels: dict[str, int] = {l.value: 0 for l in Label}
    unlabeled = 0
    for ex in examples:
        if ex.label is None:
            unlabeled += 1
        else:
            labels[ex.label.value] += 1
    ids = [ex.id for ex in examples]
    words = [len(ex.text.split()) for ex in examples]
    with_image = [ex for ex in examples if ex.image_path is not None]
    sizes = []
    missing = 0
    if image_sizes:
        for ex in with_image:
            s = _image_size(ex.image_path)
            if s is None:
                missing += 1
            else:
                sizes.append(s)
    chains = [ex for ex in examples if ex.teacher_cot]
    parsed = agree = 0
    for ex in chains:
        ch = parse_chain(ex.teacher_cot)
        parsed += ch.parsed
        try:
            agree += ex.label is not None and chain_label(ch) == ex.label
        except ValueError:
            pass

    def summary(values: list[float]) -> dict | None:
        if not values:
            return None
        return {"min": min(values), "median": median(values), "mean": sum(values) / len(values), "max": max(values)}

    return {
        "n": n,
        "labels": labels,
        "label_share": {k: (v / (n - unlabeled) if n - unlabeled else 0.0) for k, v in labels.items()},
        "unlabeled": unlabeled,
        "duplicate_ids": n - len(set(ids)),
        "with_aspect": sum(1 for ex in examples if ex.aspect),
        "with_image": len(with_image),
        "missing_images": missing,
        "image_width": summary([w for w, _ in sizes]),
        "image_height": summary([h for _, h in sizes]),
        "text_words": summary(words),
        "with_teacher_cot": len(chains),
        "chain_parse_rate": (parsed / len(chains)) if chains else None,
        "chain_gold_agreement": (agree / len(chains)) if chains else None,
        "teachers": sorted({ex.teacher for ex in chains if ex.teacher}),
    }


def print_dataset_card(stats: dict, title: str = "dataset", console=None) -> None:
    """Render :func:`dataset_stats` output as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"dataset card: {title}")
    t.add_column("field")
    t.add_column("value", justify="right")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def rng(s: dict | None) -> str:
        return "-" if not s else f"{s['min']:.0f} / {s['median']:.0f} / {s['max']:.0f}"

    t.add_row("posts", str(stats["n"]))
    for k, v in stats["labels"].items():
        t.add_row(f"  {k}", f"{v} ({pct(stats['label_share'][k])})")
    if stats["unlabeled"]:
        t.add_row("  unlabeled", str(stats["unlabeled"]))
    t.add_row("duplicate ids", str(stats["duplicate_ids"]))
    t.add_row("with aspect (MASC)", str(stats["with_aspect"]))
    t.add_row("with image", str(stats["with_image"]))
    t.add_row("missing/unreadable images", str(stats["missing_images"]))
    t.add_row("image width min/median/max", rng(stats["image_width"]))
    t.add_row("image height min/median/max", rng(stats["image_height"]))
    t.add_row("text words min/median/max", rng(stats["text_words"]))
    t.add_row("with teacher chain", str(stats["with_teacher_cot"]))
    t.add_row("chain parse rate (5 fields)", pct(stats["chain_parse_rate"]))
    t.add_row("chain prediction = gold", pct(stats["chain_gold_agreement"]))
    if stats["teachers"]:
        t.add_row("teachers", ", ".join(stats["teachers"]))
    console.print(t)
