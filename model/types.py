"""Plain data types shared by every student backend, the stream and the training code.

Nothing here knows about Kafka, Redis or a particular model family.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


class Label(str, enum.Enum):
    """The three sentiment classes of MulCoT-RD (MSC and MASC)."""

    POSITIVE = "positive"
    NEUTRAL = "neutral"
    NEGATIVE = "negative"

    @classmethod
    def parse(cls, value: str) -> Label:
        """Case- and whitespace-insensitive lookup; raises ValueError on anything else."""
        v = str(value).strip().strip("\"'*.,:;").lower()
        for label in cls:
            if v == label.value:
                return label
        raise ValueError(f"not a sentiment label: {value!r} (expected one of {[l.value for l in cls]})")

    def __str__(self) -> str:  # "positive", not "Label.POSITIVE"
        return self.value


#: Fixed order of the label space; probability vectors and classifier heads use it.
LABELS: tuple[Label, ...] = (Label.POSITIVE, Label.NEUTRAL, Label.NEGATIVE)

#: The five chain fields of the MulCoT-RD method (docs/model.md), in the order models write them.
CHAIN_FIELDS: tuple[str, ...] = (
    "Text_analysis",
    "Image_analysis",
    "Conflict_resolution",
    "Final_conclusion",
    "Prediction",
)


@dataclass(frozen=True)
class PostInput:
    """One post as a model sees it: text, an optional decoded RGB image, an optional aspect."""

    text: str
    image: Image.Image | None = None
    aspect: str | None = None
    id: str | None = None

    @property
    def task(self) -> str:
        """``"aspect"`` (MASC, a target is given) or ``"post"`` (MSC)."""
        return "aspect" if self.aspect else "post"


@dataclass(frozen=True)
class ReasoningChain:
    """A five-field reasoning chain plus the raw text the model produced.

    ``parsed`` is False when the raw text could not be read into all five fields; the
    fields that could be read are still filled, the others are empty strings.
    """

    text_analysis: str = ""
    image_analysis: str = ""
    conflict_resolution: str = ""
    final_conclusion: str = ""
    prediction: str = ""
    raw: str = ""
    parsed: bool = False
    missing: tuple[str, ...] = ()

    def with_prediction(self, label: Label) -> ReasoningChain:
        """Return a copy whose ``Prediction`` field is ``label`` (the published label)."""
        return replace(self, prediction=label.value)

    def fields(self) -> dict[str, str]:
        """The five fields keyed by their names in :data:`CHAIN_FIELDS`."""
        return {
            "Text_analysis": self.text_analysis,
            "Image_analysis": self.image_analysis,
            "Conflict_resolution": self.conflict_resolution,
            "Final_conclusion": self.final_conclusion,
            "Prediction": self.prediction,
        }

    def render(self) -> str:
        """The canonical text form (the teacher's format), used for training targets and display."""
        parts = [f'"{k}": "{v}"' for k, v in self.fields().items() if k != "Prediction"]
        parts.append(f'"Prediction": {self.prediction}')
        return "\n\n".join(parts)


@dataclass(frozen=True)
class Prediction:
    """What a student returns for one post.

    Invariant (checked in ``__post_init__``): when a chain is present, its ``prediction``
    field equals ``label``.
    """

    label: Label
    probabilities: dict[str, float]
    chain: ReasoningChain | None = None
    model_name: str = ""
    model_version: str = ""
    prompt_version: str = ""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    label_ms: float = 0.0
    chain_ms: float = 0.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.probabilities) != {l.value for l in LABELS}:
            raise ValueError(f"probabilities must cover {[l.value for l in LABELS]}, got {sorted(self.probabilities)}")
        if self.chain is not None and self.chain.prediction != self.label.value:
            raise ValueError(
                f"chain prediction {self.chain.prediction!r} disagrees with label {self.label.value!r}"
            )

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.label.value])


@runtime_checkable
class Student(Protocol):
    """What the stream and the training code call. Backends live in ``model.backends``.

    ``classify`` gives label + probabilities only (fast path, "labels only" and the early
    label of "label first"); ``explain`` adds the chain to predictions from ``classify``;
    ``predict`` does both.
    """

    name: str
    version: str
    reads_pixels: bool
    """False for students that never look at an image's pixels (the no-op student): the
    stream then checks image headers only, decodes nothing and passes ``image=None``."""

    def classify(self, batch: Sequence[PostInput]) -> list[Prediction]: ...

    def explain(self, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction]: ...

    def predict(self, batch: Sequence[PostInput], *, chain: bool = True) -> list[Prediction]: ...


class BaseStudent:
    """Shared ``predict`` for backends that implement ``classify`` and ``explain``."""

    name: str = "student"
    version: str = "0"
    reads_pixels: bool = True

    def classify(self, batch: Sequence[PostInput]) -> list[Prediction]:  # pragma: no cover - abstract
        raise NotImplementedError

    def label_prediction(self, probs: Sequence[float], *, prompt_version: str, prompt_tokens: int = 0,
                         label_ms: float = 0.0, extra: dict | None = None) -> Prediction:
        """A chain-less prediction of this student from a probability vector in ``LABELS`` order
        (the most probable label is the label)."""
        probs = list(probs)
        return Prediction(
            label=LABELS[max(range(len(LABELS)), key=probs.__getitem__)],
            probabilities=probabilities_dict(probs),
            model_name=self.name,
            model_version=self.version,
            prompt_version=prompt_version,
            prompt_tokens=prompt_tokens,
            label_ms=label_ms,
            extra=extra or {},
        )

    def explain(self, batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[Prediction]:
        raise NotImplementedError  # pragma: no cover - abstract

    @staticmethod
    def explain_inputs(batch: Sequence[PostInput], predictions: Sequence[Prediction]) -> list[PostInput]:
        """``batch`` as a list, checked to pair one to one with ``predictions`` (ValueError)."""
        batch = list(batch)
        if len(batch) != len(predictions):
            raise ValueError("batch and predictions differ in length")
        return batch

    def predict(self, batch: Sequence[PostInput], *, chain: bool = True) -> list[Prediction]:
        batch = list(batch)
        if not batch:
            return []
        preds = self.classify(batch)
        return self.explain(batch, preds) if chain else preds


def probabilities_dict(probs: Sequence[float]) -> dict[str, float]:
    """Map a vector in ``LABELS`` order to ``{"positive": p, ...}`` (floats, summing to 1)."""
    total = float(sum(probs)) or 1.0
    return {label.value: float(p) / total for label, p in zip(LABELS, probs)}
