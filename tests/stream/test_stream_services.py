"""Embedded services start, serve and stop without leaving processes behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.services import EmbeddedKafka, ServiceError, embedded_services, free_port, port_open


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); read its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_start_stop_no_orphans(tmp_path: Path) -> None:
    with embedded_services(log_dir=tmp_path) as (kafka, redis):
        pids = [kafka.proc.pid, redis.proc.pid]
        assert port_open("127.0.0.1", kafka.port) and port_open("127.0.0.1", redis.port)
        import redis as _redis

        assert _redis.Redis.from_url(redis.url).ping()
        assert kafka.log_path.exists() and redis.log_path.exists()
    assert all(_gone(p) for p in pids)
    assert not port_open("127.0.0.1", kafka.port) and not port_open("127.0.0.1", redis.port)


def test_port_in_use_is_a_clear_error(services) -> None:  # type: ignore[no-untyped-def]
    kafka, _ = services
    with pytest.raises(ServiceError, match="already in use"):
        EmbeddedKafka(port=kafka.port).start()


def test_services_up_cli_stops_children_on_sigterm(tmp_path: Path) -> None:
    kp, rp = free_port(), free_port()
    env = dict(os.environ, MULCOT_BROKER=f"127.0.0.1:{kp}", MULCOT_REDIS_URL=f"redis://127.0.0.1:{rp}/0")
    p = subprocess.Popen([sys.executable, "-m", "stream.cli", "services", "up", "--log-dir", str(tmp_path)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (port_open("127.0.0.1", kp) and port_open("127.0.0.1", rp)):
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else "timeout"
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    time.sleep(0.3)
    assert not port_open("127.0.0.1", kp) and not port_open("127.0.0.1", rp)


def test_parent_death_takes_children(tmp_path: Path) -> None:
    """SIGKILL the parent: the children get SIGTERM from the kernel (no orphans)."""
    kp = free_port()
    root = str(Path(__file__).resolve().parents[2])
    code = (
        "import time\n"
        "from stream.services import EmbeddedKafka\n"
        f"k = EmbeddedKafka(port={kp}, log_dir={str(tmp_path)!r}).start(); print(k.proc.pid, flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=root)
    child = int(p.stdout.readline())
    p.kill()
    p.wait()
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child)


def test_services_up_with_the_default_work_dir_from_another_directory(tmp_path: Path) -> None:
    """`mulcot services up` as the README runs it, with the default (relative) MULCOT_WORK_DIR,
    from a directory that is not the repository: both services answer, Ctrl-C stops both."""
    import redis as _redis

    kport, rport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULCOT_") and k != "REDIS_URL"}
    env.update(MULCOT_BROKER=f"127.0.0.1:{kport}", MULCOT_REDIS_URL=f"redis://127.0.0.1:{rport}/0")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "services", "up"], cwd=str(cwd), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (port_open("127.0.0.1", kport) and port_open("127.0.0.1", rport)):
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "services did not come up"
            time.sleep(0.1)
        assert _redis.Redis(port=rport).ping()
        from stream.kafka import ensure_topics_sync
        from stream.settings import load_settings

        assert "posts" in ensure_topics_sync(load_settings(broker=f"127.0.0.1:{kport}"))  # Kafka answers
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, out
    logs = sorted(p.name for p in (cwd / ".cache" / "mulcot" / "services").iterdir())
    assert logs == [f"tansu-{kport}.log", f"valkey-{rport}.log"], logs
