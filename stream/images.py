"""Image handling of the worker: safe decoding and bounded, SSRF-safe fetching by URL.

Decoding (Pillow) checks the encoded size and the pixel count *before* decoding
(decompression bombs), applies the EXIF orientation and converts to RGB. ``check_image``
makes the same checks from the header alone, for students that do not read pixels.

Fetching is async and bounded (timeout, byte limit, concurrency) and refuses: schemes
other than https/http (file only where enabled), hosts outside the allow-list when one is
set, and - unless explicitly allowed - hosts that resolve to private, loopback,
link-local, multicast or reserved addresses. The address actually connected to is checked
again after connecting (DNS rebinding), and redirects are followed by hand (at most 3),
each checked the same way.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from PIL import Image, ImageOps, UnidentifiedImageError

from .protocol import ErrorCode

MAX_REDIRECTS = 3


class ImageError(Exception):
    """An image could not be used; ``code`` is the dead-letter error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's frame header (SOFn), walking the marker segments;
    None when ``data`` is not a JPEG or its markers do not lead to a frame header."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            height, width = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            return (width, height) if width and height else None
        i += 2 + length
    return None


def _check_bytes(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise ImageError(ErrorCode.IMAGE_TOO_LARGE, f"image is {len(data)} bytes (limit {max_bytes})")
    if not data:
        raise ImageError(ErrorCode.IMAGE_UNREADABLE, "image is empty")


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(
            ErrorCode.IMAGE_TOO_LARGE, f"image is {width}x{height} = {width * height} pixels (limit {max_pixels})"
        )


@contextmanager
def _pillow_errors():
    """Pillow's errors while opening or decoding, as :class:`ImageError` with their code."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(ErrorCode.IMAGE_TOO_LARGE, f"image rejected as a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(ErrorCode.IMAGE_UNREADABLE, f"image cannot be decoded: {exc}") from None


def check_image(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """Check an image from its header only - a known format, the byte and pixel limits - and
    return ``(width, height)``; raises :class:`ImageError`. The pixels are not decoded.

    For students that do not read pixels (``Student.reads_pixels``): decoding is most of the
    worker's CPU per post. JPEG headers are read by walking the marker segments (Pillow's
    parser also unpacks every table: about 10x slower); other formats by Pillow. Data that is
    corrupt after a valid header passes, as such a student never reads it.
    """
    _check_bytes(data, max_bytes)
    size = _jpeg_size(data)
    if size is None:
        with _pillow_errors(), Image.open(io.BytesIO(data)) as img:
            size = img.size
    _check_pixels(*size, max_pixels)
    return size


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, draft: int = 448) -> Image.Image:
    """Decode ``data`` into an RGB image, oriented by EXIF; raises :class:`ImageError`."""
    _check_bytes(data, max_bytes)
    with _pillow_errors():
        # no warnings.catch_warnings() here: it is not thread-safe and decoding runs in a pool;
        # the pixel check below runs before any pixel is decoded, far under Pillow's own limit
        img = Image.open(io.BytesIO(data))
        _check_pixels(*img.size, max_pixels)
        if img.format == "JPEG" and draft:
            img.draft("RGB", (draft, draft))  # decode big JPEGs at a reduced scale (>= draft px)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to rotate
        if img.mode != "RGB":
            img = img.convert("RGB")
        return img


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 5 * 1024 * 1024
    timeout_s: float = 5.0
    allow_file: bool = False
    allow_private: bool = False
    host_allowlist: tuple[str, ...] = ()


def address_forbidden(ip: str) -> str | None:
    """Why an IP address may not be fetched from (private, loopback, ...), or None if it may."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for attr in ("is_loopback", "is_private", "is_link_local", "is_multicast", "is_reserved", "is_unspecified"):
        if getattr(addr, attr):
            return f"{ip} is {attr[3:].replace('_', '-')}"
    if not addr.is_global:
        return f"{ip} is not a global address"
    return None


def host_allowed(host: str, allowlist: tuple[str, ...]) -> bool:
    if not allowlist:
        return True
    host = host.lower().rstrip(".")
    for entry in allowlist:
        entry = entry.lower().rstrip(".")
        if entry.startswith("*.") and (host == entry[2:] or host.endswith(entry[1:])):
            return True
        if host == entry:
            return True
    return False


def check_url(url: str, policy: FetchPolicy) -> tuple[str, str]:
    """Static checks of a URL (scheme, host allow-list); returns ``(scheme, host)``."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ImageError(ErrorCode.IMAGE_URL_FORBIDDEN, f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    allowed = {"https", "http"} | ({"file"} if policy.allow_file else set())
    if scheme not in allowed:
        raise ImageError(
            ErrorCode.IMAGE_URL_FORBIDDEN, f"URL scheme {scheme or '(none)'!r} not allowed (allowed: {sorted(allowed)})"
        )
    if scheme == "file":
        return scheme, ""
    host = parts.hostname or ""
    if not host:
        raise ImageError(ErrorCode.IMAGE_URL_FORBIDDEN, "URL has no host")
    if parts.username or parts.password:
        raise ImageError(ErrorCode.IMAGE_URL_FORBIDDEN, "URLs with credentials are not allowed")
    if not host_allowed(host, policy.host_allowlist):
        raise ImageError(ErrorCode.IMAGE_URL_FORBIDDEN, f"host {host!r} is not in the image host allow-list")
    return scheme, host


async def _check_resolved(host: str, port: int, policy: FetchPolicy) -> None:
    if policy.allow_private:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"cannot resolve {host!r}: {exc}") from None
    for info in infos:
        why = address_forbidden(info[4][0])
        if why:
            raise ImageError(ErrorCode.IMAGE_URL_FORBIDDEN, f"host {host!r} resolves to a forbidden address: {why}")


class ImageFetcher:
    """Fetches image bytes by URL under a :class:`FetchPolicy`, at most ``concurrency`` at a time."""

    def __init__(self, policy: FetchPolicy, concurrency: int = 16) -> None:
        self.policy = policy
        self._sem = asyncio.Semaphore(concurrency)
        self._client = None

    async def _http(self):
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                follow_redirects=False,
                timeout=self.policy.timeout_s,
                headers={"User-Agent": "mulcot-stream/0.1 (image fetch)"},
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def fetch(self, url: str) -> bytes:
        async with self._sem:
            try:
                return await asyncio.wait_for(self._fetch(url), self.policy.timeout_s)
            except asyncio.TimeoutError:
                raise ImageError(
                    ErrorCode.IMAGE_FETCH_FAILED, f"fetch timed out after {self.policy.timeout_s:g}s"
                ) from None

    async def _fetch(self, url: str) -> bytes:
        import httpx

        for _ in range(MAX_REDIRECTS + 1):
            scheme, host = check_url(url, self.policy)
            if scheme == "file":
                return await asyncio.to_thread(self._read_file, url)
            port = urlsplit(url).port or (443 if scheme == "https" else 80)
            await _check_resolved(host, port, self.policy)
            client = await self._http()
            try:
                async with client.stream("GET", url) as resp:
                    self._check_peer(resp, host)
                    if resp.is_redirect:
                        location = resp.headers.get("location")
                        if not location:
                            raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"redirect without location ({resp.status_code})")
                        url = urljoin(url, location)
                        continue
                    if resp.status_code != 200:
                        raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"HTTP {resp.status_code} from {host}")
                    length = resp.headers.get("content-length")
                    if length and length.isdigit() and int(length) > self.policy.max_bytes:
                        raise ImageError(
                            ErrorCode.IMAGE_TOO_LARGE, f"image is {length} bytes (limit {self.policy.max_bytes})"
                        )
                    chunks, total = [], 0
                    async for chunk in resp.aiter_bytes():
                        total += len(chunk)
                        if total > self.policy.max_bytes:
                            raise ImageError(
                                ErrorCode.IMAGE_TOO_LARGE, f"image is over {self.policy.max_bytes} bytes"
                            )
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"fetch failed: {type(exc).__name__}: {exc}") from None
        raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"more than {MAX_REDIRECTS} redirects")

    def _check_peer(self, resp, host: str) -> None:
        if self.policy.allow_private:
            return
        stream = resp.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if peer:
            why = address_forbidden(peer[0])
            if why:
                raise ImageError(ErrorCode.IMAGE_URL_FORBIDDEN, f"{host!r} connected to a forbidden address: {why}")

    def _read_file(self, url: str) -> bytes:
        path = Path(unquote(urlsplit(url).path))
        try:
            size = path.stat().st_size
            if size > self.policy.max_bytes:
                raise ImageError(ErrorCode.IMAGE_TOO_LARGE, f"image is {size} bytes (limit {self.policy.max_bytes})")
            return path.read_bytes()
        except OSError as exc:
            raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"cannot read {path}: {exc.strerror}") from None


__all__ = ["ImageError", "FetchPolicy", "ImageFetcher", "check_image", "decode_image", "address_forbidden", "check_url", "host_allowed"]
