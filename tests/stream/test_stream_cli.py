"""The command line: help of every verb, plugin discovery, produce + results --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.protocol import SentimentResult
from tests.support.stream_helpers import ROOT, create_topics, settings_env, wait_redis


def _verbs(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        out.append(prefix + (name,))
        if isinstance(cmd, click.Group):
            out.extend(_verbs(cmd, prefix + (name,)))
    return out


def test_every_verb_has_help() -> None:
    runner = CliRunner()
    verbs = _verbs(main)
    for v in [("worker",), ("services", "up"), ("produce",), ("results",), ("demo",), ("config",), ("bench", "stream")]:
        assert v in verbs
    for v in verbs:
        res = runner.invoke(main, [*v, "--help"])
        assert res.exit_code == 0, (v, res.output)
        assert len(res.output.splitlines()) > 3


def test_plugin_verbs_are_discovered(tmp_path: Path) -> None:
    """A distribution registering `mulcot.commands` (as training does) adds a verb."""
    (tmp_path / "fakeplug.py").write_text(
        "import click\n@click.command()\ndef hello():\n    'Say hello (a plugin verb).'\n    click.echo('hello from plugin')\n"
        "broken = 42\n"
    )
    dist = tmp_path / "fakeplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mulcot.commands]\nhello = fakeplug:hello\nbad = fakeplug:broken\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    run = lambda *a: subprocess.run([sys.executable, "-m", "stream.cli", *a], env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
    helped = run("--help")
    assert "hello" in helped.stdout and "worker" in helped.stdout
    said = run("hello")
    assert said.returncode == 0 and said.stdout.strip() == "hello from plugin"
    bad = run("bad")
    assert bad.returncode != 0 and "could not be loaded" in bad.stderr and "Traceback" not in bad.stderr


def test_produce_and_results_json(make_settings, start_worker, tmp_path: Path) -> None:
    s = make_settings()
    create_topics(s)
    worker = start_worker(s)
    env = settings_env(s)
    samples = ROOT / "stream" / "samples" / "posts.jsonl"
    p = subprocess.run([sys.executable, "-m", "stream.cli", "produce", str(samples), "--limit", "8"], env=env,
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "produced 8 posts" in p.stdout
    ids = [f"demo-0{i}" for i in range(1, 7)] + ["demo-07"]  # line 7 of the samples is invalid JSON
    assert not wait_redis(s, ids, timeout=60, worker=worker), worker.tail()
    runner = CliRunner()
    # in-process (same code path, no interpreter start-up per call); env as the subprocess had it
    only_ours = {k: None for k in os.environ if k.startswith("MULCOT_") or k == "REDIS_URL"}
    cli = lambda *a: runner.invoke(main, ["results", *a], env={**only_ours, **{k: v for k, v in env.items() if k.startswith("MULCOT_")}})  # noqa: E731
    one = cli("--post", "demo-03", "--json")
    assert one.exit_code == 0, one.output
    got = json.loads(one.stdout)
    assert isinstance(got, list) and len(got) == 1
    assert SentimentResult.model_validate(got[0]).id == "demo-03"
    recent = [SentimentResult.model_validate(x) for x in json.loads(cli("--recent", "50", "--json").stdout)]
    assert {r.id for r in recent} == set(ids)
    by_aspect = json.loads(cli("--aspect", "Cafe on Elm Street", "--json").stdout)
    assert [r["id"] for r in by_aspect] == ["demo-05"]
    table = cli("--post", "demo-03")
    assert table.exit_code == 0 and "demo-03" in table.stdout and "Prediction" in table.stdout
    missing = cli("--post", "nope")  # no match is not an error, as for --aspect (said on stderr)
    assert missing.exit_code == 0 and "no result for post 'nope'" in missing.stderr and not missing.stdout


def test_results_when_redis_is_down(tmp_path: Path) -> None:
    from stream.services import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("MULCOT_")}
    env["MULCOT_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    p = subprocess.run([sys.executable, "-m", "stream.cli", "results", "--json"], env=env, capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert p.returncode != 0 and "cannot reach Redis" in p.stderr and "Traceback" not in p.stderr


def test_missing_student_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from model import loading
    from stream.demo import DemoError, check_model

    monkeypatch.setattr(loading, "DEFAULT_WEIGHTS", tmp_path / "no-weights")
    with pytest.raises(DemoError, match="default student is not available.*no-weights"):
        check_model("default")
    check_model("noop")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULCOT_")}
    for verb in (["worker"], ["demo"]):
        p = subprocess.run([sys.executable, "-m", "stream.cli", *verb, "--model", f"compact:{tmp_path}/nothing"],
                           env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert p.returncode != 0 and len(lines) == 1 and "does not exist" in lines[0], p.stderr


def _put(store, pid: str, label: str = "positive", aspect: str | None = None) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime

    probs = {"positive": 0.1, "neutral": 0.1, "negative": 0.1}
    probs[label] = 0.8
    store.put(SentimentResult(id=pid, aspect=aspect, label=label, confidence=0.8, probabilities=probs, model_name="m",
                              model_version="1", timings={"queued_ms": 0, "inference_ms": 0, "end_to_end_ms": 5},
                              processed_at=datetime.now(UTC)))  # fmt: skip


def _cli_env(s) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    only_ours: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MULCOT_") or k == "REDIS_URL"}
    only_ours.update({k: v for k, v in settings_env(s).items() if k.startswith("MULCOT_")})
    return only_ours


def test_results_says_what_it_looked_for(make_settings) -> None:  # type: ignore[no-untyped-def]
    from stream.store import ResultStore

    s = make_settings()
    runner = CliRunner()
    env = _cli_env(s)
    empty = runner.invoke(main, ["results", "--aspect", "Obama"], env=env)
    assert empty.exit_code == 0
    assert "no results matched; filters: newest 10, aspect 'Obama'" in empty.output and "holds no results yet" in empty.output
    store = ResultStore.from_settings(s)
    try:
        _put(store, "a", aspect="Japan")
        _put(store, "b", label="negative", aspect="Coffee")
        _put(store, "c", label="neutral")
    finally:
        store.close()
    miss = runner.invoke(main, ["results", "--aspect", "Obama"], env=env)
    assert "aspect 'Obama'" in miss.output and "holds 3 results" in miss.output
    assert "Aspects with results include: 'coffee', 'japan'" in miss.output
    miss = runner.invoke(main, ["results", "--aspect", "japan", "--label", "negative", "-n", "5"], env=env)
    assert "filters: newest 5, aspect 'japan' (case-insensitive), label 'negative'" in miss.output
    hit = runner.invoke(main, ["results", "--label", "negative", "--json"], env=env)
    assert [r["id"] for r in json.loads(hit.stdout)] == ["b"]
    assert json.loads(runner.invoke(main, ["results", "--aspect", "JAPAN", "--json"], env=env).stdout)[0]["id"] == "a"


def test_results_follow_prints_new_results(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import signal
    import threading
    import time

    from stream.store import ResultStore

    s = make_settings()
    store = ResultStore.from_settings(s)
    _put(store, "old", aspect="Japan")  # already there: printed first, once
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "results", "--follow", "--json", "--aspect", "japan"],
                            env=settings_env(s), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        assert "following new results (aspect='japan')" in proc.stderr.readline()  # type: ignore[union-attr]
        _put(store, "n1", aspect="Japan")
        _put(store, "other", aspect="Coffee")  # filtered out
        _put(store, "n2", label="negative", aspect=" japan ")
        deadline = time.monotonic() + 20
        while len(lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [json.loads(x)["id"] for x in lines] == ["old", "n1", "n2"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
        store.close()
    assert proc.returncode == 0 and "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]


def test_config_table_is_not_cut_at_80_columns(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULCOT_")}
    env["MULCOT_REDIS_URL"] = "redis://user:secret@a-rather-long-host-name.example.internal:6379/0"
    env["MULCOT_IMAGE_HOST_ALLOWLIST"] = '["images.example.org", "*.cdn.example.net", "media.example.com"]'
    p = subprocess.run([sys.executable, "-m", "stream.cli", "config"], env=env, capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "\u2026" not in p.stdout  # nothing elided
    assert "MULCOT_REPLICATION_FACTOR" in p.stdout and "MULCOT_IMAGE_ALLOW_PRIVATE_HOSTS" in p.stdout
    assert "redis://user:****@a-rather-long-host-name.example.internal:6379/0" in p.stdout and "secret" not in p.stdout
    assert '["images.example.org", "*.cdn.example.net", "media.example.com"]' in p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) > 80
