"""Property test of the API against its own OpenAPI spec (schemathesis + hypothesis): for
generated inputs, every response is what the spec declares (status, content type, schema,
authentication), never a server error, and the API never writes (it runs as a read-only
Redis user). Run against the open API and against one that requires a bearer token.

(schemathesis' pytest plugin does not run under pytest 9, so the operations are driven
with hypothesis directly: one ``@given`` run per operation.)"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

OPERATIONS = ["GET /api/alerts", "GET /api/alerts/{alert_id}", "GET /api/dead-letters", "GET /api/health", "GET /api/results",
              "GET /api/results/{post_id}", "GET /api/results/{post_id}/thumbnail", "GET /api/stats"]  # fmt: skip


def _check_all(url: str, headers: dict[str, str] | None = None, examples: int = 25) -> list[str]:
    # /api/stream and /api/alerts/stream never end (server-sent events); their inputs are checked in test_serve_api
    schema = schemathesis.openapi.from_url(url + "api/openapi.json").exclude(path="/api/stream").exclude(path="/api/alerts/stream")
    base_url = url.rstrip("/")
    seen = []
    for got in schema.get_all_operations():
        op = got.ok()
        seen.append(op.label)

        @given(case=op.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(base_url=base_url, headers=headers)

        check()
    return sorted(seen)


def test_api_matches_its_spec(served) -> None:  # type: ignore[no-untyped-def]
    assert _check_all(served.url) == OPERATIONS


def test_api_with_a_token_matches_its_spec(served) -> None:  # type: ignore[no-untyped-def]
    from stream.serve import start_background
    from stream.settings import load_settings

    s = load_settings(redis_url=served.ro_redis_url, redis_prefix=served.settings.redis_prefix, serve_token="t0ken")
    srv = start_background(s, port=0)
    try:
        assert _check_all(srv.url, headers={"Authorization": "Bearer t0ken"}, examples=15) == OPERATIONS
    finally:
        srv.stop()
