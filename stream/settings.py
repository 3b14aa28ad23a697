"""All settings of the stream, in one pydantic-settings class.

Every field can be set from the environment with the prefix ``MULCOT_`` (``MULCOT_BROKER``,
``MULCOT_MAX_BATCH``, ...) or from a ``.env`` file in the working directory. ``REDIS_URL``
is accepted as well as ``MULCOT_REDIS_URL``. ``mulcot config`` prints the effective values
with secrets masked.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER = "127.0.0.1:9092"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class SettingsError(ValueError):
    """Settings could not be read; ``str()`` is one line naming the bad variable(s)."""


class Settings(BaseSettings):
    """Effective configuration of the worker, the CLI tools and the embedded services."""

    model_config = SettingsConfigDict(
        env_prefix="MULCOT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    # --- Kafka --------------------------------------------------------------------------
    broker: str = Field(DEFAULT_BROKER, description="Kafka bootstrap servers, comma separated (host:port)")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (with SASL_PLAINTEXT / SASL_SSL)"
    )
    sasl_username: str | None = Field(None, description="SASL user name")
    sasl_password: SecretStr | None = Field(None, description="SASL password (masked in `mulcot config`)")
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL / SASL_SSL")
    ssl_certfile: Path | None = Field(None, description="client certificate (mutual TLS)")
    ssl_keyfile: Path | None = Field(None, description="client key (mutual TLS)")

    group_id: str = Field("mulcot-worker", description="consumer group (and Faust app id) of the workers")
    input_topic: str = Field("posts", description="topic the posts arrive on")
    output_topic: str = Field("sentiment.results", description="topic of SentimentResult records (key: post id)")
    dlq_topic: str = Field("posts.dlq", description="dead-letter topic (DeadLetter records)")
    partitions: int = Field(4, ge=1, le=1024, description="partitions of topics the worker creates")
    replication_factor: int = Field(1, ge=1, le=16, description="replication of topics the worker creates")
    create_topics: bool = Field(True, description="create missing topics at start (output compacted)")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a new consumer group starts"
    )
    session_timeout_s: float = Field(6.0, gt=0, description="consumer group session timeout")
    heartbeat_s: float = Field(1.0, gt=0, description="consumer heartbeat interval")
    fetch_max_wait_ms: int = Field(100, ge=0, le=10_000, description="broker long-poll wait of a fetch")
    commit_interval_s: float = Field(1.0, gt=0, description="how often acknowledged offsets are committed")
    producer_linger_ms: int = Field(5, ge=0, le=1000, description="producer linger (batching) in ms")

    # --- Redis --------------------------------------------------------------------------
    redis_url: SecretStr = Field(
        SecretStr(DEFAULT_REDIS_URL),
        validation_alias=AliasChoices("MULCOT_REDIS_URL", "REDIS_URL", "redis_url"),
        description="Redis/Valkey URL of the result cache (password masked in `mulcot config`)",
    )
    redis_prefix: str = Field("mulcot:", description="prefix of every Redis key the stream writes")
    result_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="TTL of result:{id} values")
    recent_max: int = Field(10_000, ge=1, description="length bound of the recent-results index")
    aspect_recent_max: int = Field(1_000, ge=1, description="length bound of each per-aspect index")
    count_windows_s: list[int] = Field(
        [60, 3600, 86400], description="per-label counter windows in seconds (JSON list in env)"
    )
    count_retention: int = Field(48, ge=1, description="how many buckets of each window are kept")

    # --- batching / model ---------------------------------------------------------------
    max_batch: int = Field(32, ge=1, le=10_000, description="most posts per model batch (stream.take)")
    max_latency_ms: int = Field(50, ge=1, le=600_000, description="longest wait to fill a batch")
    model_spec: str = Field("default", description="student spec for model.load_student (default, noop, compact:DIR, hf:...)")
    model_device: str | None = Field(None, description="device option for the student (cpu, cuda, ...)")
    openai_api_key: SecretStr | None = Field(
        None, description="API key of an openai: student's endpoint (masked in `mulcot config`; else OPENAI_API_KEY)"
    )
    chain: bool = Field(True, description="generate the reasoning chain (False: labels only)")
    ocr: bool = Field(True, description="read the text in pictures for the chain's Image line (default / compact: students; False: faster chains)")
    conclusion: Literal["evidence", "writer"] = Field(
        "evidence", description="who writes the chain's Conclusion line (default / compact: students): evidence, "
        "or writer (the distilled chain writer; about 3x slower on CPU)"
    )
    label_first: bool = Field(
        False, description="publish a labels-only result as soon as the label is known, then the full one"
    )
    concurrency: int = Field(
        1, ge=1, le=64, description="batches in flight per worker (Faust agent concurrency; >1 overlaps publishing with the next batch)"
    )
    decode_threads: int = Field(2, ge=1, le=64, description="threads decoding images in parallel (off the event loop)")

    # --- images -------------------------------------------------------------------------
    image_max_bytes: int = Field(5 * 1024 * 1024, ge=1, description="largest encoded image (inline or fetched)")
    image_max_pixels: int = Field(40_000_000, ge=1, description="largest decoded image (decompression-bomb guard)")
    image_decode: Literal["auto", "full"] = Field(
        "auto",
        description="auto: decode the pixels only for students that read them (the no-op student checks "
        "image headers only); full: always decode, so every undecodable image goes to the dead-letter topic",
    )
    thumbnails: bool = Field(
        True, description="store a small JPEG of each post's image in Redis (thumb:{id}, for the dashboard)"
    )
    image_fetch_timeout_s: float = Field(5.0, gt=0, description="timeout of an image URL fetch")
    image_fetch_concurrency: int = Field(16, ge=1, description="concurrent image fetches per worker")
    image_allow_file_urls: bool = Field(False, description="allow file:// image URLs (local trusted input only)")
    image_allow_private_hosts: bool = Field(
        False, description="allow URLs resolving to private/loopback/link-local addresses (SSRF guard off)"
    )
    image_host_allowlist: list[str] = Field(
        [], description="if set, only these hosts (or *.suffix) may be fetched (JSON list in env)"
    )

    # --- mulcot serve (the read-only query API and dashboard; stream/serve, owned by H2) --
    events_max: int = Field(10_000, ge=0, le=1_000_000, description="length bound of the Redis events stream of new results (0: no events)")
    serve_host: str = Field("127.0.0.1", description="address `mulcot serve` binds to")
    serve_port: int = Field(8765, ge=0, le=65535, description="port of `mulcot serve`")
    serve_token: SecretStr | None = Field(None, description="if set, /api/* needs `Authorization: Bearer <token>` (masked in `mulcot config`)")
    serve_cors_origins: list[str] = Field([], description="origins allowed by CORS (JSON list in env; empty: CORS off)")

    # --- sentiment-shift alerts (`mulcot alerts run` / `replay`; stream/alerts, docs/alerts.md) --
    alerts_topic: str = Field("sentiment.alerts", description="compacted topic of Alert records (key: alert id) that `mulcot alerts run` publishes")
    alerts_group_id: str = Field("mulcot-alerts", description="consumer group of `mulcot alerts run` on the output topic")
    alerts_windows_s: list[int] = Field(
        [600, 3600], description="tested window lengths in seconds (JSON list in env; multiples of 60)"
    )
    alerts_hops: int = Field(
        10, ge=1, le=60, description="evaluate each window length this many times per window length (hopping windows; 1: tumbling)"
    )
    alerts_baseline_s: int = Field(14400, ge=60, le=7 * 86400, description="trailing baseline: the scope's posts in this many seconds before the window")
    alerts_lateness_s: int = Field(
        300, ge=0, le=86400, description="a window is evaluated once the newest event time seen (at most the wall clock) passes its end by this much"
    )
    alerts_fdr: float = Field(
        3e-4, gt=0, lt=1, description="Benjamini-Hochberg false-discovery rate over the tests of one window (every scope and kind)"
    )
    alerts_min_count: int = Field(20, ge=1, description="fewest posts of a scope in a window for it to be tested")
    alerts_min_baseline: int = Field(60, ge=1, description="fewest posts of a scope in its baseline for it to be tested")
    alerts_min_share_delta: float = Field(
        0.15, gt=0, le=1, description="smallest rise of a label's share over the baseline that can alert (0.15: 20% -> 35%)"
    )
    alerts_min_volume_ratio: float = Field(
        3.0, gt=1, description="smallest ratio of a window's posts to the baseline's expectation that can alert"
    )
    alerts_cooldown_s: int = Field(
        3600, ge=0, description="a detection of the same scope and kind within this many seconds after an alert's window is merged into it"
    )
    alerts_recent_max: int = Field(1000, ge=1, description="length bound of the Redis sorted set of recent alerts")
    alerts_ttl_s: int = Field(30 * 86400, ge=1, description="TTL of alert:{id} values in Redis")
    alerts_metrics_port: int = Field(9401, ge=0, le=65535, description="Prometheus metrics port of `mulcot alerts run` (0: off)")

    # --- dead letters / misc ------------------------------------------------------------
    dlq_inline_max_bytes: int = Field(
        256 * 1024, ge=0, description="originals larger than this go to the DLQ as a reference, not inline"
    )
    dead_letters_max: int = Field(
        1000, ge=0, le=100_000, description="how many recent dead letters the worker keeps in Redis for "
        "`/api/dead-letters` and the dashboard (0: none; the full ones are on the dead-letter topic)"
    )
    metrics_port: int = Field(9400, ge=0, le=65535, description="Prometheus metrics port of the worker (0: off)")
    log_level: Literal["debug", "info", "warn", "error"] = Field("info", description="worker log level")
    work_dir: Path = Field(Path(".cache/mulcot"), description="working files (Faust data dir, service and demo logs); relative: to the current directory")

    @field_validator("work_dir")
    @classmethod
    def _work_dir(cls, v: Path) -> Path:
        """Made absolute once, here, against the current directory when the settings are read,
        so every process and child process (services, worker) agrees on one folder."""
        return v.expanduser().absolute()

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        parts = [p.strip().removeprefix("kafka://") for p in v.split(",") if p.strip()]
        if not parts:
            raise ValueError("no broker address given")
        for p in parts:
            host, sep, port = p.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"broker address {p!r} is not host:port")
        return ",".join(parts)

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: SecretStr) -> SecretStr:
        url = v.get_secret_value()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("input_topic", "output_topic", "dlq_topic", "group_id", "alerts_topic", "alerts_group_id")
    @classmethod
    def _topic(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9._\-]{1,249}", v):
            raise ValueError(f"{v!r} is not a valid Kafka name (letters, digits, . _ -)")
        return v

    @field_validator("count_windows_s")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        if any(w <= 0 for w in v):
            raise ValueError("windows must be positive seconds")
        return sorted(set(v))

    @field_validator("alerts_windows_s")
    @classmethod
    def _alert_windows(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one window")
        if any(w <= 0 or w % 60 for w in v):
            raise ValueError("alert windows must be positive multiples of 60 seconds")
        return sorted(set(v))

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if len({self.input_topic, self.output_topic, self.dlq_topic}) != 3:
            raise ValueError("input_topic, output_topic and dlq_topic must differ")
        if self.alerts_topic in (self.input_topic, self.output_topic, self.dlq_topic):
            raise ValueError("alerts_topic must differ from the input, output and dead-letter topics")
        if self.alerts_group_id == self.group_id:
            raise ValueError("alerts_group_id must differ from group_id (the detector is not a worker)")
        if any(w % self.alerts_hops for w in self.alerts_windows_s):
            raise ValueError("every alert window must be a whole number of seconds times alerts_hops")
        if self.alerts_baseline_s % self.alerts_slot_s:
            raise ValueError(f"alerts_baseline_s must be a multiple of {self.alerts_slot_s} s (the alert windows' hop)")
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ValueError(f"security_protocol={self.security_protocol} needs sasl_mechanism")
        if self.heartbeat_s >= self.session_timeout_s:
            raise ValueError("heartbeat_s must be smaller than session_timeout_s")
        return self

    # --- derived ------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> list[str]:
        return self.broker.split(",")

    @property
    def alerts_slot_s(self) -> int:
        """The alert detector's counting slot: the greatest common divisor of the windows' hops
        (a window divided by ``alerts_hops``), so every window and hop is a whole number of slots."""
        import math

        return math.gcd(*(w // self.alerts_hops for w in self.alerts_windows_s))

    @property
    def redis_url_value(self) -> str:
        return self.redis_url.get_secret_value()

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        ctx = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            ctx.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None)
        return ctx

    def kafka_auth(self) -> dict[str, Any]:
        """Security keyword arguments for aiokafka clients (SASL/TLS pass-through)."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        ctx = self.ssl_context()
        if ctx is not None:
            out["ssl_context"] = ctx
        if self.sasl_mechanism:
            out["sasl_mechanism"] = self.sasl_mechanism
            out["sasl_plain_username"] = self.sasl_username
            out["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return out

    def env(self) -> dict[str, str]:
        """The ``MULCOT_*`` variables that make another process read exactly these settings
        (secrets in clear: for child processes, not for printing)."""
        import json

        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            out[env_name(name)] = json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
        return out

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain values, secrets masked (``mulcot config``)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                raw = value.get_secret_value()
                value = _mask_url(raw) if name == "redis_url" else ("********" if raw else "")
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


def _mask_url(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:****@host``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def env_name(field: str) -> str:
    """The environment variable of a settings field."""
    return f"MULCOT_{field.upper()}"


def _list_hint(field: str) -> str:
    """For list settings: how to write one in the environment (JSON), with an example."""
    import json
    import typing

    info = Settings.model_fields.get(field)
    if info is None or typing.get_origin(info.annotation) is not list:
        return ""
    example = list(info.default or [])[:1] or ["cdn.example.org"]
    return f" ({env_name(field)} takes a JSON list, e.g. {env_name(field)}='{json.dumps(example)}')"


NON_SETTING_VARIABLES = frozenset({
    "MULCOT_DATA_DIR",  # the research data (training.data, tests)
    "MULCOT_THREADS",  # torch threads of training.compact.select / training.grounding
    "MULCOT_TINY_DIR",  # where tiny test models are built (model.loading)
    "MULCOT_MPNET_DIR", "MULCOT_CACHE_DIR",  # all-mpnet-base-v2's folder, or where it is unpacked (model.backends.compact.text)
    "MULCOT_ENGINE", "MULCOT_ENGINE_SLOTS", "MULCOT_ENGINE_MAX_LEN",  # the batched GPU engine (model.engine)
    "MULCOT_GPU_MODEL_SPEC", "MULCOT_MODELS_DIR",  # docker-compose.yml's gpu / vllm profiles
    "MULCOT_CHROMIUM", "MULCOT_TEST_ARTIFACTS", "MULCOT_TEST_TIMING", "MULCOT_README_MODEL",  # the tests
})
"""``MULCOT_*`` variables read elsewhere in the code, which are not settings and get no typo warning
(a test checks that every ``MULCOT_*`` name in the code is a setting or listed here)."""

_warned: set[str] = set()


def setting_names() -> set[str]:
    """Every environment variable name the settings class reads."""
    return {env_name(name) for name in Settings.model_fields}


def unknown_variables(environ: Any = None, dotenv: str | Path | None = ".env") -> list[str]:
    """One warning line per ``MULCOT_*`` variable of the environment or ``.env`` that is not a
    setting (nor in :data:`NON_SETTING_VARIABLES`), naming the nearest setting."""
    import difflib
    import os

    known = setting_names()
    found: dict[str, str] = {}
    for key in (os.environ if environ is None else environ):
        if key.upper().startswith("MULCOT_"):
            found.setdefault(key.upper(), "environment variable")
    path = Path(dotenv) if dotenv else None
    if path is not None and path.is_file():
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        for n, line in enumerate(lines, 1):
            key = line.strip().removeprefix("export ").partition("=")[0].strip()
            if key.upper().startswith("MULCOT_") and "=" in line:
                found.setdefault(key.upper(), f"line {n} of {path}")
    out = []
    for key, where in sorted(found.items()):
        if key in known or key in NON_SETTING_VARIABLES:
            continue
        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else "see `mulcot config` for the settings"
        out.append(f"warning: {key} ({where}) is not a mulcot setting and is ignored; {hint}")
    return out


def warn_unknown_variables() -> None:
    """Print :func:`unknown_variables` to stderr, each at most once per process."""
    import sys

    for line in unknown_variables():
        if line not in _warned:
            _warned.add(line)
            print(line, file=sys.stderr)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from env/.env plus ``overrides``; raise :class:`SettingsError` (one line).
    ``MULCOT_*`` variables that are not settings get one warning each (:func:`unknown_variables`)."""
    import re

    from pydantic_settings import SettingsError as SourceError

    warn_unknown_variables()
    try:
        return Settings(**overrides)
    except SourceError as exc:  # a value the environment source cannot parse (e.g. a list that is not JSON)
        m = re.search(r'field "(\w+)"', str(exc))
        field = m.group(1) if m else ""
        what = f"{env_name(field)}: cannot parse the value" if field else str(exc)
        raise SettingsError(f"invalid settings: {what}{_list_hint(field)}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ())) or "settings"
            field = str(err.get("loc", ("",))[0]) if err.get("loc") else ""
            name = env_name(loc) if loc in Settings.model_fields else loc
            given = err.get("input")
            shown = "" if isinstance(given, dict) or given is None else f" (got {str(given)[:60]!r})"
            problems.append(f"{name}: {err['msg']}{shown}{_list_hint(field)}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


def markdown_table() -> str:
    """The settings as a Markdown table (the README's configuration table)."""
    import json

    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, f in Settings.model_fields.items():
        d = f.default
        if isinstance(d, SecretStr):
            d = d.get_secret_value()
        shown = "-" if d is None else json.dumps(d) if isinstance(d, (list, bool)) else str(d)
        env = env_name(name) + (" (or REDIS_URL)" if name == "redis_url" else "")
        rows.append(f"| `{env}` | `{shown}` | {f.description} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m stream.settings --markdown
    print(markdown_table())


__all__ = ["Settings", "SettingsError", "load_settings", "env_name", "unknown_variables", "NON_SETTING_VARIABLES",
           "DEFAULT_BROKER", "DEFAULT_REDIS_URL"]


def settings_from(**overrides: Any) -> Settings:
    """Settings from env/.env plus non-None CLI overrides; bad settings -> one error line (a CLI
    verb's ``click.ClickException``). Every verb of ``mulcot`` (``stream.cli``, ``stream.alerts.cli``)
    reads its settings here."""
    import click

    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
