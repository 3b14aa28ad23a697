"""docker-compose.yml and deploy/Dockerfile, validated offline (Docker cannot run here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from stream.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {f"MULCOT_{name.upper()}" for name in Settings.model_fields}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services() -> None:
    c = _compose()
    assert set(c["services"]) >= {"kafka", "redis", "worker"}
    kafka = c["services"]["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and "broker" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft
    w = c["services"]["worker"]
    assert w["build"]["dockerfile"] == "deploy/Dockerfile" and (ROOT / w["build"]["dockerfile"]).exists()
    assert set(w["depends_on"]) == {"kafka", "redis"}
    for dep in w["depends_on"].values():
        assert dep["condition"] == "service_healthy"
    assert "ports" not in w, "the worker publishes no host port, so it can be scaled"


def test_compose_worker_env_matches_settings(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    c = _compose()
    env = c["services"]["worker"]["environment"]
    unknown = set(env) - FIELDS
    assert not unknown, f"compose sets variables the settings do not have: {sorted(unknown)}"
    # the broker the worker uses is the INTERNAL listener Kafka advertises
    advertised = c["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"INTERNAL://{env['MULCOT_BROKER']}" in advertised
    assert "EXTERNAL://localhost:9092" in advertised and "9092:9092" in c["services"]["kafka"]["ports"]
    assert env["MULCOT_REDIS_URL"].startswith("redis://redis:")
    # and the values are valid settings
    for k in list(__import__("os").environ):
        if k.startswith("MULCOT_") or k == "REDIS_URL":
            monkeypatch.delenv(k)
    for k, v in env.items():
        v = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))  # ${VAR:-default} -> default
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.broker == "kafka:19092" and s.metrics_port == 9400
    assert str(s.metrics_port) in c["services"]["worker"]["expose"]
    assert s.heartbeat_s < s.session_timeout_s


def test_dockerfile() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    env_names = set(re.findall(r"\b(MULCOT_[A-Z_]+)=", text))
    assert env_names and env_names <= FIELDS, env_names - FIELDS
    assert re.search(r'ENTRYPOINT \["mulcot"\]', text) and re.search(r'CMD \["worker"\]', text)
    torch_line = next(i for i, l in enumerate(text.splitlines()) if "$TORCH" in l and "pip install" in l)
    project_line = next(i for i, l in enumerate(text.splitlines()) if l.strip() in ("RUN pip install .", "RUN pip install --no-deps ."))
    assert torch_line < project_line, "torch must be installed before the project (CPU wheel)"
    port = re.search(r"MULCOT_METRICS_PORT=(\d+)", text).group(1)
    assert f"EXPOSE {port}" in text
    for path in re.findall(r"^COPY (?!--)(\S+) ", text, flags=re.M):
        assert (ROOT / path).exists(), path
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text()
    for needed in ("!model/**", "!stream/**", "!training/**", "!pyproject.toml"):
        assert needed in ignore


def test_readme_documents_settings_and_sections() -> None:
    text = (ROOT / "README.md").read_text()
    missing = sorted(f for f in FIELDS if f"`{f}" not in text)
    assert not missing, f"README's configuration table lacks {missing}"
    for heading in ("## Two commands", "## Configuration", "## Redis key layout", "## Topics and record formats",
                    "## Against real Kafka", "## The default student", "## Training"):  # fmt: skip
        assert heading in text
    assert "make demo" in text and "make test" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_settings_table_is_current() -> None:
    from stream.settings import markdown_table

    assert markdown_table() in (ROOT / "README.md").read_text(), "run `python -m stream.settings --markdown` and update README"
