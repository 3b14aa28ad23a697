"""Command-line options generated from configuration models: the one generator behind every
``mulcot distill`` / ``mulcot data`` verb (training/cli.py), as litgpt builds its CLI from its
config dataclasses.

``@Options(Model, ...)`` on a click command adds one typed option per field of the pydantic
``Model``: the flag is the field name (``max_guided`` -> ``--max-guided``), the help is the
field's description, the default is the field's default. Nested models (a recipe's ``train``
block) become options too, their flags prefixed as asked. Field types map to click types:
``int``/``float``/``str``, ``bool`` (``--x/--no-x``; a flag ``--x`` when the default is False),
``Literal[...]`` (a choice), ``Path``/``FilePath``/``DirectoryPath`` (a path, checked to exist for
the latter two), lists of those (a repeatable option). Mappings are left out: a recipe file or
``--set key=value`` sets them.

In the command, ``opts.given(kwargs)`` is what the command line set (nested like the model; a
left-out option is absent, so it cannot hide a recipe file's value) and ``opts.build(kwargs)``
the validated model (``click.UsageError`` naming the flag when a value is invalid).
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from pydantic import BaseModel, ValidationError
from pydantic.types import PathType
from pydantic_core import PydanticUndefined

#: Where a value counts as given (not the option's default).
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)


def _names(v: str | Iterable[str] | None) -> list[str]:
    return [] if v is None else [v] if isinstance(v, str) else list(v)


def _strip(annotation: Any) -> tuple[Any, list[Any]]:
    """The annotation without ``Optional`` and ``Annotated``, and the metadata met on the way;
    ``str | list[str]`` reads as ``list[str]``."""
    meta: list[Any] = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *more = typing.get_args(annotation)
            meta += more
        elif origin is typing.Union or isinstance(annotation, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) == 2 and str in args and any(typing.get_origin(a) is list for a in args):
                args = [a for a in args if a is not str]
            if len(args) != 1:
                return None, meta
            annotation = args[0]
        else:
            return annotation, meta


def _click_type(annotation: Any, meta: list[Any]) -> Any:
    """The click type of a scalar annotation, or None."""
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(v) for v in typing.get_args(annotation)])
    if annotation in (int, float, str, bool):
        return annotation
    if annotation is Path:
        kind = next((m.path_type for m in meta if isinstance(m, PathType)), None)
        return click.Path(path_type=Path, exists=kind in ("file", "dir"), dir_okay=kind != "file",
                          file_okay=kind != "dir")
    return None


def click_kind(info: Any) -> tuple[Any, bool] | None:
    """(click type, repeatable) for a pydantic field, or None for a shape no option takes."""
    annotation, meta = _strip(info.annotation)
    meta += list(info.metadata)
    if typing.get_origin(annotation) in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(args) != 1:
            return None
        item, more = _strip(args[0])
        typ = _click_type(item, meta + more)
        return (typ, True) if typ not in (None, bool) else None
    typ = _click_type(annotation, meta)
    return None if typ is None else (typ, False)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    a, _ = _strip(annotation)
    return a if isinstance(a, type) and issubclass(a, BaseModel) else None


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _merge(base: dict, top: dict) -> dict:
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


class Options:
    """The click options of a pydantic model (see the module docstring).

    Args:
        model: the model whose fields become options.
        skip: dotted field paths left out (``"enabled"``, ``"lora.targets"``).
        prefixes: dotted path of a nested model -> the prefix of its fields' parameters and
            flags (default ``<field>_``; ``""`` flattens it).
        flags: dotted path -> the flag(s) used instead of the field's own (``"--set"``).
        aliases: dotted path -> further flag(s) kept for the same option (old names).
        arguments: dotted paths that are positional arguments instead of options.
        required: whether the model's required fields are required on the command line (False
            when another option, such as ``--recipe``, can stand in for them).
        over_file: the options set fields over a recipe file: help reads ``[recipe default: X]``
            and booleans are always ``--x/--no-x``.
    """

    def __init__(self, model: type[BaseModel], *, skip: Iterable[str] = (), prefixes: dict[str, str] | None = None,
                 flags: dict[str, str | tuple[str, ...]] | None = None,
                 aliases: dict[str, str | tuple[str, ...]] | None = None, arguments: Iterable[str] = (),
                 required: bool = True, over_file: bool = False) -> None:
        self.model = model
        self._skip, self._prefixes = set(skip), prefixes or {}
        self._flags, self._aliases, self._arguments = flags or {}, aliases or {}, set(arguments)
        self._required, self._over_file = required, over_file
        self.fields: list[tuple[tuple[str, ...], str, str]] = []  # (field path, parameter, first flag)
        self._decorators: list[Any] = []
        self._walk(model, (), "")
        unknown = (self._skip | set(self._flags) | set(self._aliases) | self._arguments) - self._paths()
        if unknown:
            raise TypeError(f"Options({model.__name__}): no such fields {sorted(unknown)}")

    def _paths(self) -> set[str]:
        out, stack = set(), [(self.model, "")]
        while stack:
            m, pre = stack.pop()
            for name, info in m.model_fields.items():
                out.add(pre + name)
                if (sub := _submodel(info.annotation)) is not None:
                    stack.append((sub, pre + name + "."))
        return out

    def _walk(self, model: type[BaseModel], path: tuple[str, ...], prefix: str) -> None:
        for name, info in model.model_fields.items():
            p = (*path, name)
            key = ".".join(p)
            if key in self._skip:
                continue
            sub = _submodel(info.annotation)
            if sub is not None:
                self._walk(sub, p, self._prefixes.get(key, prefix + name + "_"))
                continue
            kind = click_kind(info)
            if kind is None:  # mappings and other shapes: the recipe file or --set
                continue
            param = prefix + name
            self._decorators.append(self._decorator(key, param, info, *kind))
            flag = param.upper() if key in self._arguments else (_names(self._flags.get(key)) or [_flag(param)])[0]
            self.fields.append((p, param, flag))

    def _decorator(self, key: str, param: str, info: Any, typ: Any, multiple: bool):
        default = info.get_default(call_default_factory=True)
        default = None if default is PydanticUndefined else default
        required = self._required and info.is_required()
        if key in self._arguments:
            metavar = param.upper() + ("..." if multiple else "")
            return click.argument(param, type=typ, required=required, nargs=-1 if multiple else 1,
                                  metavar=metavar if required else f"[{metavar}]")
        decls = (_names(self._flags.get(key)) or [_flag(param)]) + _names(self._aliases.get(key))
        help_ = info.description or ""
        if self._over_file:
            help_ += f" [recipe default: {default}]"
        shown = not self._over_file and default not in (None, [], ())
        if typ is bool:
            if default is False and not self._over_file:
                return click.option(*decls, param, is_flag=True, default=False, help=help_)
            decls[0] = f"{decls[0]}/--no-{decls[0][2:]}"
            return click.option(*decls, param, default=default, help=help_)
        if multiple:
            return click.option(*decls, param, type=typ, multiple=True, default=list(default or ()),
                                show_default=shown, help=help_)
        return click.option(*decls, param, type=typ, default=default, show_default=shown, help=help_, required=required)

    def __call__(self, f):
        for d in reversed(self._decorators):
            f = d(f)
        seen: dict[str, str] = {}
        for p in getattr(f, "__click_params__", []):
            for name in [p.name, *getattr(p, "opts", ()), *getattr(p, "secondary_opts", ())]:
                if name in seen and seen[name] != p.name:
                    raise TypeError(f"{getattr(f, '__name__', f)}: {name} is declared twice")
                seen[name] = p.name
        return f

    def given(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The values the command line set, nested like the model (call inside the command)."""
        ctx = click.get_current_context()
        out: dict[str, Any] = {}
        for path, param, _ in self.fields:
            if ctx.get_parameter_source(param) in _GIVEN:
                v = kwargs[param]
                _set(out, path, list(v) if isinstance(v, tuple) else v)
        return out

    def build(self, kwargs: dict[str, Any], base: dict[str, Any] | None = None) -> Any:
        """The model from ``base`` (e.g. a recipe's mapping) with the given options over it."""
        try:
            return self.model.model_validate(_merge(copy.deepcopy(base or {}), self.given(kwargs)))
        except ValidationError as e:
            raise click.UsageError(self.explain(e)) from None

    def explain(self, e: ValidationError) -> str:
        """A validation error in the words of the command line: each problem by its flag."""
        flags = {path: flag for path, _, flag in self.fields}
        lines = []
        for err in e.errors():
            loc = tuple(str(x) for x in err["loc"])
            where = next((flags[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in flags), ".".join(loc))
            lines.append(f"{where}: {err['msg']}")
        return "; ".join(lines)


def _flag(param: str) -> str:
    return "--" + param.replace("_", "-")
