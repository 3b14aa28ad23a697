"""Student specs: the one grammar, and ``load_student(spec)``, the one way the stream and the
training code get a student.

A spec is ``<kind>:<target>`` or a bare name. The kinds are kept in a registry
(:func:`register_kind`); the built-in ones are registered at the bottom of this module, each
with a loader that imports its backend only when a student is loaded, so parsing and checking a
spec stay cheap (no torch import):

* ``default`` - the compact CPU student whose trained parts ship in ``model/weights/default``;
* ``compact:<dir>`` - a compact student trained by ``mulcot distill compact`` into ``<dir>``;
* ``hf:<path-or-hub-id>[+<adapter-path-or-hub-id>]`` - a Hugging Face image-text-to-text
  model (Qwen2.5-VL, SmolVLM/Idefics3), optionally with a LoRA adapter merged in;
* ``tiny:<family>`` - a tiny random-initialised model of a real family (``qwen2_5_vl`` or
  ``smolvlm``, see :mod:`model.backends.tiny.build`), built locally on first use: smoke runs and tests;
* ``openai:<base_url>[#<model>]`` - a student served by an OpenAI-compatible endpoint (vLLM,
  SGLang; ``model/backends/openai/student.py``);
* ``noop`` - a model-free student for measuring the pipeline alone (benchmarks only);
* ``py:<module>:<attribute>`` - a student class (or factory) importable from ``<module>``,
  called with the options: a student kept outside ``model/`` (the tests' label-reading one);
* ``mulcot-rd-3b`` / ``mulcot-rd-7b`` - aliases of the published students, ``hf:sghn/MulCoT-RD-3B``.

Keyword options are passed to the backend (``device``, ``dtype``, ``image_size``,
``max_new_tokens``, ...). Another package adds a kind with
``register_kind("mykind", loader, parse=..., check=...)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .types import Student

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default"

ALIASES = {
    "mulcot-rd-3b": "hf:sghn/MulCoT-RD-3B",
    "mulcot-rd-7b": "hf:sghn/MulCoT-RD-7B",
}


class SpecError(ValueError):
    """The student spec string is malformed or names nothing loadable."""


class Spec(NamedTuple):
    """A parsed spec: ``kind``, ``target`` ("" for bare names) and an optional ``adapter``."""

    kind: str
    target: str
    adapter: str | None = None

    def __str__(self) -> str:
        if not self.target:
            return self.kind
        return f"{self.kind}:{self.target}" + (f"+{self.adapter}" if self.adapter else "")


#: ``loader(spec, options) -> Student``
Loader = Callable[[Spec, dict], Student]
#: ``parse(target_text) -> (target, adapter)``; raises SpecError
Parser = Callable[[str], "tuple[str, str | None]"]
#: ``check(spec)``: cheap existence checks before anything heavy is imported; raises SpecError
Checker = Callable[[Spec], None]


@dataclass(frozen=True)
class SpecKind:
    name: str
    loader: Loader
    parse: Parser | None
    check: Checker | None
    syntax: str
    bare: bool
    """A bare name (``default``, ``noop``) that takes no target."""


_KINDS: dict[str, SpecKind] = {}


def register_kind(name: str, loader: Loader, parse: Parser | None = None, *, check: Checker | None = None,
                  syntax: str | None = None, bare: bool = False) -> None:
    """Add (or replace) a spec kind. ``parse`` splits and validates the text after ``<name>:``
    (default: the whole text is the target); ``check`` makes cheap existence checks;
    ``syntax`` is how error messages show the kind (default ``<name>:<target>``); a ``bare``
    kind is written as its name alone and takes no target."""
    _KINDS[name] = SpecKind(name, loader, parse, check, syntax or (name if bare else f"{name}:<target>"), bare)


def kinds() -> list[str]:
    """The registered kinds, in registration order."""
    return list(_KINDS)


def _syntaxes() -> str:
    return ", ".join(repr(k.syntax) for k in _KINDS.values())


def parse_spec(spec: str) -> Spec:
    """Split a spec into ``Spec(kind, target, adapter)``; raises :class:`SpecError`."""
    text = (spec or "").strip()
    text = ALIASES.get(text.lower(), text)
    kind = _KINDS.get(text)
    if kind is not None and kind.bare:
        return Spec(text, "", None)
    name, sep, rest = text.partition(":")
    kind = _KINDS.get(name) if sep else None
    if kind is None or kind.bare:
        if sep and name and kind is None:
            raise SpecError(f"unknown student kind {name!r} in {text!r} (known: {', '.join(_KINDS)})")
        raise SpecError(f"bad student spec {text!r}: use one of {_syntaxes()}")
    if not rest:
        raise SpecError(f"bad {name} spec {text!r}: expected {kind.syntax}")
    target, adapter = kind.parse(rest) if kind.parse else (rest, None)
    return Spec(name, target, adapter)


def check_spec(spec: str) -> Spec:
    """:func:`parse_spec` plus the kind's cheap checks (a named folder exists, the default
    student's weights are there, a tiny family is known). No heavy import; raises SpecError."""
    parsed = parse_spec(spec)
    kind = _KINDS[parsed.kind]
    if kind.check is not None:
        kind.check(parsed)
    return parsed


def load_student(spec: str = "default", **options: Any) -> Student:
    """Load the student named by ``spec`` (see module docstring)."""
    parsed = parse_spec(spec)
    return _KINDS[parsed.kind].loader(parsed, options)


def load_error_message(spec: str, exc: BaseException) -> str:
    """One line for a student that failed to load: the spec check's reason when it has one
    (missing folder or weights), else the exception."""
    try:
        check_spec(spec)
    except SpecError as reason:
        return f"cannot load student {spec!r}: {reason}"
    return f"cannot load student {spec!r}: {type(exc).__name__}: {exc}"


def hf_source(spec: str | Path, *, workdir: str | Path | None = None, seed: int = 0) -> tuple[str, str | None]:
    """``(model dir or hub id, adapter or None)`` of a spec that names HF weights, for code that
    loads the model itself (training): ``hf:<m>[+<a>]``, ``tiny:<family>`` (built into
    ``workdir``, see :func:`tiny_path`), an alias, or a bare directory / hub id."""
    text = str(spec).strip()
    name = text.partition(":")[0]
    if text.lower() not in ALIASES and name not in _KINDS:
        return _split_adapter(text, f"hf:{text}")
    parsed = parse_spec(text)
    if parsed.kind == "tiny":
        return str(tiny_path(parsed.target, workdir, seed=seed)), None
    if parsed.kind != "hf":
        raise SpecError(f"{text!r} is a {parsed.kind} spec; HF weights are named hf:<model>[+<adapter>], "
                        "tiny:<family>, or a directory / hub id")
    return parsed.target, parsed.adapter


def as_hf_spec(spec: str | Path, *, workdir: str | Path | None = None, seed: int = 0) -> str:
    """The ``hf:`` spec of the same weights (see :func:`hf_source`), for :func:`load_student`."""
    target, adapter = hf_source(spec, workdir=workdir, seed=seed)
    return str(Spec("hf", target, adapter))


def parse_options(pairs: Iterable[str]) -> dict[str, Any]:
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



# ------------------------------------------------------------------------------ built-in kinds


def _split_adapter(rest: str, text: str) -> tuple[str, str | None]:
    target, plus, adapter = rest.partition("+")
    if not target or (plus and not adapter):
        raise SpecError(f"bad hf spec {text!r}: expected hf:<model>[+<adapter>]")
    return target, adapter or None


def _parse_hf(rest: str) -> tuple[str, str | None]:
    return _split_adapter(rest, f"hf:{rest}")


def _load_hf(spec: Spec, options: dict) -> Student:
    from .backends.hf.student import HFStudent

    return HFStudent.from_pretrained(spec.target, adapter=spec.adapter, **options)


def _check_default(spec: Spec) -> None:
    if not DEFAULT_WEIGHTS.exists():
        raise SpecError(
            f"the default student is not available: {DEFAULT_WEIGHTS} does not exist. Its weights come from "
            "the training work (see docs/model.md and docs/training.md); until they are there, use the spec "
            "'noop' (--model noop) to run the pipeline with a model-free placeholder"
        )


def _load_default(spec: Spec, options: dict) -> Student:
    from .backends.compact.student import CompactStudent

    return CompactStudent.from_pretrained(DEFAULT_WEIGHTS, **options)


def _check_compact(spec: Spec) -> None:
    if not Path(spec.target).is_dir():
        raise SpecError(f"student weights folder {spec.target!r} (spec {str(spec)!r}) does not exist")


def _load_compact(spec: Spec, options: dict) -> Student:
    from .backends.compact.student import CompactStudent

    return CompactStudent.from_pretrained(Path(spec.target), **options)


def _load_noop(spec: Spec, options: dict) -> Student:
    from .backends.noop.student import NoopStudent

    return NoopStudent(**options)


def _parse_openai(rest: str) -> tuple[str, str | None]:
    from .backends.openai.student import parse_target  # no heavy imports: parsing stays cheap

    try:
        parse_target(rest)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return rest, None


def _load_openai(spec: Spec, options: dict) -> Student:
    from .backends.openai.student import OpenAIStudent

    return OpenAIStudent.from_target(spec.target, **options)


def _parse_tiny(rest: str) -> tuple[str, str | None]:
    from .backends.tiny.build import family_name

    try:
        return family_name(rest), None
    except ValueError as e:
        raise SpecError(str(e)) from None


def tiny_path(family: str, workdir: str | Path | None = None, *, seed: int = 0) -> Path:
    """The directory of the tiny ``family`` model for ``seed``, built there on first use:
    ``<workdir>/tiny-<family>`` (seed 0) or ``tiny-<family>-s<seed>``; ``workdir`` defaults to
    ``$MULCOT_TINY_DIR`` or ``<tmp>/mulcot-tiny``."""
    from .backends.tiny.build import build_tiny, family_name

    family = family_name(family)
    root = Path(workdir or os.environ.get("MULCOT_TINY_DIR") or Path(tempfile.gettempdir()) / "mulcot-tiny")
    path = root / (f"tiny-{family}" if seed == 0 else f"tiny-{family}-s{seed}")
    if not (path / "config.json").exists():
        build_tiny(family, path, seed=seed)
    return path


def _load_tiny(spec: Spec, options: dict) -> Student:
    from .backends.hf.student import HFStudent

    return HFStudent.from_pretrained(str(tiny_path(spec.target)), **{"name": str(spec), **options})


def _parse_py(rest: str) -> tuple[str, str | None]:
    module, sep, attr = rest.partition(":")
    if not sep or not all(p.isidentifier() for p in module.split(".")) or not attr.isidentifier():
        raise SpecError(f"bad py spec {'py:' + rest!r}: expected py:<module>:<attribute>, e.g. py:mypkg.students:MyStudent")
    return rest, None


def _check_py(spec: Spec) -> None:
    import importlib.util

    module = spec.target.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise SpecError(f"module {module!r} of spec {str(spec)!r} cannot be found on the Python path")


def _load_py(spec: Spec, options: dict) -> Student:
    import importlib

    module, _, attr = spec.target.partition(":")
    factory = getattr(importlib.import_module(module), attr, None)
    if factory is None:
        raise SpecError(f"module {module!r} has no attribute {attr!r} (spec {str(spec)!r})")
    return factory(**options)


register_kind("default", _load_default, check=_check_default, bare=True)
register_kind("noop", _load_noop, bare=True)
register_kind("compact", _load_compact, check=_check_compact, syntax="compact:<dir>")
register_kind("hf", _load_hf, _parse_hf, syntax="hf:<model>[+<adapter>]")
register_kind("tiny", _load_tiny, _parse_tiny, syntax="tiny:<family>")
register_kind("openai", _load_openai, _parse_openai, syntax="openai:<base_url>[#<model>][?option=value&...]")
register_kind("py", _load_py, _parse_py, check=_check_py, syntax="py:<module>:<attribute>")


__all__ = [
    "ALIASES",
    "DEFAULT_WEIGHTS",
    "Spec",
    "SpecError",
    "as_hf_spec",
    "check_spec",
    "hf_source",
    "kinds",
    "load_error_message",
    "load_student",
    "parse_options",
    "parse_spec",
    "register_kind",
    "tiny_path",
]
