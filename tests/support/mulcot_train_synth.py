"""Synthetic posts for the training tests: small JSONL datasets with Pillow-made images."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

TEXTS = {
    "positive": ["What a wonderful day with {a}, love it!", "{a} made me so happy today"],
    "neutral": ["{a} will speak at the event on Monday", "Photo of {a} at the station"],
    "negative": ["{a} is the worst, never again", "So angry at {a} right now"],
}
COLORS = {"positive": (230, 200, 40), "neutral": (128, 128, 128), "negative": (40, 40, 160)}


def teacher_chain(label: str, aspect: str) -> str:
    return (
        f'"Text_analysis": "The text talks about {aspect} in a {label} way."\n\n'
        f'"Image_analysis": "The image is a plain colour block that looks {label}."\n\n'
        f'"Conflict_resolution": "Text and image agree, so no conflict."\n\n'
        f'"Final_conclusion": "The sentiment toward {aspect} is {label}."\n\n'
        f'"Prediction": {label}'
    )


def write_dataset(folder: Path, n: int = 12, *, name: str = "data.jsonl", seed: int = 0,
                  chains: bool = True, image_size=(48, 40), text_only_every: int = 0) -> Path:
    """Write ``n`` synthetic posts (balanced labels) with images under ``folder/images``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    labels = ["positive", "neutral", "negative"]
    rows = []
    for i in range(n):
        label = labels[i % 3]
        aspect = rng.choice(["Obama", "Paris", "the team", "Tyga"])
        text = rng.choice(TEXTS[label]).format(a=aspect)
        image = None
        if not (text_only_every and i % text_only_every == 0):
            image = f"images/{seed}-{i}.jpg"
            w, h = image_size[0] + (i % 4) * 8, image_size[1]
            Image.new("RGB", (w, h), COLORS[label]).save(folder / image, quality=90)
        row = {"id": f"syn-{seed}-{i}", "text": text, "aspect": aspect, "label": label, "image": image}
        if chains:
            row["teacher_cot"] = teacher_chain(label, aspect)
            row["teacher"] = "synthetic"
        rows.append(row)
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
