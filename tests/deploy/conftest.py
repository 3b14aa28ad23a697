"""Fixtures of the deployment tests: the stream tests' real Tansu broker and Valkey fixtures
(``tests/stream/conftest.py``) and the OpenAI wire-format server of the model tests, reused."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for sub in ("stream", "model"):  # stream_helpers, openai_wire_server
    if str(TESTS / sub) not in sys.path:
        sys.path.insert(0, str(TESTS / sub))

_spec = importlib.util.spec_from_file_location("mulcot_stream_fixtures", TESTS / "stream" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

services = _fixtures.services
make_settings = _fixtures.make_settings
start_worker = _fixtures.start_worker
