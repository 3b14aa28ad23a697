"""``mulcot serve``: a read-only query API and a live dashboard over the Redis result store.

``create_app(settings)`` is the ASGI app (FastAPI): ``/api/...`` (see :mod:`stream.serve.api`
and ``/api/openapi.json``) and the dashboard page at ``/`` (``static/``: plain HTML, CSS and
one script; no build step). ``serve(settings)`` runs it in the foreground with uvicorn;
``start_background(settings)`` runs it in a thread (``mulcot demo``) and returns a handle
with the URL and ``stop()``. Documentation: docs/dashboard.md.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from .api import create_app


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def serve(settings: Any, host: str | None = None, port: int | None = None, log_level: str = "warning") -> None:
    """Run the API + dashboard in the foreground until Ctrl-C (blocking)."""
    import uvicorn

    uvicorn.run(
        create_app(settings), host=host or settings.serve_host, port=settings.serve_port if port is None else port,
        log_level=log_level, access_log=False, server_header=False, proxy_headers=False,
    )  # fmt: skip


@dataclass
class BackgroundServer:
    url: str
    server: Any
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_background(settings: Any, host: str | None = None, port: int | None = None, timeout: float = 20.0) -> BackgroundServer:
    """Start the API + dashboard in a daemon thread; returns once it accepts connections.
    ``port=0`` picks a free port (the returned ``url`` has the real one)."""
    import uvicorn

    config = uvicorn.Config(
        create_app(settings), host=host or settings.serve_host, port=settings.serve_port if port is None else port,
        log_level="warning", access_log=False, server_header=False, proxy_headers=False, lifespan="on",
    )  # fmt: skip
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign] - not the main thread
    thread = threading.Thread(target=server.run, name="mulcot-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"mulcot serve did not start on {config.host}:{config.port}")
        time.sleep(0.05)
    sock_port = server.servers[0].sockets[0].getsockname()[1]
    return BackgroundServer(url_of(config.host, sock_port), server, thread)


def start_dashboard(settings: Any) -> BackgroundServer:
    """``mulcot demo``'s dashboard: on ``settings.serve_host:serve_port`` when that port is
    free, else on any free port."""
    import socket

    port = settings.serve_port
    try:
        with socket.socket() as probe:
            probe.bind((settings.serve_host, port))
    except OSError:
        port = 0
    return start_background(settings, port=port)


def wait_for_ctrl_c(console: Any, url: str) -> None:
    """Keep the calling thread (and the dashboard thread) alive until Ctrl-C / SIGTERM."""
    import signal

    stop = threading.Event()
    old = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"dashboard still serving at [bold]{url}[/bold]; Ctrl-C to stop (or run with --exit)")
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)


__all__ = ["create_app", "serve", "start_background", "start_dashboard", "wait_for_ctrl_c", "BackgroundServer", "url_of"]
