"""The OCR check set (issue 22): text drawn with Pillow in several fonts, sizes and colours over real
tweet photos from ../shared/data, plus real photos with no text in them.

The text-free photos are ones a person looked at (2026-12-01, docs/model.md "Reading text in the
picture"): Twitter-2015 and MVSA-Single *train* pictures without legible text. The phrases are
written here; nothing is drawn from a held-out split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TEXT_FREE = [
    "mvsa_single/images/3654.jpg", "mvsa_single/images/4287.jpg", "mvsa_single/images/4075.jpg",
    "mvsa_single/images/3992.jpg", "mvsa_single/images/377.jpg", "mvsa_single/images/1095.jpg",
    "mvsa_single/images/510.jpg", "mvsa_single/images/3822.jpg", "mvsa_single/images/4501.jpg",
    "mvsa_single/images/2095.jpg", "mvsa_single/images/700.jpg", "mvsa_single/images/2870.jpg",
    "mvsa_single/images/4136.jpg", "mvsa_single/images/3180.jpg", "mvsa_single/images/5117.jpg",
    "mvsa_single/images/1468.jpg", "mvsa_single/images/3460.jpg", "mvsa_single/images/71.jpg",
    "mvsa_single/images/3871.jpg", "mvsa_single/images/486.jpg", "t15/images/684715.jpg",
    "t15/images/13946.jpg", "t15/images/35028.jpg", "t15/images/705716.jpg", "t15/images/65245.jpg",
    "t15/images/678516.jpg", "t15/images/13468.jpg", "t15/images/1076865.jpg", "t15/images/410848.jpg",
    "t15/images/1107854.jpg", "t15/images/62362.jpg", "t15/images/810527.jpg", "t15/images/303930.jpg",
    "t15/images/93980.jpg", "t15/images/31915.jpg", "t15/images/48637.jpg", "t15/images/70606.jpg",
    "t15/images/74707.jpg", "t15/images/698417.jpg", "t15/images/811385.jpg",
]
PHRASES = [
    "worst day ever", "best day of my life", "never again", "sold out tonight", "we are hiring",
    "thank you all", "happy birthday mom", "closed until further notice", "keep calm and carry on",
    "game over", "so proud of you", "back to school sale", "what a win", "not impressed",
    "free coffee friday", "stay strong", "flight delayed again", "love this place", "grand opening",
    "vote no", "good vibes only", "lost my keys again", "new album out now", "rain all week",
]
FONTS = ["DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSans.ttf",
         "DejaVuSerif-Bold.ttf"]
STYLES = [  # (fill, stroke, stroke width, box behind the text)
    ("white", "black", 2, None), ("black", None, 0, "white"), ("yellow", "black", 2, None),
    ("white", None, 0, (20, 20, 20)), ("red", "white", 1, None),
]


@dataclass(frozen=True)
class Case:
    image: Image.Image
    text: str | None
    """The drawn text, or None for a text-free photo."""
    what: str


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def draw_text(photo: Image.Image, text: str, rng: random.Random, font_name: str, size: int, style) -> Image.Image:
    im = photo.convert("RGB").copy()
    im.thumbnail((320, 320))
    d = ImageDraw.Draw(im)
    f = font(font_name, size)
    while d.textlength(text, font=f) > im.width - 16 and size > 12:
        size -= 2
        f = font(font_name, size)
    w, h = d.textlength(text, font=f), size
    x = rng.randint(8, max(8, int(im.width - w - 8)))
    y = rng.randint(8, max(8, im.height - h - 12))
    fill, stroke, sw, box = style
    if box is not None:
        d.rectangle([x - 6, y - 4, x + w + 6, y + h + 8], fill=box)
    d.text((x, y), text, font=f, fill=fill, stroke_width=sw, stroke_fill=stroke)
    return im


def cases(data_dir: Path, n_text: int = 30, seed: int = 22) -> list[Case]:
    """``n_text`` photos with drawn text (cycling fonts, sizes 18-34 px and styles) and every text-free
    photo as it is."""
    rng = random.Random(seed)
    photos = [Image.open(data_dir / p).convert("RGB") for p in TEXT_FREE]
    out = []
    for i in range(n_text):
        text = PHRASES[i % len(PHRASES)]
        fn, style, size = FONTS[i % len(FONTS)], STYLES[i % len(STYLES)], 18 + 4 * (i % 5)
        out.append(Case(draw_text(photos[i % len(photos)], text, rng, fn, size, style), text,
                        f"{fn} {size}px style {i % len(STYLES)}"))
    out += [Case(p, None, f"text-free {name}") for p, name in zip(photos, TEXT_FREE)]
    return out


def char_accuracy(gold: str, got: str) -> float:
    """1 - the character error rate of ``got`` against ``gold``, compared lower-cased with runs of
    spaces and punctuation folded (difflib ratio over the two strings)."""
    import difflib
    import re

    def norm(s: str) -> str:
        return " ".join(re.sub(r"[^a-z0-9]+", " ", s.lower()).split())

    return difflib.SequenceMatcher(None, norm(gold), norm(got)).ratio()
