"""Image handling of the worker: safe decoding and bounded, SSRF-safe fetching by URL.

Decoding (Pillow) checks the encoded size and the pixel count *before* decoding
(decompression bombs), applies the EXIF orientation and converts to RGB. ``check_image``
makes the same checks from the header alone, for students that do not read pixels.

Accepted formats are the ones the ``image_b64`` field documents: JPEG (MPO, the multi-picture
JPEG of phone cameras, included), PNG, WebP and GIF (first frame). Anything else Pillow could
read (TIFF, BMP, ICO, PSD, ...) goes to the dead-letter topic as ``image_unreadable`` with a
message naming the format: fewer decoders reachable from untrusted input.

Fetching is async and bounded (timeout, byte limit, concurrency) and refuses: schemes
other than https/http (file only where enabled), hosts outside the allow-list when one is
set, and - unless explicitly allowed - hosts that resolve to private, loopback,
link-local, multicast or reserved addresses. The host is resolved once per hop, every
address it resolves to is checked, and the connection goes to the checked address (the
``Host`` header and the TLS SNI/certificate name are the URL's host), so a DNS answer that
changes between the check and the connect (DNS rebinding) cannot reach a forbidden
address. Connections are not kept alive (a pooled TLS connection is never reused for
another host name on the same address). Redirects are followed by hand (at most 3), each
hop checked the same way.

``thumbnail`` makes the small JPEG the Redis sink stores beside each result (the
dashboard's ``/api/results/{id}/thumbnail``).
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .protocol import ErrorCode

MAX_REDIRECTS = 3
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")  # the JPEG opener also returns MPO
"""Pillow format names decoded from untrusted input (what ``Post.image_b64`` documents)."""
THUMB_SIDE = 160
THUMB_MAX_BYTES = 16 * 1024


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
    except UnidentifiedImageError:
        raise ImageError(ErrorCode.IMAGE_UNREADABLE,
                         "image cannot be decoded: the bytes are not an image in any format Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = re.sub(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>", "", str(exc)).strip() or type(exc).__name__
        raise ImageError(ErrorCode.IMAGE_UNREADABLE, f"image cannot be decoded: {text}") from None


def _open(data: bytes) -> Image.Image:
    """Open (lazily: the header only) an image of an accepted format; a clear error otherwise."""
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        try:  # which format is it? (header only; nothing of it is decoded)
            with Image.open(io.BytesIO(data)) as other:
                fmt = other.format
        except Exception:  # noqa: BLE001 - not an image at all
            fmt = None
        if fmt:
            raise ImageError(
                ErrorCode.IMAGE_UNREADABLE,
                f"image format {fmt} is not accepted (accepted: JPEG, PNG, WebP, GIF)",
            ) from None
        raise


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
        with _pillow_errors(), _open(data) as img:
            size = img.size
    _check_pixels(*size, max_pixels)
    return size


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, draft: int = 448) -> Image.Image:
    """Decode ``data`` into an RGB image, oriented by EXIF; raises :class:`ImageError`.
    A big JPEG is decoded at a reduced scale whose both sides stay >= ``draft`` px."""
    _check_bytes(data, max_bytes)
    with _pillow_errors():
        img = _open_checked(data, max_pixels)
        if img.format == "JPEG" and draft:
            img.draft("RGB", (draft, draft))  # decode big JPEGs at a reduced scale (>= draft px)
        return _rgb(img)


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    # no warnings.catch_warnings() here: it is not thread-safe and decoding runs in a pool;
    # the pixel check below runs before any pixel is decoded, far under Pillow's own limit
    img = _open(data)
    _check_pixels(*img.size, max_pixels)
    return img


def _rgb(img: Image.Image) -> Image.Image:
    """Decode the opened image, apply its EXIF orientation, convert to RGB."""
    img.load()
    ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to rotate
    return img if img.mode == "RGB" else img.convert("RGB")


def _thumbnail_source(data: bytes, side: int, max_pixels: int) -> Image.Image:
    """Decode ``data`` for a thumbnail of longest side ``side``: a JPEG at the smallest DCT
    scale (1/2, 1/4, 1/8) whose longest side is still >= ``side`` (libjpeg's draft decode:
    a fraction of the work of a full decode), other formats fully."""
    _check_bytes(data, max(len(data), 1))
    with _pillow_errors():
        img = _open_checked(data, max_pixels)
        if img.format == "JPEG":
            w, h = img.size
            k = side / max(w, h, 1)
            if k < 1:  # draft keeps both sides >= the size asked, so ask for the thumbnail's own shape
                img.draft("RGB", (max(1, int(w * k)), max(1, int(h * k))))
        return _rgb(img)


def _shrink(image: Image.Image, side: int) -> Image.Image:
    """``image`` with its longest side at most ``side``: first by an integer box reduction
    (``Image.reduce``: a fraction of a resampling's cost), then, if still too big, bilinear."""
    w, h = image.size
    k = max(w, h) // side if max(w, h) > side else 1
    # a plain Image either way: saving an ImageFile (a draft decode already at size) compares
    # file paths first (two os.getcwd calls per thumbnail)
    small = image.reduce(k) if k > 1 else image.copy() if isinstance(image, ImageFile.ImageFile) else image
    w, h = small.size
    if max(w, h) > side:
        scale = side / max(w, h)
        small = small.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return small


def thumbnail(
    image: Image.Image | bytes,
    *,
    side: int = THUMB_SIDE,
    max_bytes: int = THUMB_MAX_BYTES,
    max_pixels: int = 40_000_000,
) -> bytes | None:
    """A small JPEG of ``image`` (a decoded RGB image, or encoded bytes, which are decoded under
    the same checks as :func:`decode_image`, a JPEG at a reduced scale): longest side at most
    ``side`` px, at most ``max_bytes`` bytes (the quality is lowered until it fits). None when
    the bytes cannot be decoded or no quality fits; never raises for bad input."""
    try:
        if isinstance(image, (bytes, bytearray)):
            image = _thumbnail_source(bytes(image), side, max_pixels)
        small = _shrink(image, side)
        if small.mode != "RGB":
            small = small.convert("RGB")
        for quality in (75, 55, 35):
            buf = io.BytesIO()
            small.save(buf, "JPEG", quality=quality, optimize=False)
            if buf.tell() <= max_bytes:
                return buf.getvalue()
    except (ImageError, OSError, ValueError):
        return None
    return None


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


Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> addresses``: how the fetcher resolves host names (tests pass a stub)."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The system resolver (``getaddrinfo``), addresses in its order, without repeats."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for info in infos:
        ip = str(info[4][0])
        if ip not in out:
            out.append(ip)
    return out


class ImageFetcher:
    """Fetches image bytes by URL under a :class:`FetchPolicy`, at most ``concurrency`` at a time."""

    def __init__(self, policy: FetchPolicy, concurrency: int = 16, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self._sem = asyncio.Semaphore(concurrency)
        self._client = None
        self.resolver: Resolver = resolver or system_resolver

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` once and check every address it resolves to; return them, in the
        resolver's order, to connect to. Literal IP addresses are checked as they are."""
        try:
            addrs = [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            try:
                addrs = list(await self.resolver(host, port))
            except (socket.gaierror, OSError) as exc:
                raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"cannot resolve {host!r}: {exc}") from None
        if not addrs:
            raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"cannot resolve {host!r}: no address")
        if not self.policy.allow_private:
            for ip in addrs:
                why = address_forbidden(ip)
                if why:
                    raise ImageError(ErrorCode.IMAGE_URL_FORBIDDEN, f"host {host!r} resolves to a forbidden address: {why}")
        return addrs

    async def _http(self):
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                follow_redirects=False,
                timeout=self.policy.timeout_s,
                limits=httpx.Limits(max_keepalive_connections=0),
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
            except TimeoutError:
                raise ImageError(
                    ErrorCode.IMAGE_FETCH_FAILED, f"fetch timed out after {self.policy.timeout_s:g}s"
                ) from None

    async def _fetch(self, url: str) -> bytes:
        import httpx

        for _ in range(MAX_REDIRECTS + 1):
            scheme, host = check_url(url, self.policy)
            if scheme == "file":
                return await asyncio.to_thread(self._read_file, url)
            parts = urlsplit(url)
            try:
                port = parts.port or (443 if scheme == "https" else 80)
                name = httpx.URL(url).raw_host.decode("ascii")  # IDNA-encoded host name
            except (ValueError, httpx.InvalidURL) as exc:
                raise ImageError(ErrorCode.IMAGE_URL_FORBIDDEN, f"malformed URL: {exc}") from None
            addrs = await self.resolve(host, port)
            # connect to a checked address; the URL's host name goes in Host and the TLS SNI
            shown = f"[{name}]" if ":" in name else name  # an IPv6 literal keeps its brackets
            headers = {"Host": shown if parts.port is None else f"{shown}:{port}"}
            extensions = {"sni_hostname": name} if scheme == "https" else {}
            client = await self._http()
            for n, ip in enumerate(addrs):  # the next checked address only when one cannot be reached
                pinned = urlunsplit((scheme, f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}", parts.path or "/", parts.query, ""))
                try:
                    got = await self._get(client, pinned, headers, extensions, host)
                except httpx.ConnectError as exc:
                    if n + 1 < len(addrs):
                        continue
                    raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"fetch failed: {type(exc).__name__}: {exc}") from None
                except httpx.HTTPError as exc:
                    raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"fetch failed: {type(exc).__name__}: {exc}") from None
                break
            if isinstance(got, bytes):
                return got
            url = urljoin(url, got)  # a redirect: check the next hop the same way
        raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"more than {MAX_REDIRECTS} redirects")

    async def _get(self, client, pinned: str, headers: dict, extensions: dict, host: str) -> bytes | str:  # type: ignore[no-untyped-def, type-arg]
        """GET the pinned URL: the body (bytes), or a redirect's location (str)."""
        async with client.stream("GET", pinned, headers=headers, extensions=extensions) as resp:
            self._check_peer(resp, host)
            if resp.is_redirect:
                location = resp.headers.get("location")
                if not location:
                    raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"redirect without location ({resp.status_code})")
                return str(location)
            if resp.status_code != 200:
                raise ImageError(ErrorCode.IMAGE_FETCH_FAILED, f"HTTP {resp.status_code} from {host}")
            length = resp.headers.get("content-length")
            if length and length.isdigit() and int(length) > self.policy.max_bytes:
                raise ImageError(ErrorCode.IMAGE_TOO_LARGE, f"image is {length} bytes (limit {self.policy.max_bytes})")
            chunks, total = [], 0
            async for chunk in resp.aiter_bytes():
                total += len(chunk)
                if total > self.policy.max_bytes:
                    raise ImageError(ErrorCode.IMAGE_TOO_LARGE, f"image is over {self.policy.max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

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


__all__ = ["ImageError", "FetchPolicy", "ImageFetcher", "check_image", "decode_image", "thumbnail", "address_forbidden",
           "check_url", "host_allowed", "system_resolver", "ACCEPTED_FORMATS"]
