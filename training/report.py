"""Rich tables of the evaluation and grounding reports (``mulcot distill evaluate``, ``python -m
training.grounding``): one helper both print with, apart from either so neither imports the other."""

from __future__ import annotations

from typing import Any


def rich_table(title: str, first: str, *right: str) -> Any:
    """A rich table titled ``title``: the column ``first``, then the right-justified ``right``."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column(first)
    for name in right:
        t.add_column(name, justify="right")
    return t
