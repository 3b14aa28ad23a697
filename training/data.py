"""Datasets in the JSON Lines format of ``../shared/data`` (and the same format from users).

One post a line: ``id``, ``text``, ``aspect`` (or null), ``label``, ``image`` (path relative to
the file's folder, or null), optional ``teacher_cot`` and ``teacher``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
