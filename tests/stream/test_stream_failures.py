"""Every case of issue 23's "Why" that is a failure: one line saying why, the right exit code, no
traceback, and no long wait. The verbs run as a user runs them (``python -m stream.cli ...``)
against real ports: nothing listening (refused), a web server (another protocol), a socket that
accepts and never answers (timeout), the real Tansu with SASL it does not speak, the real Valkey
with a wrong password. The README, labelling and dead-letter cases have their own files
(test_stream_readme.py, test_stream_label.py, test_stream_deadletters.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.protocol import SentimentResult
from stream.services import free_port
from tests.support.stream_helpers import ROOT, create_topics, read_topic, settings_env

SAMPLES = ROOT / "stream" / "samples" / "posts.jsonl"


class _Web(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"<html>a web page</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ports():  # type: ignore[no-untyped-def]
    """``refused``: nothing listens; ``web``: an HTTP server; ``silent``: accepts, never answers."""
    web = ThreadingHTTPServer(("127.0.0.1", 0), _Web)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel completes connections into the backlog; nobody reads them
    try:
        yield {"refused": free_port(), "web": web.server_address[1], "silent": silent.getsockname()[1]}
    finally:
        web.shutdown()
        silent.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULCOT_") and k != "REDIS_URL"}
    env.update({"MULCOT_METRICS_PORT": "0", "MULCOT_MODEL_SPEC": "noop", **extra})
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> tuple[int, list[str], str, float]:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "stream.cli", *args], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)  # fmt: skip
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    return p.returncode, lines, p.stderr, time.monotonic() - t0


def test_worker_with_a_wrong_broker_fails_in_seconds(tmp_path: Path) -> None:
    """Why 6 / Done when: `MULCOT_BROKER=127.0.0.1:1 mulcot worker` fails in under 5 s, in one
    line naming the broker, before it loads the student (here the default one)."""
    for port in (1, free_port()):
        rc, lines, err, took = _run(["worker"], _env(MULCOT_BROKER=f"127.0.0.1:{port}", MULCOT_MODEL_SPEC="default"), tmp_path)
        assert rc == 1 and lines == [f"Error: cannot reach Kafka at 127.0.0.1:{port}: connection refused "
                                     "(nothing listens on that port)"], err  # fmt: skip
        assert took < 5, took


def test_connection_failures_are_one_line_in_every_verb(services, ports, tmp_path: Path) -> None:
    """Why 7: refused, another protocol, timeout and refused credentials, for each verb that
    talks to Kafka or Redis: exit 1, one line naming the address and the cause, no traceback."""
    kafka, redis = services
    posts = tmp_path / "posts.jsonl"
    posts.write_text('{"id": "a", "text": "hello"}\n')
    ok = {"MULCOT_BROKER": kafka.bootstrap, "MULCOT_REDIS_URL": redis.url}
    kafka_verbs = [["worker"], ["produce", str(posts)], ["dead-letters"]]
    redis_verbs = [["results"], ["serve", "--port", "0"], ["worker"]]
    sasl = {"MULCOT_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "MULCOT_SASL_MECHANISM": "PLAIN",
            "MULCOT_SASL_USERNAME": "ann", "MULCOT_SASL_PASSWORD": "secret"}  # fmt: skip
    cases = []
    for verb in kafka_verbs:
        for kind, want in [("refused", "connection refused"), ("web", "Kafka broker"),
                           ("silent", "sent no Kafka metadata answer within")]:  # fmt: skip
            addr = f"127.0.0.1:{ports[kind]}"
            cases.append((verb, kind, {**ok, "MULCOT_BROKER": addr}, f"Error: cannot reach Kafka at {addr}: ", want))
        cases.append((verb, "sasl", {**ok, **sasl}, f"Error: cannot reach Kafka at {kafka.bootstrap}: ",
                      "authentication failed: [Error 33] UnsupportedSaslMechanismError"))
    addr = f"127.0.0.1:{ports['refused']}"
    cases.append((["services", "wait", "--timeout", "1"], "refused", {**ok, "MULCOT_BROKER": addr},
                  f"Error: cannot reach Kafka at {addr}: ", "connection refused (nothing listens on that port) (waited 1 s)"))
    bad_pw = redis.url.replace("redis://", "redis://nobody:wrong@")
    for verb in redis_verbs:
        for kind, want in [("refused", "Connection refused"), ("web", "Connection closed by server"),
                           ("silent", "no answer in time")]:  # fmt: skip
            url = f"redis://127.0.0.1:{ports[kind]}/0"
            cases.append((verb, kind, {**ok, "MULCOT_REDIS_URL": url}, f"Error: cannot reach Redis at {url}: ", want))
        cases.append((verb, "auth", {**ok, "MULCOT_REDIS_URL": bad_pw},
                      f"Error: cannot reach Redis at {bad_pw.replace(':wrong@', ':****@')}: ",
                      "authentication failed: invalid username-password pair"))

    def one(case):  # type: ignore[no-untyped-def]
        verb, kind, env, head, want = case
        rc, lines, err, took = _run(verb, _env(**env), tmp_path)
        good = rc == 1 and len(lines) == 1 and lines[0].startswith(head) and want in lines[0] and "Traceback" not in err
        return None if good and took < 30 else f"{' '.join(verb)} / {kind}: rc={rc} took={took:.1f}s stderr={err!r}"

    with ThreadPoolExecutor(4) as pool:
        problems = [p for p in pool.map(one, cases) if p]
    assert not problems, "\n".join(problems)


def test_produce_against_a_web_server_says_why_quickly(ports, tmp_path: Path) -> None:
    """Why 7: `mulcot produce` against a port that answers HTTP waited 30 s and printed an empty
    reason; now it says what answered, within seconds."""
    (tmp_path / "p.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    rc, lines, err, took = _run(["produce", "p.jsonl"], _env(MULCOT_BROKER=f"127.0.0.1:{ports['web']}"), tmp_path)
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err
    reason = lines[0].split(f"127.0.0.1:{ports['web']}: ", 1)[1]
    assert "Kafka broker" in reason and took < 15  # no answer (this server waits for a request line) or a closed connection


def test_produce_reports_every_line(make_settings, tmp_path: Path) -> None:
    """Why 4: a missing image file, broken JSON and a schema error are each reported with their
    line number (sent, so the worker dead-letters them, or skipped with --skip-invalid); --strict
    refuses the file; progress is printed as it goes."""
    s = make_settings()
    create_topics(s)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes((ROOT / "stream" / "samples" / "images" / "sunny_park.png").read_bytes())
    (tmp_path / "data.jsonl").write_text("\n".join([
        json.dumps({"id": "r1", "text": "with its image", "label": "positive", "image": "imgs/a.png"}),
        json.dumps({"id": "r2", "text": "its image is gone", "label": "negative", "image": "imgs/gone.png"}),
        '{"id": "r3", "text": "cut',
        json.dumps({"id": "", "text": "blank id"}),
        json.dumps({"id": "r5", "text": "fine"}),
    ]) + "\n")  # fmt: skip
    env = settings_env(s)
    try:
        json.loads('{"id": "r3", "text": "cut')
    except ValueError as exc:
        cut = str(exc)
    p = subprocess.run([sys.executable, "-m", "stream.cli", "produce", "data.jsonl"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        f"produced 5 posts to {s.input_topic} (3 warned, 0 skipped)",
        "  warned (sent): line 2: missing image file 'imgs/gone.png' (No such file or directory); sent without its image",
        f"  warned (sent): line 3: invalid JSON: {cut}",
        "  warned (sent): line 4: schema error: id: String should have at least 1 character",
    ]
    assert "produce data.jsonl (3 with problems): 5/5 posts" in p.stderr  # the progress line (no terminal: plain)
    sent = read_topic(s, s.input_topic, 5, timeout=30)
    by_key = {m.key: json.loads(m.value) if m.key else m.value for m in sent}
    assert "image_b64" in by_key[b"r1"] and "image_b64" not in by_key[b"r2"] and by_key[b"r2"]["metadata"] == {"gold_label": "negative"}
    assert by_key[None] == b'{"id": "r3", "text": "cut'  # sent as it is, for the worker to dead-letter

    p = subprocess.run([sys.executable, "-m", "stream.cli", "produce", "data.jsonl", "--skip-invalid", "--topic",
                        s.output_topic], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0 and p.stdout.splitlines()[0] == f"produced 3 posts to {s.output_topic} (1 warned, 2 skipped)"
    assert "  skipped (not sent): line 3: invalid JSON" in p.stdout and "  skipped (not sent): line 4: schema error" in p.stdout

    p = subprocess.run([sys.executable, "-m", "stream.cli", "produce", "data.jsonl", "--strict", "--topic", s.dlq_topic],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 1 and lines == ["Error: data.jsonl: line 2: missing image file 'imgs/gone.png' (No such file or "
                                           "directory); sent without its image; nothing was sent (--strict)"]  # fmt: skip
    assert read_topic(s, s.dlq_topic, 1, timeout=3) == []


def test_distill_teacher_fails_loudly(tmp_path: Path) -> None:
    """Why 5: against an unreachable endpoint every request fails: exit 1 with one line (it used
    to exit 0 with only a JSON summary); when some fail, a warning says how many."""
    from tests.support.openai_wire_server import WireServer

    data = tmp_path / "posts.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "text": f"post {i}", "label": "positive"}) + "\n" for i in range(3)))
    base = ["distill", "teacher", "--data", str(data), "--max-guided", "0", "--max-retries", "0", "--all"]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    p = subprocess.run([sys.executable, "-m", "stream.cli", *base, "--out", str(tmp_path / "a.jsonl"), "--base-url", dead],
                       env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    errors = [l for l in p.stderr.splitlines() if l.startswith("Error:")]
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert len(errors) == 1 and errors[0].startswith("Error: every request to the teacher failed: none of 3 posts got an "
                                                     "answer; last error: ")  # fmt: skip
    assert dead.removesuffix("/v1") in errors[0]  # the cause names the endpoint
    server = WireServer().start()
    server.fail = [400]  # the first request is refused for good
    try:
        p = subprocess.run([sys.executable, "-m", "stream.cli", *base, "--out", str(tmp_path / "b.jsonl"), "--base-url",
                            server.base_url, "--model", server.model], env=_env(), cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    finally:
        server.stop()
    warnings = [l for l in p.stderr.splitlines() if l.startswith("warning:")]
    assert p.returncode == 0, p.stderr
    assert len(warnings) == 1 and warnings[0].startswith("warning: 1 of 3 posts got no answer from the teacher"), p.stderr
    assert json.loads(p.stdout)["errors"] == 1


def _put(store, pid: str, chain: bool = True, aspect: str | None = None) -> None:  # type: ignore[no-untyped-def]
    text = ("The text describes a long afternoon in the park with friends, a picnic, a dog chasing a ball and the "
            "sun setting over the river, which reads as a warm and happy account of the day.")  # fmt: skip
    c = {"text_analysis": text, "image_analysis": "There is no image with this post, so nothing can be said about one.",
         "conflict_resolution": "There is no image to compare with, so the label rests on the text alone.",
         "final_conclusion": "From the text alone, the overall sentiment is positive.", "prediction": "positive"}  # fmt: skip
    store.put(SentimentResult(id=pid, aspect=aspect, label="positive", confidence=0.9,
                              probabilities={"positive": 0.9, "neutral": 0.05, "negative": 0.05},
                              chain=c if chain else None, model_name="m", model_version="1",
                              timings={"queued_ms": 0, "inference_ms": 0, "end_to_end_ms": 5}, processed_at=datetime.now(UTC)))  # fmt: skip


def test_results_smaller_items(make_settings, tmp_path: Path) -> None:
    """Why 8: `results --post` in 80 columns keeps the chain at full width; "no match" exits 0
    for --post as for --aspect (and --wait that runs out exits 1); `results --help` offers no
    --broker (it reads only Redis)."""
    from stream.store import ResultStore

    s = make_settings()
    store = ResultStore.from_settings(s)
    try:
        _put(store, "long-1", aspect="park")
    finally:
        store.close()
    env = {**settings_env(s), "COLUMNS": "80"}
    p = subprocess.run([sys.executable, "-m", "stream.cli", "results", "--post", "long-1"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and max(len(l) for l in lines) <= 80 and len(lines) <= 12, p.stdout
    assert any("Text: The text describes a long afternoon in the park with friends, a" in l for l in lines)  # ~76 wide
    runner = CliRunner()
    cli_env = {k: None for k in os.environ if k.startswith("MULCOT_") or k == "REDIS_URL"}
    cli_env.update({k: v for k, v in settings_env(s).items() if k.startswith("MULCOT_")})
    for args, said in [(["--post", "nope"], "no result for post 'nope'"), (["--aspect", "nothing"], "no results matched"),
                       (["--post", "nope", "--json"], None), (["--aspect", "nothing", "--json"], None)]:  # fmt: skip
        got = runner.invoke(main, ["results", *args], env=cli_env)
        assert got.exit_code == 0, (args, got.output)
        if said:
            assert said in got.stderr and not got.stdout
        else:
            assert json.loads(got.stdout) == []
    waited = runner.invoke(main, ["results", "--post", "nope", "--wait", "1"], env=cli_env)
    assert waited.exit_code == 1 and "Error: waited 1 s: 0 of 1 results" in waited.stderr
    waited = runner.invoke(main, ["results", "--aspect", "park", "-n", "1", "--wait", "5", "--json"], env=cli_env)
    assert waited.exit_code == 0 and [r["id"] for r in json.loads(waited.stdout)] == ["long-1"]
    helped = runner.invoke(main, ["results", "--help"])
    assert "--broker" not in helped.output and "--redis-url" in helped.output


def test_settings_typo_warns_with_the_nearest_setting(tmp_path: Path) -> None:
    """Why 8: a misspelt `MULCOT_MAX_BACH` is no longer silently ignored, in the environment or a
    .env line; documented non-setting variables (MULCOT_DATA_DIR, ...) get no warning."""
    (tmp_path / ".env").write_text("MULCOT_MAX_LATENCY=20\nMULCOT_LOG_LEVEL=info\n")
    p = subprocess.run([sys.executable, "-m", "stream.cli", "config", "--json"], cwd=tmp_path, capture_output=True, text=True,
                       env=_env(MULCOT_MAX_BACH="3", MULCOT_DATA_DIR="/data", MULCOT_THREADS="2"), timeout=60)  # fmt: skip
    assert p.returncode == 0 and json.loads(p.stdout)["max_batch"] == 32
    assert p.stderr.splitlines() == [
        "warning: MULCOT_MAX_BACH (environment variable) is not a mulcot setting and is ignored; did you mean MULCOT_MAX_BATCH?",
        "warning: MULCOT_MAX_LATENCY (line 1 of .env) is not a mulcot setting and is ignored; did you mean MULCOT_MAX_LATENCY_MS?",
    ]


def test_every_mulcot_variable_in_the_code_is_a_setting_or_allowed() -> None:
    """The typo warning's allow list (stream.settings.NON_SETTING_VARIABLES) stays complete: every
    MULCOT_* name the code, the deploy files and the docs use is a setting or listed there."""
    import re

    from stream.settings import NON_SETTING_VARIABLES, setting_names

    known = setting_names() | NON_SETTING_VARIABLES
    typos = {"MULCOT_MAX_BACH", "MULCOT_MAX_LATENCY"}  # the misspellings the warning is shown and tested with
    unknown: dict[str, str] = {}
    paths = [p for folder in ("stream", "model", "training", "deploy", "tests", "docs") for p in (ROOT / folder).rglob("*")
             if p.suffix in {".py", ".md", ".yml", ".yaml", ".toml", ".sh", ".json"} and p.is_file()]  # fmt: skip
    for path in paths + [ROOT / "docker-compose.yml", ROOT / "README.md", ROOT / "Makefile"]:
        for name, star in re.findall(r"(MULCOT_[A-Z0-9_]*[A-Z0-9])(_\*|_(?![A-Z0-9_]))?", path.read_text(errors="replace")):
            if star:  # a prefix ("the MULCOT_SASL_* settings", startswith("MULCOT_ALERTS_")): some setting starts so
                ok = any(k.startswith(name + "_") for k in known)
            else:
                ok = name in known or name in typos
            if not ok:
                unknown.setdefault(name + star, str(path.relative_to(ROOT)))
    assert not unknown, f"MULCOT_* names that are neither settings nor in NON_SETTING_VARIABLES: {unknown}"
