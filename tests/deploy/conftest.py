"""Fixtures of the deployment tests: the stream tests' real Tansu broker and Valkey fixtures
(``tests/stream/stream_fixtures.py``) and the OpenAI wire-format server of the model tests."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for sub in ("stream", "model"):  # stream_fixtures, stream_helpers, openai_wire_server
    if str(TESTS / sub) not in sys.path:
        sys.path.insert(0, str(TESTS / sub))

from stream_fixtures import make_settings, services, start_worker  # noqa: E402,F401
