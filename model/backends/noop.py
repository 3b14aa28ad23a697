"""A model-free student for measuring the pipeline's own ceiling (``mulcot bench stream``).

It does no inference: the label is derived from a hash of the text so results differ per
post, and the chain says plainly that no model ran. Never use it for real results.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from ..chain import parse_chain
from ..prompts import PROMPT_VERSION
from ..types import LABELS, BaseStudent, PostInput, Prediction, ReasoningChain


class NoopStudent(BaseStudent):
    name = "noop"
    version = "0"
    reads_pixels = False  # the stream checks image headers only (stream.images.decode_image)

    def __init__(self, **_: object) -> None:
        pass

    def classify(self, batch: Sequence[PostInput]) -> list[Prediction]:
        out = []
        for post in batch:
            label = LABELS[hashlib.blake2b(post.text.encode(), digest_size=1).digest()[0] % 3]
            probs = [0.8 if l is label else 0.1 for l in LABELS]
            out.append(self.label_prediction(probs, prompt_version=PROMPT_VERSION))
        return out

    def explain(self, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction]:
        out = []
        for pred in predictions:
            chain = ReasoningChain(
                text_analysis="no-op model: the text was not analysed",
                image_analysis="no-op model: the image was not analysed",
                conflict_resolution="no-op model: nothing to resolve",
                final_conclusion=f"no-op model: placeholder label {pred.label.value}",
                prediction=pred.label.value,
            )
            chain = parse_chain(chain.render())
            out.append(Prediction(**{**pred.__dict__, "chain": chain}))
        return out
