"""The streaming service: Faust agents from Kafka posts to Kafka results and a Redis cache.

Public entry points (imported lazily, so ``stream.protocol`` users do not load Faust)::

    from stream import Application, Settings, load_settings, ResultStore
    Application(load_settings(model_spec="noop")).run_worker()
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Application": "stream.app",
    "Settings": "stream.settings",
    "load_settings": "stream.settings",
    "ResultStore": "stream.store",
    "Post": "stream.protocol",
    "SentimentResult": "stream.protocol",
    "DeadLetter": "stream.protocol",
    "ErrorCode": "stream.protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stream' has no attribute {name!r}")
