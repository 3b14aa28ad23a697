"""The chaos suite: the stream's fixtures (real Tansu, real Valkey, worker subprocesses) and
a ``figures`` fixture whose lines are printed at the end of the run, one figure per line
(``make chaos``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

STREAM_TESTS = Path(__file__).resolve().parents[1] / "stream"
if str(STREAM_TESTS) not in sys.path:
    sys.path.insert(0, str(STREAM_TESTS))

from stream_fixtures import make_settings, services, start_worker  # noqa: E402,F401

_FIGURES: list[str] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """``figures("what", value)`` records one line for the summary."""

    def add(what: str, value: object) -> None:
        _FIGURES.append(f"{request.node.name.removeprefix('test_')}: {what}: {value}")

    return add


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if _FIGURES:
        terminalreporter.section("chaos figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
