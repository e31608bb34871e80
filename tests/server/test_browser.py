"""End to end in headless Chromium (Debian's, driven by Playwright): type a query, see result images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser


needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="Debian chromium is not installed (scripts/setup.sh installs it)")


@needs_chromium
def test_search_page_shows_results(served, tmp_path):
    drive(served["base"], Path(os.environ.get("XMODAL_SCREENSHOT", tmp_path / "search_page.png")))


@needs_chromium
def test_search_page_with_an_api_key(served, serve_app, tmp_path):
    """Issue 17: with --api-key the page asks for the key once and sends it (searches and result images)."""
    from xmodal.server import create_app

    key = "page-key-0123456789"
    app = create_app(served["root"] / "idx", reranker=str(served["root"] / "joint"), api_keys=[key])
    with serve_app(app) as base:
        drive(base, tmp_path / "keyed.png", key=key)


def drive(base: str, shot: Path, key: str | None = None) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        if key is not None:
            page.wait_for_selector("#key-form:not([hidden])")
            assert "needs an API key" in page.text_content("#info")
            page.fill("#api-key", key)
            page.click("#key-save")
        page.wait_for_function("document.getElementById('info').textContent.includes('items')")
        assert "8 items" in page.text_content("#info")
        page.fill("#query", "a red circle")
        page.select_option("#k", "5")
        page.click("#go")
        page.wait_for_selector(".card img")
        page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")
        cards = page.query_selector_all(".card")
        assert len(cards) == 5
        assert "5 results (retrieve)" in page.text_content("#status") and " ms" in page.text_content("#status")
        page.check("#rerank")
        page.click("#go")
        page.wait_for_function("document.getElementById('status').textContent.includes('(rerank)')")
        page.screenshot(path=str(shot), full_page=True)
        # an empty query is refused in the page, without a request
        page.fill("#query", "")
        page.click("#go")
        assert "Type a query" in page.text_content("#error")
        browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 10_000
