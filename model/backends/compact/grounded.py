"""The chain fields that describe evidence, written from the evidence itself.

The compact student never sees pixels with its language model: what it knows about an image
is what the image encoder says (the top ImageNet-1k classes with their probabilities) and what
can be computed from the pixels directly (the dominant colours). A 135M chain writer trained on
a 72B teacher's descriptions will happily invent "a group of people enjoying a party" from the
text alone, so the two fields that speak about the image are not left to it:

* ``Image``: one sentence from the evidence (:func:`image_sentence`: the text read in the picture,
  ImageNet classes only where they are likely right, the colours), or :data:`NO_IMAGE`;
* ``Conflict``: one sentence comparing the classifier's text-only label with the label it gives
  with the image (:func:`conflict_sentence`); it names a conflict exactly when they differ.

The language model writes ``Text`` before these and ``Conclusion`` after them, with the two
grounded lines in its context (``model.backends.compact.student``). Claims are capped to the evidence:
classes are called guesses with their scores, colours are shares of pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_IMAGE = "There is no image with this post, so nothing can be said about one."
NO_IMAGE_CONFLICT = "There is no image to compare with, so the label rests on the text alone."
NO_IMAGE_START = "From the text alone,"
AGREE_START = "With the text and the image evidence agreeing,"
CONFLICT_START = "Going by the image evidence over the text,"
"""How the Conclusion line starts, forced by the backend: without an image (every chain writer),
and, for a chain writer trained on grounded targets (``ExplainerConfig.grounded_targets``), with
an image whose evidence agrees with the text or moves the decision (:func:`conclusion_start`)."""
CONFLICT_MARK = "Conflict between text and image:"
"""How a Conflict line that names a conflict starts (``names_conflict`` reads it)."""
AGREE_MARK = "No conflict:"

# colour names for hue ranges (degrees), checked in order after the grey/black/white tests
_HUES = ((15, "red"), (40, "orange"), (65, "yellow"), (165, "green"), (195, "cyan"), (255, "blue"),
         (290, "purple"), (345, "pink"), (361, "red"))


CLASS_MIN = None
"""The ImageNet probability from which the Image line names a class (None: never). Measured on 80
tweet pictures (40 MVSA-Single train, 40 Twitter-2015 train) that we looked at ourselves: the
top-1 class was right for 12 of 80; at top-1 >= 0.8 for 3 of 6, >= 0.9 for 0 of 2, >= 0.5 for 5 of
29. No threshold makes the classes right for tweet pictures most of the time (docs/model.md,
"What the Image line says"), so by default none are named; the classes still feed the classifier."""
OCR_FAILED = "the text in the picture could not be read (OCR failed)"


@dataclass(frozen=True)
class ImageEvidence:
    """What the student knows about one image."""

    classes: tuple[tuple[str, float], ...]
    """Top ImageNet-1k classes and their softmax probabilities, best first."""
    colours: tuple[tuple[str, float], ...] = ()
    """Dominant colour names and their share of the pixels, largest first."""
    text: str | None = None
    """Text read in the picture by OCR (normalised), or None when none was read."""
    text_score: float | None = None
    ocr: str = "off"
    """``"read"`` (text found), ``"none"`` (OCR ran, nothing legible), ``"off"``, or ``"failed"``."""

    def to_dict(self) -> dict:
        return {"classes": [[n, round(p, 4)] for n, p in self.classes],
                "colours": [[n, round(s, 4)] for n, s in self.colours],
                "text": self.text, "text_score": None if self.text_score is None else round(self.text_score, 4),
                "ocr": self.ocr}


def _colour_names(rgb: np.ndarray) -> np.ndarray:
    """A colour name for every pixel of an ``[n, 3]`` uint8 array."""
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(1), x.min(1)
    d = mx - mn
    s = np.where(mx > 0, d / np.maximum(mx, 1e-6), 0.0)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    safe = np.maximum(d, 1e-6)
    h = np.where(mx == r, (g - b) / safe % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    names = np.empty(len(x), dtype=object)
    hue_names = np.select([h < lim for lim, _ in _HUES], [n for _, n in _HUES], default="red")
    brownish = (mx < 0.65) & ((hue_names == "orange") | (hue_names == "red") | (hue_names == "yellow")) & (s > 0.3)
    names[:] = np.where(brownish, "brown", hue_names)
    names[(s < 0.18) | (d < 0.08)] = "grey"
    names[((s < 0.18) | (d < 0.08)) & (mx > 0.85)] = "white"
    names[mx < 0.18] = "black"
    return names


def dominant_colours(image, top: int = 2, min_share: float = 0.15, side: int = 24) -> tuple[tuple[str, float], ...]:
    """The ``top`` most common colour names of ``image`` (PIL) that cover at least ``min_share``
    of its pixels (on a ``side`` x ``side`` thumbnail: about a millisecond)."""
    from PIL import Image

    small = np.asarray(image.convert("RGB").resize((side, side), Image.BILINEAR)).reshape(-1, 3)
    names, counts = np.unique(_colour_names(small), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    out = [(str(names[i]), float(counts[i]) / len(small)) for i in order[:top]]
    return tuple((n, s) for n, s in out if s >= min_share)


def image_sentence(ev: ImageEvidence | None, class_min: float | None = CLASS_MIN) -> str:
    """The Image line: the text read in the picture, the ImageNet classes only where their
    probability reaches ``class_min`` (else that the content could not be recognised), then the
    colours."""
    if ev is None:
        return NO_IMAGE
    parts = []
    if ev.text:
        parts.append(f"The picture's text reads \"{ev.text}\"")
    sure = [(n, p) for n, p in ev.classes if class_min is not None and p >= class_min]
    if sure:
        parts.append("the image classifier recognises " + _or([f"{n} ({p:.2f})" for n, p in sure]))
    else:
        parts.append("its content could not be recognised" if parts else "The picture's content could not be recognised")
    if ev.ocr == "failed":
        parts.append(OCR_FAILED)
    out = "; ".join(parts)
    if ev.colours:
        out += "; the main colours are " + " and ".join(f"{n} ({round(100 * s)}%)" for n, s in ev.colours)
    return out + "."


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" or {items[-1]}"


def conflict_sentence(label: str, probs: dict[str, float] | None, text_label: str | None,
                      text_probs: dict[str, float] | None) -> str:
    """The Conflict line from the classifier's text-only and multimodal predictions (``text_label``
    None: the post has no image)."""
    if text_label is None or probs is None or text_probs is None:
        return NO_IMAGE_CONFLICT
    if text_label == label:
        return (f"{AGREE_MARK} the text alone reads {label} ({text_probs[label]:.2f}), and with the "
                f"image evidence the classifier still says {label} ({probs[label]:.2f}).")
    return (f"{CONFLICT_MARK} the text alone reads {text_label} ({text_probs[text_label]:.2f}), but with "
            f"the image evidence the classifier says {label} ({probs[label]:.2f}), so the image moved the "
            f"decision from {text_label} to {label}.")


EVIDENCE_CONCLUSION_VERSION = "evidence-conclusion-1"
"""The prompt-version tag of chains whose Conclusion :func:`evidence_conclusion` wrote."""


def evidence_conclusion(has_image: bool, label: str, probs: dict[str, float] | None, aspect: str | None,
                        quotes: list[str] | None, text_label: str | None = None,
                        text_probs: dict[str, float] | None = None) -> str:
    """The Conclusion line written from the evidence (``conclusion="evidence"``, the default): the
    forced start (:func:`conclusion_start` of a grounded writer), the label with its probability, and
    what carried it: the cited words, or the text-only reading the image evidence overrode. Says
    nothing that the Text, Image and Conflict lines do not already show."""
    conflict = text_label is not None and text_label != label
    start = conclusion_start(has_image, conflict, True)
    target = f"towards '{aspect}'" if aspect else "of the post"
    p = f" ({probs[label]:.2f})" if probs and label in probs else ""
    out = f"{start} the sentiment {target} is {label}{p}"
    if conflict and text_probs:
        out += f", where the text alone reads {text_label} ({text_probs[text_label]:.2f})"
    elif quotes:
        from .attribution import listing

        out += f", carried most by {listing(quotes)}"
    elif quotes is not None:
        out += ", with no word of the text weighing much"
    return out + "."


def conclusion_start(has_image: bool, conflict: bool, grounded: bool) -> str:
    """The forced start of the Conclusion line: :data:`NO_IMAGE_START` without an image; with one,
    :data:`CONFLICT_START` or :data:`AGREE_START` from the Conflict line when the chain writer was
    trained on grounded targets (``grounded``), else nothing."""
    if not has_image:
        return NO_IMAGE_START
    if not grounded:
        return ""
    return CONFLICT_START if conflict else AGREE_START
