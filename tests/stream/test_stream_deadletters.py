"""Dead letters can be read: `mulcot dead-letters` from the broker's dead-letter topic (after a
real worker and after `mulcot demo`), and the bounded list the worker's Redis sink keeps for the
dashboard (``P dead_recent``, read by ``ResultStore.recent_dead_letters`` and /api/dead-letters)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from stream.protocol import DeadLetter
from stream.store import DEAD_INLINE_MAX_BYTES, ResultStore
from tests.support.stream_helpers import ROOT, create_topics, produce, read_topic, settings_env

SAMPLES = ROOT / "stream" / "samples" / "posts.jsonl"
DEMO_DEAD = {"invalid_json": 1, "schema": 1, "image_unreadable": 1}  # the bundled samples' bad records


def _cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_dead_letters_from_the_topic_and_from_redis(make_settings, start_worker, tmp_path: Path) -> None:
    s = make_settings()
    create_topics(s)
    worker = start_worker(s)
    big = json.dumps({"id": "big-bad", "text": "x" * (DEAD_INLINE_MAX_BYTES + 100), "image_b64": "bm90IGFuIGltYWdl"})
    env = settings_env(s)
    p = _cli("produce", str(SAMPLES), env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    produce(s, [(b"big-bad", big.encode())])
    assert len(read_topic(s, s.dlq_topic, 4, timeout=60)) == 4, worker.tail()

    p = _cli("dead-letters", "--json", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    got = [DeadLetter.model_validate(d) for d in json.loads(p.stdout)]
    assert sorted(d.error.value for d in got) == ["image_unreadable", "image_unreadable", "invalid_json", "schema"]
    assert got == sorted(got, key=lambda d: d.first_seen_at, reverse=True)  # newest first
    by_id = {d.post_id: d for d in got}
    assert "not an image in any format Pillow can identify" in by_id["demo-bad-image"].message
    assert "BytesIO" not in by_id["demo-bad-image"].message  # no object repr in a message
    assert base64.b64decode(by_id["big-bad"].original.data_b64 or "").decode() == big  # inline on the topic

    one = _cli("dead-letters", "--code", "schema", "--json", env=env, cwd=tmp_path)
    assert [d["error"] for d in json.loads(one.stdout)] == ["schema"]
    newest = _cli("dead-letters", "--recent", "1", "--json", env=env, cwd=tmp_path)
    assert [d["post_id"] for d in json.loads(newest.stdout)] == [got[0].post_id]
    table = _cli("dead-letters", "--recent", "0", env={**env, "COLUMNS": "100"}, cwd=tmp_path)
    assert table.returncode == 0
    schema = next(d for d in got if d.error.value == "schema")
    block = table.stdout[table.stdout.index(" schema  "):]
    assert "(no post id)" in block and f"from {schema.source.topic}/{schema.source.partition}/{schema.source.offset}, 58 bytes" in block
    assert "id: Field required" in block and 'original: {"text": "a post without an id is rejected by the schema"}' in block
    none = _cli("dead-letters", "--code", "model_error", env=env, cwd=tmp_path)
    assert none.returncode == 0 and not none.stdout and none.stderr.strip() == (
        f"no dead letters with code model_error on {s.dlq_topic} at {s.broker}")

    # the same dead letters in Redis for the dashboard, the big original by reference only
    store = ResultStore.from_settings(s)
    try:
        kept = store.recent_dead_letters(10)
        assert sorted(d.error.value for d in kept) == sorted(d.error.value for d in got)
        big_kept = next(d for d in kept if d.post_id == "big-bad")
        assert big_kept.original.data_b64 is None and big_kept.original.size == len(big)
        assert big_kept.original.ref == f"kafka://{big_kept.source.topic}/{big_kept.source.partition}/{big_kept.source.offset}"
        assert [d.error.value for d in store.recent_dead_letters(10, code="schema")] == ["schema"]
        assert store.client.llen(store.layout.dead_recent) == 4
    finally:
        store.close()


def test_dead_letters_follow(make_settings, start_worker, tmp_path: Path) -> None:
    s = make_settings()
    create_topics(s)
    worker = start_worker(s)
    produce(s, [(b"x1", b'{"id": "x1"}')])  # schema: neither text nor image
    assert len(read_topic(s, s.dlq_topic, 1, timeout=60)) == 1, worker.tail()
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "dead-letters", "--follow", "--json"], env=settings_env(s),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    try:
        assert proc.stderr.readline().startswith(f"following {s.dlq_topic} on {s.broker}")  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while not lines and time.monotonic() < deadline:
            time.sleep(0.1)
        produce(s, [(b"x2", b"not json at all")])
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [json.loads(l)["error"] for l in lines] == ["schema", "invalid_json"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]


def test_dead_letters_after_the_demo(tmp_path: Path) -> None:
    """Done when: `mulcot dead-letters --json` after `mulcot demo` lists the demo's 3 dead letters
    with their codes (while the demo's dashboard keeps its services up; the model-free student,
    as dead letters do not depend on it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULCOT_")}
    env.update({"MULCOT_SERVE_PORT": "0", "MULCOT_WORK_DIR": str(tmp_path / "work")})
    demo = subprocess.Popen([sys.executable, "-m", "stream.cli", "demo", "--model", "noop"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(iter(demo.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + 240
        while not any("dashboard still serving" in l for l in out) and time.monotonic() < deadline:
            assert demo.poll() is None, "".join(out)
            time.sleep(0.2)
        text = "".join(out)
        assert "all posts accounted for" in text, text
        found = re.search(r"export MULCOT_BROKER=(\S+) MULCOT_REDIS_URL=(\S+?);", text)
        assert found, text
        env2 = {**env, "MULCOT_BROKER": found.group(1), "MULCOT_REDIS_URL": found.group(2)}
        p = _cli("dead-letters", "--json", env=env2, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        codes: dict[str, int] = {}
        for d in json.loads(p.stdout):
            codes[d["error"]] = codes.get(d["error"], 0) + 1
        assert codes == DEMO_DEAD
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(60)
    assert demo.returncode == 0
