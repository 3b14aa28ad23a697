"""Fixtures of the deployment tests: the stream tests' real Tansu broker and Valkey fixtures
(``tests/support/stream_fixtures.py``) and the OpenAI wire-format server of the model tests."""

from __future__ import annotations

from tests.support.stream_fixtures import make_settings, services, start_worker  # noqa: F401
