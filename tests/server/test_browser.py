"""End to end in headless Chromium (Debian's, driven by Playwright): type a query, see result images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (scripts/setup.sh installs it)")
def test_search_page_shows_results(served, tmp_path):
    from playwright.sync_api import sync_playwright

    shot = Path(os.environ.get("XMODAL_SCREENSHOT", tmp_path / "search_page.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(served["base"] + "/")
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
