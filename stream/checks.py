"""Connection checks the verbs run before any slow work, and one-line reasons for failures.

``check_kafka`` (a TCP connect, then a metadata request, each with a short timeout) and
``check_redis`` (``PING``) raise :class:`~stream.kafka.BrokerUnavailable` /
:class:`CacheUnavailable` whose text is one line naming the address and the cause: refused,
no answer within the timeout, an answer in another protocol (a web server on that port), or
refused credentials. :func:`describe` gives an exception's cause, never an empty string
(``str(e)``, else its class name). :func:`expected_failure` maps the connection errors any verb
may meet to that one line, so the command line prints no traceback for them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any

CHECK_TIMEOUT_S = 3.0


class BrokerUnavailable(RuntimeError):
    """Kafka cannot be reached; ``str()`` is one line naming the broker and the cause. (Here, not
    in :mod:`stream.kafka`, so a verb can check the broker before aiokafka is imported.)"""


class CacheUnavailable(RuntimeError):
    """Redis did not answer a PING; ``str()`` is one line naming the URL (password masked)."""


def describe(exc: BaseException) -> str:
    """The cause of ``exc`` in one line, never empty: its text, else its class name."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if not text:
        cause = exc.__cause__ or exc.__context__
        return f"{name} ({describe(cause)})" if cause is not None and cause is not exc else name
    return text if name in ("OSError", "ConnectionRefusedError") or name in text else f"{text} ({name})"


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _tcp_reason(addr: str, timeout_s: float) -> str | None:
    """None when ``addr`` accepts a TCP connection, else why not (refused, timeout, DNS)."""
    host, port = _split(addr)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port)"
    except TimeoutError:
        return f"no TCP connection within {timeout_s:g} s"
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {describe(exc)}"
    except OSError as exc:
        return describe(exc)


class _LastError(logging.Handler):
    """Keeps the last error aiokafka logged: its bootstrap error names no cause, the log does
    (refused, an unsupported SASL mechanism, failed authentication, ...)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        text = re.sub(r":?\s*<AIOKafkaConnection[^>]*>", "", record.getMessage())
        self.text = " ".join(text.split())


async def _metadata(settings: Any, timeout_s: float) -> None:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        retry_backoff_ms=100,
        **settings.kafka_auth(),
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
    finally:
        try:
            await asyncio.wait_for(client.close(), 2)
        except Exception:  # noqa: BLE001 - closing a client that never connected
            pass


def check_kafka(settings: Any, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Raise :class:`BrokerUnavailable` (one line) unless a broker of ``settings`` answers a
    metadata request within ``timeout_s``."""
    where = f"cannot reach Kafka at {settings.broker}"
    reasons = [r for r in (_tcp_reason(a, timeout_s) for a in settings.bootstrap_servers) if r is not None]
    if len(reasons) == len(settings.bootstrap_servers):
        raise BrokerUnavailable(f"{where}: {reasons[0]}")
    last = _LastError()
    logger = logging.getLogger("aiokafka")
    logger.addHandler(last)
    try:
        asyncio.run(_metadata(settings, timeout_s))
    except TimeoutError:
        raise BrokerUnavailable(
            f"{where}: it accepts connections but sent no Kafka metadata answer within {timeout_s:g} s "
            f"(is it a Kafka broker, and is MULCOT_SECURITY_PROTOCOL={settings.security_protocol} what it speaks?)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise BrokerUnavailable(f"{where}: {kafka_reason(exc, settings, last.text)}") from None
    finally:
        logger.removeHandler(last)


def kafka_reason(exc: BaseException, settings: Any, logged: str = "") -> str:
    """The cause of a failed Kafka connection (``logged``: the last error aiokafka logged), with a
    hint for the usual mistakes."""
    text = describe(exc)
    if "bootstrap" in text.lower():  # names no cause: the log does
        text = re.sub(r'^Unable connect to "[^"]*":\s*', "", logged) or text
    if re.search(r"sasl|authenticat", f"{type(exc).__name__} {text}", re.IGNORECASE):
        return f"authentication failed: {text} (check MULCOT_SASL_MECHANISM / MULCOT_SASL_USERNAME / MULCOT_SASL_PASSWORD)"
    if "bootstrap" in describe(exc).lower():  # the TCP connection was made, so the server spoke something else
        return (f"the server accepted the connection but did not answer as a Kafka broker ({text}; wrong port, or "
                f"is MULCOT_SECURITY_PROTOCOL={settings.security_protocol} not what it speaks?)")  # fmt: skip
    return text


def check_redis(settings: Any, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Raise :class:`CacheUnavailable` (one line) unless Redis answers ``PING`` within ``timeout_s``."""
    import redis

    client = redis.Redis.from_url(settings.redis_url_value, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise CacheUnavailable(redis_message(settings, exc)) from None
    except OSError as exc:
        raise CacheUnavailable(f"cannot reach Redis at {masked_url(settings)}: {describe(exc)}") from None
    finally:
        client.close()


def masked_url(settings: Any) -> str:
    return str(settings.masked()["redis_url"])


def redis_message(settings: Any, exc: BaseException) -> str:
    """One line for a failed Redis call: the URL (password masked) and the cause."""
    import redis

    where = f"cannot reach Redis at {masked_url(settings)}"
    text = describe(exc)
    if isinstance(exc, redis.exceptions.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return f"{where}: authentication failed: {text} (check the user and password in MULCOT_REDIS_URL)"
    if isinstance(exc, redis.exceptions.InvalidResponse):
        return f"{where}: the server did not answer as Redis ({text}; wrong port?)"
    if isinstance(exc, redis.exceptions.TimeoutError):
        return f"{where}: no answer in time ({text})"
    return f"{where}: {text}"


def expected_failure(exc: BaseException) -> str | None:
    """One line for a connection failure any verb may meet (refused, timeout, wrong protocol,
    refused credentials), or None for an unexpected error, which keeps its traceback."""
    if isinstance(exc, (BrokerUnavailable, CacheUnavailable)):
        return str(exc)
    names = {c.__name__ for c in type(exc).__mro__}
    module = type(exc).__module__
    if module.startswith("redis") and names & {"ConnectionError", "TimeoutError", "InvalidResponse", "AuthenticationError",
                                               "AuthenticationWrongNumberOfArgsError", "NoPermissionError"}:  # fmt: skip
        return f"Redis: {describe(exc)}"
    if module.startswith("aiokafka") and names & {"KafkaConnectionError", "KafkaTimeoutError", "NodeNotReadyError",
                                                  "UnknownError", "SaslAuthenticationFailed"}:  # fmt: skip
        return f"Kafka: {describe(exc)}"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return f"connection failed: {describe(exc)}"
    return None


__all__ = ["CacheUnavailable", "BrokerUnavailable", "check_kafka", "check_redis", "describe", "expected_failure",
           "kafka_reason", "redis_message", "masked_url", "CHECK_TIMEOUT_S"]
