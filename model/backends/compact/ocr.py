"""Text printed in a post's picture, read with a packaged OCR model (RapidOCR: PaddleOCR's PP-OCRv4
detection and recognition networks as ONNX files inside the ``rapidocr-onnxruntime`` wheel).

The detector runs on every picture and is the cheap check: recognition runs only on the boxes it
finds. What is kept is what a reader can trust: boxes recognised with confidence >= ``min_score``,
mostly Latin letters or digits, at least two characters; glued words ("Thepeoplewillbelieve") are
split with ``wordninja``'s English word frequencies. A picture whose text is not kept gets no quote.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np

MIN_SCORE = 0.80
MAX_WORDS = 15
_LATIN = re.compile(r"[A-Za-z0-9]")
_PIECES = re.compile(r"[A-Za-z]+|[0-9]+(?:[.,:][0-9]+)*|[^A-Za-z0-9]+")


@dataclass(frozen=True)
class ImageText:
    text: str
    """The text read, normalised (spaces, glued words split), at most ``MAX_WORDS`` words."""
    score: float
    """The mean recognition confidence of the kept boxes."""
    boxes: int


class Reader:
    """A lazily loaded RapidOCR engine (thread-safe: one call at a time)."""

    def __init__(self, threads: int = 2, side: int = 480, min_score: float = MIN_SCORE) -> None:
        self.threads, self.side, self.min_score = threads, side, min_score
        self._engine = None
        self._lock = threading.Lock()

    def _load(self):
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR

            self._engine = RapidOCR(intra_op_num_threads=self.threads, inter_op_num_threads=1,
                                    det_limit_side_len=self.side, det_limit_type="max", use_cls=False)
        return self._engine

    def read(self, image) -> ImageText | None:
        """The text of a PIL image, or None when nothing legible is found."""
        arr = np.asarray(image.convert("RGB"))[:, :, ::-1].copy()  # RGB -> BGR, as OpenCV reads
        with self._lock:
            res, _ = self._load()(arr, use_cls=False)
        return normalise(res or [], self.min_score)


def _split(word: str) -> str:
    """A word the recogniser glued together ("257caloriesburned") split at digit/letter bounds and,
    for letter runs of 9 or more, into English words (wordninja)."""
    if len(word) < 9 or word[0] in "#@" or "/" in word:
        return word
    import wordninja

    out = []
    for piece in _PIECES.findall(word):
        if piece.isalpha() and len(piece) >= 9:
            out.extend(wordninja.split(piece) or [piece])
        elif out and not piece[0].isalnum():
            out[-1] += piece
        else:
            out.append(piece)
    return " ".join(out)


def normalise(res, min_score: float = MIN_SCORE) -> ImageText | None:
    """RapidOCR's ``[box, text, score]`` rows -> the text worth quoting (reading order: top to bottom,
    then left to right)."""
    rows = []
    for box, text, score in res:
        text = " ".join(str(text).split())
        letters = [c for c in text if not c.isspace()]
        if float(score) < min_score or len(letters) < 2:
            continue
        if sum(bool(_LATIN.match(c)) for c in letters) < 0.6 * len(letters):
            continue
        ys, xs = [p[1] for p in box], [p[0] for p in box]
        rows.append((min(ys), min(xs), max(ys) - min(ys), text, float(score)))
    if not rows:
        return None
    rows.sort(key=lambda r: (round(r[0] / max(r[2], 1)), r[1]))
    words = " ".join(_split(w) for r in rows for w in r[3].split()).split()
    return ImageText(" ".join(words[:MAX_WORDS]) + (" ..." if len(words) > MAX_WORDS else ""),
                     float(np.mean([r[4] for r in rows])), len(rows))
