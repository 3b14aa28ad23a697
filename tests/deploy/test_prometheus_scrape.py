"""A real Prometheus (Debian's ``prometheus`` package, installed by ``.ci/run``) scrapes a real
worker (no-op student, embedded Tansu + Valkey) and answers ``mulcot_results_total`` back, with
the alert rules of ``deploy/prometheus/alerts.yml`` loaded. Skipped only when the
``prometheus`` binary is missing."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.stream_helpers import create_topics, post, produce, wait_redis, wait_until

ROOT = Path(__file__).resolve().parents[2]
N = 25


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(base: str, q: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.slow
def test_prometheus_scrapes_worker(make_settings, start_worker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe = shutil.which("prometheus")
    if not exe:
        pytest.skip("prometheus is not installed (apt-get install prometheus; .ci/run does it)")
    metrics_port, prom_port = _port(), _port()
    s = make_settings(metrics_port=metrics_port, partitions=2)
    create_topics(s)
    w = start_worker(s)
    produce(s, [post(i) for i in range(N)])
    assert not wait_redis(s, [f"p{i}" for i in range(N)], timeout=90, worker=w)

    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "deploy" / "prometheus" / "alerts.yml")],
        "scrape_configs": [{"job_name": "mulcot-worker", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen([exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        def results() -> float:
            try:
                got = _query(base, "sum(mulcot_results_total)")
            except OSError:
                return -1
            return float(got[0]["value"][1]) if got else -1

        wait_until(lambda: results() == N, 60, f"Prometheus to report {N} results")
        (up,) = _query(base, 'up{job="mulcot-worker"}')
        assert up["value"][1] == "1"
        by_label = {r["metric"]["label"]: float(r["value"][1]) for r in _query(base, "sum by (label) (mulcot_results_total)")}
        assert sum(by_label.values()) == N and set(by_label) <= {"positive", "neutral", "negative"}
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=5) as r:
            rules = [r for g in json.loads(r.read())["data"]["groups"] for r in g["rules"]]
        assert {r["name"] for r in rules} == {"MulcotConsumerLagGrowing", "MulcotDeadLetterRateHigh",
                                             "MulcotNoResults", "MulcotWorkerDown", "MulcotSentimentShift",
                                             "MulcotAlertResultsLate", "MulcotAlertDetectorDown"}
        assert all(r["health"] == "ok" for r in rules), rules
    finally:
        prom.terminate()
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(5)
        log.close()
