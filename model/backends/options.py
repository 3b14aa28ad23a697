"""What every backend's options dataclass shares: the keyword options ``load_student(spec,
**options)`` passes on are split into those the backend knows (its dataclass's fields, with their
defaults said once, there) and the rest, which it ignores with a log line (a worker's settings
object passes keys meant for other kinds). Each kind registers its dataclass in
:mod:`model.loading`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T", bound="BackendOptions")


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """Base of a backend's options (a frozen dataclass of keyword options)."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def split(cls: type[T], options: Mapping[str, Any], *, who: str | None = None) -> T:
        """The options of this backend out of ``options``; unknown keys are logged (as ``who``
        ignoring them) and dropped."""
        known = set(cls.names())
        unknown = sorted(set(options) - known)
        if unknown:
            log.info("%s ignores options %s", who or cls.__name__, unknown)
        return cls(**{k: v for k, v in options.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
