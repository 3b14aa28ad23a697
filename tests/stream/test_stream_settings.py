"""Settings: env prefix, REDIS_URL, .env, masking, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for k in list(os.environ):
        if k.startswith("MULCOT_") or k == "REDIS_URL":
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults(clean_env: Path) -> None:
    s = load_settings()
    assert s.broker == "127.0.0.1:9092"
    assert s.redis_url_value == "redis://127.0.0.1:6379/0"
    assert (s.input_topic, s.output_topic, s.dlq_topic) == ("posts", "sentiment.results", "posts.dlq")
    assert s.model_spec == "default"


def test_from_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULCOT_BROKER", "kafka://k1:9093,k2:9094")
    monkeypatch.setenv("MULCOT_MAX_BATCH", "64")
    monkeypatch.setenv("MULCOT_IMAGE_HOST_ALLOWLIST", '["*.example.org", "cdn.test"]')
    monkeypatch.setenv("MULCOT_CHAIN", "false")
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret@cache:6380/2")
    s = load_settings()
    assert s.bootstrap_servers == ["k1:9093", "k2:9094"]
    assert s.max_batch == 64 and s.chain is False
    assert s.image_host_allowlist == ["*.example.org", "cdn.test"]
    assert s.redis_url_value == "redis://:s3cret@cache:6380/2"
    monkeypatch.setenv("MULCOT_REDIS_URL", "redis://other:1/0")
    assert load_settings().redis_url_value == "redis://other:1/0"  # the prefixed name wins


def test_dotenv(clean_env: Path) -> None:
    (clean_env / ".env").write_text("MULCOT_INPUT_TOPIC=tweets\nMULCOT_MODEL_SPEC=noop\n")
    s = load_settings()
    assert s.input_topic == "tweets" and s.model_spec == "noop"


def test_secrets_masked(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULCOT_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("MULCOT_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MULCOT_SASL_USERNAME", "alice")
    monkeypatch.setenv("MULCOT_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("MULCOT_REDIS_URL", "redis://bob:pw123@cache:6379/0")
    s = load_settings()
    shown = str(s.masked())
    assert "hunter2" not in shown and "pw123" not in shown
    assert s.masked()["redis_url"] == "redis://bob:****@cache:6379/0"
    auth = s.kafka_auth()
    assert auth == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice", "sasl_plain_password": "hunter2",
    }  # fmt: skip


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"MULCOT_MAX_BATCH": "lots"}, "MULCOT_MAX_BATCH"),
        ({"MULCOT_BROKER": "nohostport"}, "MULCOT_BROKER"),
        ({"MULCOT_REDIS_URL": "http://x"}, "redis"),
        ({"MULCOT_OUTPUT_TOPIC": "posts"}, "must differ"),
        ({"MULCOT_SECURITY_PROTOCOL": "SASL_SSL"}, "sasl_mechanism"),
        ({"MULCOT_INPUT_TOPIC": "bad topic!"}, "MULCOT_INPUT_TOPIC"),
    ],
)
def test_bad_settings_one_line(clean_env: Path, monkeypatch: pytest.MonkeyPatch, env: dict, needle: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_settings_no_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULCOT_")}
    env["MULCOT_MAX_LATENCY_MS"] = "-5"
    for verb in (["config"], ["worker"], ["results"], ["produce", str(ROOT / "stream/samples/posts.jsonl")]):
        p = subprocess.run([sys.executable, "-m", "stream.cli", *verb], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        assert p.returncode != 0
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert len(lines) == 1, p.stderr
        assert "MULCOT_MAX_LATENCY_MS" in lines[0] and "Traceback" not in p.stderr


def test_every_field_has_a_description() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"


def test_list_settings_say_they_take_json(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in (("MULCOT_COUNT_WINDOWS_S", "60"), ("MULCOT_COUNT_WINDOWS_S", "60,3600"), ("MULCOT_IMAGE_HOST_ALLOWLIST", "a.com")):
        monkeypatch.setenv(var, value)
        with pytest.raises(SettingsError) as err:
            load_settings()
        assert f"{var} takes a JSON list, e.g. {var}='[" in str(err.value), str(err.value)
        monkeypatch.delenv(var)
    monkeypatch.setenv("MULCOT_COUNT_WINDOWS_S", "[60]")
    assert load_settings().count_windows_s == [60]


def test_relative_work_dir_is_made_absolute_once(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.work_dir == clean_env / ".cache" / "mulcot"
    monkeypatch.chdir("/")
    assert s.work_dir == clean_env / ".cache" / "mulcot"  # fixed when read, not when used


def test_env_round_trip(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings.env() is what a child process (WorkerProcess) reads back: the same settings."""
    s = load_settings(broker="k1:9093", redis_url="redis://:pw@cache:6380/2", count_windows_s=[60, 300],
                      image_host_allowlist=["*.example.org"], chain=False, sasl_mechanism="PLAIN",
                      security_protocol="SASL_PLAINTEXT", sasl_password="s3cret", work_dir="rel/dir")  # fmt: skip
    for k, v in s.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir("/")  # the work dir was made absolute: the child may run anywhere
    back = load_settings()
    assert back.model_dump() == s.model_dump()
    assert back.redis_url_value == s.redis_url_value and back.sasl_password.get_secret_value() == "s3cret"
