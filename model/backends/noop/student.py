"""A model-free student for measuring the pipeline's own ceiling (``mulcot bench stream``).

It does no inference: the label is derived from a hash of the text so results differ per
post, and the chain says plainly that no model ran. Never use it for real results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from ...chain import parse_chain
from ...prompts import PROMPT_VERSION
from ...types import LABELS, BaseStudent, Label, PostInput, Prediction, ReasoningChain


class NoopStudent(BaseStudent):
    name = "noop"
    version = "0"
    reads_pixels = False  # the stream checks image headers only (stream.images.check_image)

    def __init__(self, **_: object) -> None:
        # one (frozen) prediction per label, with and without its chain, shared by every post:
        # this student exists to measure the pipeline, so its own time per post stays near zero
        self._labelled = {
            label: self.label_prediction([0.8 if l is label else 0.1 for l in LABELS], prompt_version=PROMPT_VERSION)
            for label in LABELS
        }
        self._explained = {label: replace(pred, chain=_chain(label)) for label, pred in self._labelled.items()}

    def classify(self, batch: Sequence[PostInput]) -> list[Prediction]:
        return [self._labelled[LABELS[hashlib.blake2b(post.text.encode(), digest_size=1).digest()[0] % 3]] for post in batch]

    def explain(self, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction]:
        return [self._explained[pred.label] for pred in predictions]


def _chain(label: Label) -> ReasoningChain:
    """The fixed chain of a label, rendered and parsed like a model's output."""
    chain = ReasoningChain(
        text_analysis="no-op model: the text was not analysed",
        image_analysis="no-op model: the image was not analysed",
        conflict_resolution="no-op model: nothing to resolve",
        final_conclusion=f"no-op model: placeholder label {label.value}",
        prediction=label.value,
    )
    return parse_chain(chain.render())
