"""The stream tests' fixtures live in stream_fixtures.py, so the chaos suite can import them too."""

from tests.support.stream_fixtures import make_settings, services, start_worker  # noqa: F401
