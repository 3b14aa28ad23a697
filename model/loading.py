"""``load_student(spec)``: the one way the stream and the training code get a student.

Spec strings:

* ``default`` - the compact CPU student whose trained parts ship in ``model/weights/default``;
* ``compact:<dir>`` - a compact student trained by ``mulcot distill`` into ``<dir>``;
* ``hf:<path-or-hub-id>[+<adapter-path-or-hub-id>]`` - a Hugging Face image-text-to-text
  model (Qwen2.5-VL, SmolVLM/Idefics3), optionally with a LoRA adapter merged in;
* ``mulcot-rd-3b`` / ``mulcot-rd-7b`` - the published students, i.e. ``hf:sghn/MulCoT-RD-3B``;
* ``openai:<base_url>#<model>`` - a student served by an OpenAI-compatible endpoint (vLLM,
  SGLang; ``model/backends/openai.py``);
* ``noop`` - a model-free student for measuring the pipeline alone (benchmarks only).

Keyword options are passed to the backend (``device``, ``dtype``, ``image_size``,
``max_new_tokens``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from .types import Student

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default"

ALIASES = {
    "mulcot-rd-3b": "hf:sghn/MulCoT-RD-3B",
    "mulcot-rd-7b": "hf:sghn/MulCoT-RD-7B",
}


class SpecError(ValueError):
    """The student spec string is malformed or names nothing loadable."""


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """Split a spec into ``(kind, target, adapter)``; raises :class:`SpecError`."""
    spec = (spec or "").strip()
    spec = ALIASES.get(spec.lower(), spec)
    if spec in ("default", "noop"):
        return spec, "", None
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise SpecError(
            f"bad student spec {spec!r}: use 'default', 'noop', 'compact:<dir>' or 'hf:<model>[+<adapter>]'"
        )
    if kind in ("compact", "openai"):
        return kind, rest, None
    if kind == "hf":
        target, plus, adapter = rest.partition("+")
        if not target or (plus and not adapter):
            raise SpecError(f"bad hf spec {spec!r}: expected hf:<model>[+<adapter>]")
        return kind, target, adapter or None
    raise SpecError(f"unknown student kind {kind!r} in {spec!r} (known: default, noop, compact, hf, openai)")


def parse_options(pairs: "Iterable[str]") -> dict[str, Any]:
    """``KEY=VALUE`` strings (CLI ``--option``) as load_student keyword options; each value is
    read as YAML, so numbers, true/false and null keep their type. ValueError on a bad pair."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{pair!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_student(spec: str = "default", **options: Any) -> Student:
    """Load the student named by ``spec`` (see module docstring)."""
    kind, target, adapter = parse_spec(spec)
    if kind == "noop":
        from .backends.noop import NoopStudent

        return NoopStudent(**options)
    if kind in ("default", "compact"):
        from .backends.compact import CompactStudent

        path = Path(target) if target else DEFAULT_WEIGHTS
        return CompactStudent.from_pretrained(path, **options)
    if kind == "openai":
        from .backends.openai import OpenAIStudent

        return OpenAIStudent.from_target(target, **options)
    from .backends.hf import HFStudent

    return HFStudent.from_pretrained(target, adapter=adapter, **options)


__all__ = ["load_student", "parse_options", "parse_spec", "SpecError", "DEFAULT_WEIGHTS", "ALIASES"]
