"""Student inference for mulcot-stream: types, prompts, chain parsing and backends.

This package knows nothing of Kafka or Redis; ``stream`` and ``training`` both build on it.
"""

from .chain import chain_label, parse_chain
from .loading import SpecError, load_student, parse_spec
from .prompts import PROMPT_VERSION
from .types import (
    CHAIN_FIELDS,
    LABELS,
    BaseStudent,
    Label,
    PostInput,
    Prediction,
    ReasoningChain,
    Student,
    probabilities_dict,
)

__all__ = [
    "CHAIN_FIELDS",
    "LABELS",
    "PROMPT_VERSION",
    "BaseStudent",
    "Label",
    "PostInput",
    "Prediction",
    "ReasoningChain",
    "SpecError",
    "Student",
    "chain_label",
    "load_student",
    "parse_chain",
    "parse_spec",
    "probabilities_dict",
]
