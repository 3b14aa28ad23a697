"""The chaos suite: the stream's fixtures (real Tansu, real Valkey, worker subprocesses) and
a ``figures`` fixture whose lines are printed at the end of the run, one figure per line
(``make chaos``)."""

from __future__ import annotations

import pytest

from tests.support.stream_fixtures import make_settings, services, start_worker  # noqa: F401

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
