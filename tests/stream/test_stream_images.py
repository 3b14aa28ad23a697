"""Image decoding limits and the SSRF-safe fetcher (against a real local HTTP server)."""

from __future__ import annotations

import asyncio
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from stream.images import (
    FetchPolicy,
    ImageError,
    ImageFetcher,
    address_forbidden,
    check_image,
    check_url,
    decode_image,
    host_allowed,
)
from stream.protocol import ErrorCode
from tests.support.stream_helpers import ImageServer


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_decode_rgb_and_exif_orientation() -> None:
    rgba = _encode(Image.new("RGBA", (10, 20), (255, 0, 0, 128)))
    out = decode_image(rgba, max_bytes=10**6, max_pixels=10**6)
    assert out.mode == "RGB" and out.size == (10, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    jpeg = _encode(Image.new("RGB", (40, 20), "green"), "JPEG", exif=exif.tobytes())
    assert decode_image(jpeg, max_bytes=10**6, max_pixels=10**6).size == (20, 40)


def test_decode_limits() -> None:
    png = _encode(Image.new("L", (3000, 3000), 0))
    with pytest.raises(ImageError) as e:
        decode_image(png, max_bytes=10**7, max_pixels=1_000_000)
    assert e.value.code is ErrorCode.IMAGE_TOO_LARGE and "pixels" in e.value.message
    with pytest.raises(ImageError) as e:
        decode_image(png, max_bytes=100, max_pixels=10**8)
    assert e.value.code is ErrorCode.IMAGE_TOO_LARGE and "bytes" in e.value.message
    for junk in (b"GIF89a garbage", b"\x89PNG\r\n\x1a\n" + b"\0" * 30, b"hello"):
        with pytest.raises(ImageError) as e:
            decode_image(junk, max_bytes=10**6, max_pixels=10**6)
        assert e.value.code is ErrorCode.IMAGE_UNREADABLE
    truncated = _encode(Image.new("RGB", (64, 64), "red"), "JPEG")[:200]
    with pytest.raises(ImageError) as e:
        decode_image(truncated, max_bytes=10**6, max_pixels=10**6)
    assert e.value.code is ErrorCode.IMAGE_UNREADABLE


@pytest.mark.parametrize("fmt,kw", [("JPEG", {}), ("JPEG", {"progressive": True}), ("JPEG", {"exif": b"Exif\0\0" + b"\0" * 40}),
                                     ("PNG", {}), ("GIF", {}), ("WEBP", {})])
def test_header_check_reads_the_size_without_decoding(fmt: str, kw: dict) -> None:
    """``check_image`` (students that do not read pixels): the size from the header, as Pillow has it."""
    data = _encode(Image.new("RGB", (64, 48), "red"), fmt, **kw)
    assert check_image(data, max_bytes=10**6, max_pixels=10**6) == (64, 48)
    with pytest.raises(ImageError) as e:
        check_image(data, max_bytes=10**6, max_pixels=64 * 48 - 1)
    assert e.value.code is ErrorCode.IMAGE_TOO_LARGE and "pixels" in e.value.message


def test_header_check_rejects_what_is_not_an_image() -> None:
    for junk in (b"GIF89a garbage", b"hello", b"\xff\xd8\xff\xe0\x00", b"\xff\xd8" + b"\0" * 30):
        with pytest.raises(ImageError) as e:
            check_image(junk, max_bytes=10**6, max_pixels=10**6)
        assert e.value.code is ErrorCode.IMAGE_UNREADABLE, junk
    with pytest.raises(ImageError) as e:
        check_image(b"", max_bytes=10**6, max_pixels=10**6)
    assert e.value.code is ErrorCode.IMAGE_UNREADABLE
    png = _encode(Image.new("L", (3000, 3000), 0))
    with pytest.raises(ImageError) as e:
        check_image(png, max_bytes=100, max_pixels=10**8)
    assert e.value.code is ErrorCode.IMAGE_TOO_LARGE and "bytes" in e.value.message


@pytest.mark.parametrize(
    "ip", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.5", "169.254.169.254", "::1", "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "100.64.0.1"]
)
def test_forbidden_addresses(ip: str) -> None:
    assert address_forbidden(ip)


def test_public_address_allowed() -> None:
    assert address_forbidden("8.8.8.8") is None and address_forbidden("2606:4700:4700::1111") is None


def test_url_rules() -> None:
    p = FetchPolicy()
    assert check_url("https://cdn.example.org/a.jpg", p) == ("https", "cdn.example.org")
    for bad in ("ftp://x/y", "file:///etc/passwd", "gopher://x", "//x/y", "https://user:pw@x/y", "javascript:alert(1)"):
        with pytest.raises(ImageError) as e:
            check_url(bad, p)
        assert e.value.code is ErrorCode.IMAGE_URL_FORBIDDEN
    assert check_url("file:///tmp/x.png", FetchPolicy(allow_file=True))[0] == "file"
    assert host_allowed("img.example.org", ("*.example.org",)) and host_allowed("example.org", ("*.example.org",))
    assert not host_allowed("evil-example.org", ("*.example.org",)) and not host_allowed("x.org", ("y.org",))


@pytest.fixture
def http_server():  # type: ignore[no-untyped-def]
    png = _encode(Image.new("RGB", (8, 8), "red"))

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            routes = {
                "/ok.png": (200, png, {}),
                "/redirect-ok": (302, b"", {"Location": "/ok.png"}),
                "/redirect-ftp": (302, b"", {"Location": "ftp://127.0.0.1/x"}),
                "/loop": (302, b"", {"Location": "/loop"}),
                "/huge": (200, b"x" * 50_000, {}),
            }
            code, body, headers = routes.get(self.path, (404, b"no", {}))
            if self.path == "/slow":
                import time

                time.sleep(2)
                code, body = 200, png
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", png
    srv.shutdown()
    srv.server_close()


def _fetch(url: str, policy: FetchPolicy) -> bytes | ImageError:
    async def run() -> bytes | ImageError:
        f = ImageFetcher(policy, concurrency=2)
        try:
            return await f.fetch(url)
        except ImageError as exc:
            return exc
        finally:
            await f.aclose()

    return asyncio.run(run())


def test_fetch(http_server) -> None:  # type: ignore[no-untyped-def]
    base, png = http_server
    open_policy = FetchPolicy(allow_private=True, max_bytes=10_000, timeout_s=15.0)
    assert _fetch(f"{base}/ok.png", open_policy) == png
    assert _fetch(f"{base}/redirect-ok", open_policy) == png
    cases = {
        "/missing": ErrorCode.IMAGE_FETCH_FAILED,
        "/huge": ErrorCode.IMAGE_TOO_LARGE,
        "/redirect-ftp": ErrorCode.IMAGE_URL_FORBIDDEN,
        "/loop": ErrorCode.IMAGE_FETCH_FAILED,
    }
    for path, code in cases.items():
        got = _fetch(base + path, open_policy)
        assert isinstance(got, ImageError) and got.code is code, (path, got)
    got = _fetch(f"{base}/slow", FetchPolicy(allow_private=True, timeout_s=0.5))  # the server sleeps 2 s
    assert isinstance(got, ImageError) and got.code is ErrorCode.IMAGE_FETCH_FAILED and "timed out" in got.message
    # the default policy refuses loopback: the SSRF guard
    got = _fetch(f"{base}/ok.png", FetchPolicy())
    assert isinstance(got, ImageError) and got.code is ErrorCode.IMAGE_URL_FORBIDDEN and "loopback" in got.message
    # a closed port: connection refused
    got = _fetch("http://127.0.0.1:9/x.png", open_policy)
    assert isinstance(got, ImageError) and got.code is ErrorCode.IMAGE_FETCH_FAILED


def test_file_urls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "a.png"
    p.write_bytes(_encode(Image.new("RGB", (4, 4))))
    assert _fetch(p.as_uri(), FetchPolicy(allow_file=True)) == p.read_bytes()
    got = _fetch(p.as_uri(), FetchPolicy())
    assert isinstance(got, ImageError) and got.code is ErrorCode.IMAGE_URL_FORBIDDEN


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "ICO", "PPM"])
def test_formats_outside_the_documented_ones_are_refused(fmt: str) -> None:
    """``image_b64`` documents JPEG/PNG/WebP/GIF; Pillow reads more (TIFF, BMP, ...): refused by name."""
    data = _encode(Image.new("RGB", (16, 16), "red"), fmt)
    for check in (decode_image, check_image):
        with pytest.raises(ImageError) as e:
            check(data, max_bytes=10**6, max_pixels=10**6)
        assert e.value.code is ErrorCode.IMAGE_UNREADABLE
        assert f"format {fmt}" in e.value.message and "accepted: JPEG, PNG, WebP, GIF" in e.value.message


def test_mpo_is_accepted_as_jpeg() -> None:
    frames = [Image.new("RGB", (32, 24), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    assert decode_image(buf.getvalue(), max_bytes=10**6, max_pixels=10**6).size == (32, 24)


def test_thumbnail_is_a_small_bounded_jpeg() -> None:
    from stream.images import THUMB_MAX_BYTES, thumbnail

    noisy = Image.effect_noise((1200, 800), 100).convert("RGB")  # worst case for JPEG size
    for src in (noisy, _encode(noisy, "PNG"), _encode(noisy, "JPEG")):
        out = thumbnail(src)
        assert out is not None and out[:2] == b"\xff\xd8" and len(out) <= THUMB_MAX_BYTES
        with Image.open(io.BytesIO(out)) as t:
            assert t.format == "JPEG" and max(t.size) <= 160 and abs(t.size[0] / t.size[1] - 1.5) < 0.05
    assert thumbnail(b"not an image") is None
    assert thumbnail(_encode(Image.new("RGB", (8, 8)), "TIFF")) is None


def test_thumbnail_of_jpeg_bytes_is_a_draft_decode_of_the_same_picture() -> None:
    """From JPEG bytes the thumbnail comes from a reduced-scale (draft) decode, at full
    thumbnail size; it shows the same picture as the one made from the full decode."""
    from stream.images import _thumbnail_source, thumbnail

    src = Image.linear_gradient("L").resize((320, 240)).convert("RGB")
    data = _encode(src, "JPEG")
    assert _thumbnail_source(data, 160, 10**8).size == (160, 120)  # decoded at 1/2 scale
    for odd in ((333, 250), (1000, 90), (90, 1000)):
        assert max(_thumbnail_source(_encode(src.resize(odd), "JPEG"), 160, 10**8).size) >= 160
    from_bytes = Image.open(io.BytesIO(thumbnail(data)))
    from_decoded = Image.open(io.BytesIO(thumbnail(decode_image(data, max_bytes=10**6, max_pixels=10**6))))
    assert from_bytes.size == from_decoded.size == (160, 120)
    diff = [abs(a - b) for a, b in zip(from_bytes.convert("L").getdata(), from_decoded.convert("L").getdata())]
    assert sum(diff) / len(diff) < 4


@pytest.fixture
def counting_server():  # type: ignore[no-untyped-def]
    srv = ImageServer()
    yield srv
    srv.close()


def _fetch_with(url: str, policy: FetchPolicy, resolver) -> bytes | ImageError:  # type: ignore[no-untyped-def]
    async def run() -> bytes | ImageError:
        f = ImageFetcher(policy, concurrency=2, resolver=resolver)
        try:
            return await f.fetch(url)
        except ImageError as exc:
            return exc
        finally:
            await f.aclose()

    return asyncio.run(run())


PUBLIC = "93.184.216.34"  # a global address (example.com's); nothing here can reach it


def test_dns_rebinding_one_answer_public_then_loopback(counting_server) -> None:  # type: ignore[no-untyped-def]
    """One DNS answer, public address first and loopback second: refused before any request."""
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return [PUBLIC, "127.0.0.1"]

    got = _fetch_with(f"http://rebind.example:{counting_server.port}/ok.png", FetchPolicy(timeout_s=2.0), resolver)
    assert isinstance(got, ImageError) and got.code is ErrorCode.IMAGE_URL_FORBIDDEN and "loopback" in got.message
    assert calls == ["rebind.example"]
    assert counting_server.hosts == []  # 0 requests reached the loopback server


def test_dns_rebinding_public_then_loopback_on_the_next_lookup(counting_server) -> None:  # type: ignore[no-untyped-def]
    """A resolver that answers public first and loopback on every later lookup: the host is
    resolved once and the connection goes to the checked (public) address, never to loopback."""
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return [PUBLIC] if len(calls) == 1 else ["127.0.0.1"]

    got = _fetch_with(f"http://rebind.example:{counting_server.port}/ok.png", FetchPolicy(timeout_s=1.0), resolver)
    assert isinstance(got, ImageError) and got.code is ErrorCode.IMAGE_FETCH_FAILED  # the public address is unreachable here
    assert calls == ["rebind.example"]
    assert counting_server.hosts == []


def test_connects_to_the_resolved_address_with_the_url_host(counting_server) -> None:  # type: ignore[no-untyped-def]
    """The request goes to the address the resolver gave (the name itself resolves nowhere)
    and carries the URL's host in the Host header."""

    async def resolver(host: str, port: int) -> list[str]:
        assert host == "images.pinned.test"
        return ["127.0.0.1"]

    url = f"http://images.pinned.test:{counting_server.port}/ok.png?x=1"
    got = _fetch_with(url, FetchPolicy(allow_private=True, timeout_s=5.0), resolver)
    assert got == counting_server.png
    assert counting_server.hosts == [f"images.pinned.test:{counting_server.port}"]


def test_https_sends_the_url_host_as_sni_to_the_resolved_address(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Over TLS the connection goes to the resolved address and the ClientHello names the URL's
    host (SNI; the certificate is checked against it: this self-signed one fails, as it must)."""
    import shutil
    import socket
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=img.pinned.test"], check=True, capture_output=True)  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    names: list[str | None] = []
    ctx.sni_callback = lambda sock, name, _ctx: names.append(name)
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass  # the client refuses the self-signed certificate

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    got = _fetch_with(f"https://img.pinned.test:{port}/a.png", FetchPolicy(allow_private=True, timeout_s=5.0), resolver)
    t.join(5)
    srv.close()
    assert isinstance(got, ImageError) and got.code is ErrorCode.IMAGE_FETCH_FAILED and "CERTIFICATE_VERIFY_FAILED" in got.message
    assert names == ["img.pinned.test"]


def test_ipv6_literal_url_keeps_brackets_in_host() -> None:
    import socket

    class V6(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    hosts: list[str] = []
    png = _encode(Image.new("RGB", (4, 4)))

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hosts.append(self.headers.get("Host", ""))
            self.send_response(200)
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *a: object) -> None:
            pass

    try:
        srv = V6(("::1", 0), H)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        assert _fetch(f"http://[::1]:{port}/a.png", FetchPolicy(allow_private=True)) == png
        assert hosts == [f"[::1]:{port}"]
        got = _fetch(f"http://[::1]:{port}/a.png", FetchPolicy())
        assert isinstance(got, ImageError) and got.code is ErrorCode.IMAGE_URL_FORBIDDEN and len(hosts) == 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_next_checked_address_when_the_first_cannot_be_reached(counting_server) -> None:  # type: ignore[no-untyped-def]
    """A name with an IPv6 and an IPv4 address, the server on IPv4 only: the second checked
    address is used (as happy-eyeballs clients do), still with the URL's host."""

    async def resolver(host: str, port: int) -> list[str]:
        return ["::1", "127.0.0.1"]

    got = _fetch_with(f"http://dual.pinned.test:{counting_server.port}/ok.png", FetchPolicy(allow_private=True), resolver)
    assert got == counting_server.png and counting_server.hosts == [f"dual.pinned.test:{counting_server.port}"]
