"""Wire schemas of the stream (pydantic v2): what goes on the Kafka topics and into Redis.

* :class:`Post` - a record of the input topic (key: post id, value: JSON);
* :class:`SentimentResult` - a record of the output topic and the value of ``result:{id}``;
* :class:`DeadLetter` - a record of the dead-letter topic;
* :class:`Alert` - a sentiment-shift alert of the alerts topic (key: the alert id) and the value
  of Redis ``alert:{id}`` (``stream/alerts``, docs/alerts.md).

Serving logic lives elsewhere; this module only describes the data. JSON Schemas of the
four are published in ``docs/schemas/`` (``python -m stream.protocol --write docs/schemas``;
a test checks they are current).
"""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1
MAX_ID = 256
MAX_TEXT = 10_000
MAX_METADATA_KEYS = 32
MAX_METADATA_BYTES = 4096
_BASE64 = TypeAdapter(bytes, config=ConfigDict(val_json_bytes="base64"))

LabelName = Literal["positive", "neutral", "negative"]


def schema_message(exc: ValidationError, most: int = 5) -> str:
    """The first ``most`` errors of a validation failure in one line (``loc: msg; ...``)."""
    parts = []
    for err in exc.errors()[:most]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "post"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def utcnow() -> datetime:
    return datetime.now(UTC)


class ErrorCode(str, enum.Enum):
    """Why a record went to the dead-letter topic (a fixed list; consumers may switch on it)."""

    INVALID_JSON = "invalid_json"  # value is not UTF-8 JSON (or not an object)
    SCHEMA = "schema"  # JSON that does not match Post (missing id, text too long, bad base64, ...)
    UNSUPPORTED_VERSION = "unsupported_version"  # schema_version this worker does not know
    IMAGE_TOO_LARGE = "image_too_large"  # encoded bytes or decoded pixels over the limits
    IMAGE_UNREADABLE = "image_unreadable"  # bytes that Pillow cannot decode, or a format other than JPEG/PNG/WebP/GIF
    IMAGE_FETCH_FAILED = "image_fetch_failed"  # URL fetch failed (HTTP error, timeout, refused)
    IMAGE_URL_FORBIDDEN = "image_url_forbidden"  # scheme/host not allowed, private address (SSRF)
    MODEL_ERROR = "model_error"  # the student raised for this post
    PUBLISH_FAILED = "publish_failed"  # the result was refused for good by Kafka (e.g. too large)


class Post(BaseModel):
    """An image-text post on the input topic.

    The image is exactly one of: inline bytes (``image_b64``, base64), a URL
    (``image_url``; ``https``/``http``, ``file`` only where the worker allows it), or none
    (a text-only post). A post needs text or an image.
    """

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    schema_version: int = Field(SCHEMA_VERSION, description="version of this schema; 1")
    id: str = Field(..., min_length=1, max_length=MAX_ID, description="unique post id (also the Kafka key)")
    text: str = Field("", max_length=MAX_TEXT, description="the post's text")
    aspect: str | None = Field(None, max_length=MAX_ID, description="target of the sentiment (aspect-level), or null")
    image_b64: str | None = Field(
        None, description="inline image bytes, base64 (standard or URL-safe alphabet, padding optional; JPEG/PNG/WebP/GIF)"
    )
    image_url: str | None = Field(None, max_length=2048, description="image URL (https/http; file where enabled)")
    author: str | None = Field(None, max_length=MAX_ID)
    created_at: datetime | None = Field(None, description="when the post was written (ISO 8601)")
    lang: str | None = Field(None, max_length=16, description="language tag, e.g. en")
    metadata: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description=f"small free-form dict (<= {MAX_METADATA_KEYS} keys, {MAX_METADATA_BYTES} bytes)"
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("id is blank")
        if any(ord(c) < 32 for c in v):
            raise ValueError("id contains control characters")
        return v

    @field_validator("aspect")
    @classmethod
    def _aspect(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        return v or None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict) -> dict:
        if len(v) > MAX_METADATA_KEYS:
            raise ValueError(f"metadata has {len(v)} keys (max {MAX_METADATA_KEYS})")
        if len(json.dumps(v, default=str)) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
        return v

    @field_validator("image_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        return v.strip()

    @model_validator(mode="after")
    def _image(self) -> Post:
        if self.image_b64 is not None and self.image_url is not None:
            raise ValueError("give at most one of image_b64 and image_url")
        if self.image_b64 == "":
            self.image_b64 = None
        if not self.text.strip() and self.image_b64 is None and self.image_url is None:
            raise ValueError("post has neither text nor image")
        return self

    def image_bytes(self) -> bytes | None:
        """Decode ``image_b64`` (also accepts a ``data:...;base64,`` prefix); ValueError if invalid."""
        if self.image_b64 is None:
            return None
        data = self.image_b64
        if data.startswith("data:"):
            data = data.partition(",")[2]
        try:
            # pydantic-core decodes in Rust, about 10x faster than the base64 module on 20 KB
            # images (docs/benchmarks.md); the quotes are safe: no base64 character needs escaping
            return _BASE64.validate_json(b'"' + data.encode("ascii") + b'"')
        except (UnicodeEncodeError, ValidationError):
            raise ValueError("image_b64 is not valid base64") from None

    @property
    def has_image(self) -> bool:
        return self.image_b64 is not None or self.image_url is not None


class Probabilities(BaseModel):
    positive: float = Field(..., ge=0, le=1)
    neutral: float = Field(..., ge=0, le=1)
    negative: float = Field(..., ge=0, le=1)


class Chain(BaseModel):
    """The five-field reasoning chain (docs/model.md) plus the raw text the model wrote."""

    text_analysis: str
    image_analysis: str
    conflict_resolution: str
    final_conclusion: str
    prediction: LabelName
    raw: str = ""
    parsed: bool = Field(True, description="False when the raw text did not parse into all five fields")


class Timings(BaseModel):
    queued_ms: float = Field(..., description="record timestamp -> batch start")
    inference_ms: float = Field(..., description="model time of the batch this post was in")
    end_to_end_ms: float = Field(..., description="record timestamp -> result ready to publish")


class SourceRef(BaseModel):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


class SentimentResult(BaseModel):
    """A record of the output topic (key: post id) and the value of Redis ``result:{id}``.

    ``chain.prediction`` always equals ``label`` (validated).
    """

    schema_version: int = SCHEMA_VERSION
    id: str
    aspect: str | None = None
    label: LabelName
    confidence: float = Field(..., ge=0, le=1, description="probability of the label")
    probabilities: Probabilities
    chain: Chain | None = Field(None, description="null when the worker runs labels-only")
    model_name: str
    model_version: str
    prompt_version: str = ""
    has_image: bool = False
    timings: Timings
    processed_at: datetime
    source: SourceRef | None = Field(None, description="the input record this result is for")
    worker: str = Field("", description="host:pid of the worker that produced it")

    @model_validator(mode="after")
    def _agree(self) -> SentimentResult:
        if self.chain is not None and self.chain.prediction != self.label:
            raise ValueError(f"chain prediction {self.chain.prediction!r} disagrees with label {self.label!r}")
        return self


class Original(BaseModel):
    """The original record value: inline (base64) when small, else a reference to the source record."""

    size: int
    sha256: str
    data_b64: str | None = Field(None, description="the original bytes, base64; null when too large")
    ref: str | None = Field(None, description="kafka://topic/partition/offset when the bytes are not inline")


class DeadLetter(BaseModel):
    """A record of the dead-letter topic.

    Kafka key: the post id when known; else the input record's key when it is UTF-8 of at
    most 256 bytes; else ``topic/partition/offset`` of the input record.
    """

    schema_version: int = SCHEMA_VERSION
    error: ErrorCode
    message: str = Field(..., description="human-readable reason (at most 2000 characters)")
    post_id: str | None = None
    key: str | None = Field(
        None, description="the input record's key, UTF-8 (replacement chars if not); null when over 1024 bytes"
    )
    oversized_key: Original | None = Field(
        None, description="set instead of key when the input key is over 1024 bytes: size, sha256 and ref"
    )
    source: SourceRef
    original: Original
    first_seen_at: datetime
    worker: str = ""


AlertKind = Literal["negative_shift", "positive_shift", "volume_spike"]
ALERT_KINDS: tuple[str, ...] = ("negative_shift", "positive_shift", "volume_spike")


class AlertFigures(BaseModel):
    """Posts of one scope over a stretch of event time (the tested window, or its baseline)."""

    start_ms: int = Field(..., description="start of the stretch, event time (epoch ms, inclusive)")
    end_ms: int = Field(..., description="end of the stretch, event time (epoch ms, exclusive)")
    count: int = Field(..., ge=0, description="posts of the scope in the stretch")
    positive: int = Field(..., ge=0)
    neutral: int = Field(..., ge=0)
    negative: int = Field(..., ge=0)
    share: float | None = Field(
        None, ge=0, le=1, description="share of the tested label (negative_shift: negative, positive_shift: positive); null for volume_spike"
    )
    per_hour: float = Field(..., ge=0, description="posts per hour over the stretch")


class Alert(BaseModel):
    """A sentiment-shift alert: one scope (all posts, or one aspect) whose share of negative or
    positive posts, or whose volume, in one event-time window departs from its trailing
    baseline beyond chance (docs/alerts.md). Key on the alerts topic and in Redis: ``id``, a
    function of (kind, window, scope) only, so a restart or a second detector publishes the same
    key with the same value."""

    schema_version: int = SCHEMA_VERSION
    id: str = Field(..., description="`{kind}:{window_s}s:{window_start_ms}:all` or `...:aspect:{aspect}`")
    kind: AlertKind = Field(..., description="negative_shift / positive_shift: that label's share rose; volume_spike: more posts")
    scope: str = Field(..., description='"all" (every post) or the aspect, spelt as in the Redis layout (lower-cased, whitespace collapsed)')
    aspect: str | None = Field(None, description="the aspect, or null for the scope of all posts")
    window_s: int = Field(..., gt=0, description="length of the tested window in seconds")
    window_start_ms: int = Field(..., description="window start, event time (epoch ms, inclusive)")
    window_end_ms: int = Field(..., description="window end, event time (epoch ms, exclusive)")
    observed: AlertFigures = Field(..., description="the scope's posts in the window")
    baseline: AlertFigures = Field(..., description="the scope's posts in the trailing baseline (before the window)")
    expected: float = Field(
        ..., ge=0, description="what the baseline predicts for the window: posts of the tested label (share kinds) or posts (volume)"
    )
    effect: float = Field(..., description="share kinds: observed share minus baseline share; volume: observed / expected posts")
    p_value: float = Field(..., ge=0, le=1, description="one-sided p-value of the test")
    q_value: float = Field(..., ge=0, le=1, description="Benjamini-Hochberg adjusted p-value over every test of this window")
    test: str = Field(..., description="the statistical test")
    examples: list[str] = Field(default_factory=list, max_length=5, description="ids of up to 5 posts of the window (of the tested label for share kinds)")


SCHEMAS: dict[str, type[BaseModel]] = {
    "post": Post,
    "sentiment_result": SentimentResult,
    "dead_letter": DeadLetter,
    "alert": Alert,
}


def json_schemas() -> dict[str, str]:
    """``{file name: JSON text}`` of the published schemas."""
    out = {}
    for name, model in SCHEMAS.items():
        schema = model.model_json_schema(mode="serialization" if model is not Post else "validation")
        schema["$id"] = f"https://mulcot-stream/schemas/{name}.v{SCHEMA_VERSION}.json"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_schemas(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schemas().items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":  # python -m stream.protocol --write docs/schemas
    import sys

    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--write":
        for p in write_schemas(args[1]):
            print(p)
    else:
        print("usage: python -m stream.protocol --write FOLDER", file=sys.stderr)
        sys.exit(2)
