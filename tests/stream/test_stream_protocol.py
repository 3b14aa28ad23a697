"""Wire schemas: validation rules, label/chain agreement, published JSON Schemas current."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream.protocol import Post, SentimentResult, json_schemas

ROOT = Path(__file__).resolve().parents[2]


def test_post_accepts_the_three_image_forms() -> None:
    assert not Post(id="a", text="hi").has_image
    assert Post(id="a", text="", image_b64="aGk=").image_bytes() == b"hi"
    assert Post(id="a", text="", image_b64="data:image/png;base64,aGk=").image_bytes() == b"hi"
    assert Post(id="a", text="x", image_url="https://example.org/x.jpg").has_image


@pytest.mark.parametrize(
    "body",
    [
        {"text": "no id"},
        {"id": "", "text": "blank id"},
        {"id": "   ", "text": "blank id"},
        {"id": "x" * 257, "text": "long id"},
        {"id": "a", "text": "x" * 10_001},
        {"id": "a", "text": "both", "image_b64": "aGk=", "image_url": "https://e.org/x"},
        {"id": "a", "text": "  "},
        {"id": "a", "text": "t", "metadata": {f"k{i}": i for i in range(40)}},
        {"id": "a", "text": "t", "metadata": {"k": "v" * 5000}},
        {"id": "a", "text": "t", "created_at": "not a date"},
    ],
)
def test_post_rejects(body: dict) -> None:
    with pytest.raises(ValidationError):
        Post.model_validate_json(json.dumps(body))


def test_bad_base64_is_an_error() -> None:
    with pytest.raises(ValueError, match="base64"):
        Post(id="a", text="t", image_b64="***").image_bytes()


def _result(**kw):  # type: ignore[no-untyped-def]
    base = dict(
        id="a", label="positive", confidence=0.8,
        probabilities={"positive": 0.8, "neutral": 0.1, "negative": 0.1},
        chain={"text_analysis": "t", "image_analysis": "i", "conflict_resolution": "c", "final_conclusion": "f",
               "prediction": "positive", "raw": "r"},
        model_name="m", model_version="1", timings={"queued_ms": 1, "inference_ms": 2, "end_to_end_ms": 3},
        processed_at=datetime.now(UTC),
    )  # fmt: skip
    base.update(kw)
    return SentimentResult(**base)


def test_result_label_and_chain_agree() -> None:
    assert _result().chain.prediction == "positive"
    with pytest.raises(ValidationError, match="disagrees"):
        _result(label="negative")
    assert _result(chain=None).chain is None


def test_published_schemas_are_current() -> None:
    folder = ROOT / "docs" / "schemas"
    for name, text in json_schemas().items():
        path = folder / name
        assert path.exists(), f"{path} missing: run `python -m stream.protocol --write docs/schemas`"
        assert path.read_text() == text, f"{path} is stale: run `python -m stream.protocol --write docs/schemas`"
