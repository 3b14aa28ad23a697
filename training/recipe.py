"""Recipe files, shared by both pipelines (``training.mulcot`` and ``training.compact``).

A recipe is one YAML (``.yaml``/``.yml``) or TOML (``.toml``) file whose fields are those of a
pydantic model: :class:`training.mulcot.recipe.Recipe` for the VLM pipeline,
:class:`training.compact.recipe.CompactRecipe` for the CPU student. This module reads the file,
applies ``key.path=value`` overrides (the value parsed as YAML), validates it against the model,
prints the model's field table (``--schema``), and records the git commit a run was made from.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of recipe models: unknown keys are errors (typos do not pass silently)."""

    model_config = ConfigDict(extra="forbid")


def read_recipe_file(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw mapping of a YAML or TOML recipe (``{}`` for no file) with ``overrides`` applied:
    ``a.b.c=value`` strings, the value parsed as YAML (``epochs=3``, ``routes={}``, ``lam=0.3``)."""
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        else:
            raw = yaml.safe_load(text) or {}
    for ov in overrides or []:
        key, sep, value = ov.partition("=")
        if not sep:
            raise ValueError(f"override {ov!r} is not key=value")
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_model_file(model: type[M], path: str | Path | None, overrides: list[str] | None = None,
                    updates: dict[str, Any] | None = None) -> M:
    """``model`` validated from a recipe file plus ``key.path=value`` overrides, then top-level
    ``updates`` (typed CLI options); pydantic ValidationError when invalid."""
    raw = read_recipe_file(path, overrides)
    raw.update(updates or {})
    return model.model_validate(raw)


def schema_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(field path, type, default, description) for every field, nested blocks expanded."""
    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if sub is not None:
            rows.append((prefix + name, sub.__name__, "", f.description or (sub.__doc__ or "").strip().split("\n")[0]))
            rows += schema_rows(sub, prefix + name + ".")
        else:
            default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
            tname = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
            rows.append((prefix + name, tname, default, f.description or ""))
    return rows


def print_schema(model: type[BaseModel], console: Any = None, title: str = "recipe fields (YAML or TOML)") -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=title)
    for col in ("field", "type", "default", "description"):
        t.add_column(col, overflow="fold")
    for row in schema_rows(model):
        t.add_row(*row)
    console.print(t)


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD of the repository this code runs from (``-dirty`` when tracked files changed), or
    None outside a git checkout."""
    cwd = cwd or Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    """Versions of the training libraries, for model cards."""
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for pkg in ("torch", "transformers", "peft", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            out[pkg] = None
    return out
