"""A test student whose label is known per post: it reads the label from a marker in the post's
text (``[label:negative]``; posts without one are neutral). The worker loads it with the spec
``py:tests.support.label_student:LabelStudent`` (the ``py:`` kind of ``model/loading.py``), so
a live test knows every result's label in advance (the alert tests' surges).

The marker is in the text because the text is what reaches a student: ``model.PostInput``
carries text, image, aspect and id, not the post's metadata (``model`` knows nothing of the
wire format).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from model.chain import parse_chain
from model.types import LABELS, BaseStudent, Label, PostInput, Prediction, ReasoningChain

MARK = re.compile(r"\[label:(positive|neutral|negative)\]")


def marked(text: str, label: str) -> str:
    """``text`` with the marker that makes this student answer ``label``."""
    return f"[label:{label}] {text}"


class LabelStudent(BaseStudent):
    name = "label-from-text"
    version = "1"
    reads_pixels = False

    def __init__(self, **_: object) -> None:
        self._preds = {
            label: self.label_prediction([0.9 if l is label else 0.05 for l in LABELS], prompt_version="test/1")
            for label in LABELS
        }

    def classify(self, batch: Sequence[PostInput]) -> list[Prediction]:
        out = []
        for post in batch:
            m = MARK.search(post.text or "")
            out.append(self._preds[Label(m.group(1)) if m else Label.NEUTRAL])
        return out

    def explain(self, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction]:
        from dataclasses import replace

        return [replace(pred, chain=_chain(pred.label)) for pred in predictions]


def _chain(label: Label) -> ReasoningChain:
    chain = ReasoningChain(
        text_analysis="test student: the label is read from the text's marker",
        image_analysis="test student: the image was not analysed",
        conflict_resolution="test student: nothing to resolve",
        final_conclusion=f"test student: the marker says {label.value}",
        prediction=label.value,
    )
    return parse_chain(chain.render())
