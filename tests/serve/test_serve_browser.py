"""The dashboard end to end in headless Chromium (Debian's ``chromium``, driven by
Playwright for Python): the page loads while posts stream through a real worker, result
cards appear with their thumbnails, a reasoning chain opens, the chart has data points,
the label filter works. A screenshot is saved as a test artifact
(``$MULCOT_TEST_ARTIFACTS``, default ``.cache/test-artifacts/dashboard.png``)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MULCOT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("MULCOT_TEST_ARTIFACTS", ROOT / ".cache" / "test-artifacts"))


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found ({CHROMIUM}): install Debian's chromium package (apt-get install -y chromium); "
                    ".ci/run installs it before make test")  # fmt: skip
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def test_dashboard_live(browser, served) -> None:  # type: ignore[no-untyped-def]
    # bypass_csp: the page forbids eval (CSP), which Playwright's polling wait_for_function uses
    page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    live: list[str] = []

    def feed() -> None:  # posts stream while the page is open
        for _ in range(4):
            live.extend(served.produce(5, prefix="web"))
            time.sleep(0.5)

    page.goto(served.url)
    page.wait_for_selector("#conn.on", timeout=15_000)  # the event stream is connected
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    # the stored results first, then the streamed ones arrive as cards with images
    page.wait_for_function("document.querySelectorAll('#feed .card').length >= 20", timeout=15_000)
    feeder.join(30)
    page.wait_for_function(
        "ids => ids.every(id => document.querySelector(`#feed .card[data-id='${id}']`))", arg=live, timeout=45_000
    )
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('#feed .card img.thumb')];"
        " return imgs.length >= 10 && imgs.slice(0, 10).every(i => i.complete && i.naturalWidth > 0); }",
        timeout=15_000,
    )
    first = page.locator(f"#feed .card[data-id='{live[-1]}']")
    assert first.locator(".text").inner_text() == served.bodies[live[-1]]["text"]
    assert first.locator(".label").inner_text().lower() in ("positive", "neutral", "negative")
    # open a reasoning chain: its five fields are shown
    first.locator("details.chain summary").click()
    assert first.locator("details.chain").get_attribute("open") is not None
    fields = first.locator("details.chain dd")
    assert fields.count() == 5 and "no-op model" in fields.nth(0).inner_text()
    assert first.locator("details.chain dd").nth(0).is_visible()
    # the chart has data points (the stats are polled every 3 s)
    page.wait_for_function("document.querySelectorAll('#chart circle.pt').length >= 1", timeout=10_000)
    assert int(page.locator("#indexed").inner_text()) >= len(served.ids)
    assert int(page.locator("#dead-total").inner_text()) == sum(served.dead_codes.values())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=False)
    # the label filter: only negative cards remain
    page.select_option("#f-label", "negative")
    page.wait_for_function(
        "() => { const c = [...document.querySelectorAll('#feed .card')];"
        " return c.length > 0 && c.every(e => e.dataset.label === 'negative'); }",
        timeout=10_000,
    )
    assert not errors, errors
    page.close()


def test_dashboard_with_a_token(browser, served) -> None:  # type: ignore[no-untyped-def]
    """With MULCOT_SERVE_TOKEN the page asks for the token, then loads results and thumbnails
    with it (the thumbnails through fetch, as <img> cannot send the header)."""
    from stream.serve import start_background
    from stream.settings import load_settings

    s = load_settings(redis_url=served.ro_redis_url, redis_prefix=served.settings.redis_prefix, serve_token="t0k3n")
    srv = start_background(s, port=0)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        page.goto(srv.url)
        page.wait_for_selector("#token-box:not([hidden])", timeout=10_000)
        assert page.locator("#feed .card").count() == 0
        page.fill("#f-token", "t0k3n")
        page.press("#f-token", "Enter")
        page.wait_for_function("document.querySelectorAll('#feed .card').length >= 20", timeout=15_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#feed .card img.thumb')].slice(0, 5)"
            ".every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)",
            timeout=15_000,
        )
        page.wait_for_selector("#conn.on", timeout=10_000)
        fresh = browser.new_page(bypass_csp=True)  # the token in the URL fragment, which the server never sees
        fresh.goto(srv.url + "#token=t0k3n")
        fresh.wait_for_function("document.querySelectorAll('#feed .card').length >= 20", timeout=15_000)
        assert "token" not in fresh.url
        page.close()
        fresh.close()
    finally:
        srv.stop()


def test_dashboard_dead_letter_panel(browser, served) -> None:  # type: ignore[no-untyped-def]
    """The dead-letter panel lists the dead letters the worker kept in Redis (the samples' bad
    records): code, post id, source, message, and the original record when opened."""
    page = browser.new_page(viewport={"width": 1280, "height": 1400}, bypass_csp=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(served.url)
    total = sum(served.dead_codes.values())
    page.wait_for_function(f"document.querySelectorAll('#dl-list li.dl').length === {total}", timeout=15_000)
    rows = page.locator("#dl-list li.dl")
    codes = sorted(rows.nth(i).get_attribute("data-code") or "" for i in range(rows.count()))
    assert codes == sorted(c for c, n in served.dead_codes.items() for _ in range(n))
    bad = page.locator("#dl-list li.dl[data-id='demo-bad-image']")
    assert bad.locator(".dl-code").inner_text() == "image_unreadable"
    assert "not an image in any format Pillow can identify" in bad.locator(".dl-msg").inner_text()
    assert bad.locator(".dl-src").inner_text().startswith(served.settings.input_topic + "/")
    bad.locator("details.dl-orig summary").click()
    assert '"id": "demo-bad-image"' in bad.locator("details.dl-orig pre").inner_text()
    assert page.locator("#dl-empty").is_hidden()
    assert page.locator("#dl-note").inner_text() == f"newest {total} of {total} kept"
    page.wait_for_timeout(3500)  # one more poll: an opened original stays open (rows are kept when nothing changed)
    assert bad.locator("details.dl-orig").get_attribute("open") is not None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#dead-letters").screenshot(path=str(ARTIFACTS / "dashboard-dead-letters.png"))
    assert not errors, errors
    page.close()
