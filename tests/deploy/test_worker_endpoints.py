"""The worker's /health, /ready and /metrics endpoints, its consumer-lag metric, and the worker
end to end with ``MULCOT_MODEL_SPEC=openai:...`` - all through the embedded broker (Tansu) and
cache (Valkey) started by the stream fixtures.

The ``openai:`` student talks to a local HTTP server that speaks the OpenAI chat-completions
wire format as vLLM/SGLang do, logprobs included (``tests/support/openai_wire_server.py``): no
model server can run here.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from stream.health import HealthServer, LagProbe
from stream.metrics import WorkerMetrics
from tests.support.openai_wire_server import WireServer, rule_label
from tests.support.stream_helpers import create_topics, png_b64, post, produce, read_topic, wait_redis, wait_until


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_health_server_checks() -> None:
    m = WorkerMetrics()
    state = {"loaded": False}
    srv = HealthServer(m.registry, {"student_loaded": lambda: state["loaded"], "boom": lambda: 1 / 0 == 0})
    assert srv.start(_port(), "127.0.0.1")
    try:
        base = f"http://127.0.0.1:{srv.port}"
        assert _get(base + "/health")[0] == 200
        code, body = _get(base + "/ready")
        assert code == 503 and json.loads(body)["checks"] == {"student_loaded": False, "boom": False}
        srv.checks["boom"] = lambda: True
        state["loaded"] = True
        assert _get(base + "/ready")[0] == 200
        code, text = _get(base + "/metrics")
        assert code == 200 and "mulcot_results_total" in text and _get(base + "/nope")[0] == 404
    finally:
        srv.stop()


def test_lag_probe_reads_true_log_end(make_settings) -> None:  # type: ignore[no-untyped-def]
    """Batched produce: Tansu's ListOffsets end offsets lag behind, the probe's do not."""
    s = make_settings(partitions=2)
    create_topics(s)
    produce(s, [post(i) for i in range(120)])

    async def run() -> tuple[dict, dict]:
        probe = LagProbe(s, s.input_topic, s.group_id)
        try:
            return await probe.update({0, 1}), dict(probe.listed)
        finally:
            await probe.stop()

    lags, listed = asyncio.run(run())
    assert sum(lags.values()) == 120, (lags, listed)  # nothing committed: every record is lag
    if sum(listed.values()) != 120:
        print(f"Tansu ListOffsets said {listed} for 120 records; the probe says {lags}")


def test_worker_openai_backend_end_to_end(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    server = WireServer(api_key="sk-e2e").start()
    try:
        port = _port()
        s = make_settings(model_spec=f"openai:{server.base_url}#{server.model}", metrics_port=port, partitions=2)
        create_topics(s)
        texts = ["I love this sunny day", "my phone is broken", "the bus comes at noon", "a happy win",
                 "sad rain again", "a table", "great cake", "traffic jam"]
        records = [post(f"o{i}", text=t) for i, t in enumerate(texts)]
        records.append(post("o-img", text="love it", image_b64=png_b64()))
        # the key comes from the environment (the setting `mulcot config` masks)
        w = start_worker(s, MULCOT_OPENAI_API_KEY="sk-e2e")
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _get(base + "/health")[0] == 200, 60, "/health", worker=w)
        wait_until(lambda: _get(base + "/ready")[0] == 200, 90, "/ready", worker=w)
        produce(s, records)
        ids = [r[0].decode() for r in records]
        assert not wait_redis(s, ids, timeout=90, worker=w)
        got = {json.loads(m.value)["id"]: json.loads(m.value) for m in read_topic(s, s.output_topic, len(ids), 30)}
        assert set(got) == set(ids)
        for i, t in enumerate(texts):
            r = got[f"o{i}"]
            assert r["label"] == rule_label(t)
            assert abs(sum(r["probabilities"].values()) - 1) < 1e-6
            assert r["chain"]["prediction"] == r["label"] and r["chain"]["parsed"]
            assert r["model_name"] == f"openai:{server.model}"
        # the post's own 32x32 image reached the server (the warm-up sends a 64x48 one)
        assert got["o-img"]["label"] == "positive" and (32, 32) in server.images_seen
        assert "32x32" in got["o-img"]["chain"]["image_analysis"]
        # lag drops to 0 once the worker has committed everything it read
        deadline = time.monotonic() + 40
        lag = None
        while time.monotonic() < deadline:
            _, text = _get(base + "/metrics")
            vals = [_metric(text, "mulcot_consumer_lag", partition=str(p)) for p in (0, 1)]
            if all(v is not None for v in vals):
                lag = sum(vals)
                if lag == 0:
                    break
            time.sleep(1)
        assert lag == 0, f"mulcot_consumer_lag never reached 0 (last {lag}):\n{text}"
        assert _metric(text, "mulcot_results_total", label="positive") >= 4
    finally:
        server.stop()


def test_openai_api_key_setting_is_masked() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("MULCOT_")}
    env["MULCOT_OPENAI_API_KEY"] = "sk-very-secret"
    out = subprocess.run([sys.executable, "-m", "stream.cli", "config"], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if "MULCOT_OPENAI_API_KEY" in l)
    assert "********" in line and "sk-very-secret" not in out.stdout


@pytest.mark.slow
def test_worker_openai_server_outage_dead_letters_nothing(make_settings, start_worker) -> None:  # type: ignore[no-untyped-def]
    """While the model server answers 503, the worker retries the batch (nothing acknowledged,
    no dead letter); once it is back every post gets its result."""
    server = WireServer().start()
    try:
        s = make_settings(model_spec=f"openai:{server.base_url}#{server.model}?max_retries=0&backoff_s=0.01",
                          partitions=1)
        create_topics(s)
        w = start_worker(s)
        wait_until(lambda: len(server.requests) >= 2, 60, "the warm-up requests", worker=w)
        server.down = True
        produce(s, [post(f"d{i}", text=f"happy post {i}") for i in range(5)])
        wait_until(lambda: server.errors_sent >= 4, 60, "the worker to hit the outage a few times", worker=w)
        assert wait_redis(s, ["d0"], timeout=1, worker=w) == {"d0"}
        server.down = False
        ids = [f"d{i}" for i in range(5)]
        assert not wait_redis(s, ids, timeout=60, worker=w)
        assert read_topic(s, s.dlq_topic, 1, timeout=3) == [], "an outage must not dead-letter posts"
    finally:
        server.stop()
