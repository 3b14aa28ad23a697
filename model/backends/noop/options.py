"""The no-op student's options: none (it takes and ignores whatever a caller passes)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import BackendOptions


@dataclass(frozen=True)
class NoopOptions(BackendOptions):
    """The no-op student has no options."""
