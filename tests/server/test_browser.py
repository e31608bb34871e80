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


@needs_chromium
def test_search_page_filter_box_mode_and_metadata(tmp_path_factory, tiny_model_dir, serve_app, tmp_path):
    """Issue 15: the filter box sends `where`, the mode selector picks lexical/hybrid, metadata shows under each
    result, a bad filter is one line in the page."""
    import json

    from PIL import Image, ImageDraw
    from playwright.sync_api import sync_playwright

    from xmodal.collection import build_collection
    from xmodal.server import create_app

    root = tmp_path_factory.mktemp("page-hybrid")
    images = root / "images"
    images.mkdir()
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    rows = []
    for i, c in enumerate(colours):
        img = Image.new("RGB", (48, 48), (20, 20, 20))
        ImageDraw.Draw(img).ellipse((8, 8, 40, 40), fill=c)
        img.save(images / f"{c}.png")
        rows.append({"path": f"{c}.png", "shop": "north" if i % 2 == 0 else "south", "year": 2020 + i,
                     "title": f"{c} tile" + (" KX-2291" if c == "blue" else "")})
    meta = root / "meta.jsonl"
    meta.write_text("\n".join(json.dumps(r) for r in rows))
    build_collection(images, str(tiny_model_dir), root / "idx", show_progress=False, metadata=meta,
                     text_fields=["title"])
    with serve_app(create_app(root / "idx")) as base, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('info').textContent.includes('6 items')")

        def results(expect_stage: str) -> list[dict]:
            page.click("#go")
            page.wait_for_function(f"document.getElementById('status').textContent.includes('({expect_stage})')"
                                   " || document.getElementById('error').textContent !== ''")
            assert page.text_content("#error") == ""
            return page.eval_on_selector_all(".card", "cs => cs.map(c => ({id: c.querySelector('.id').textContent, "
                                                      "meta: c.querySelector('.meta').innerText}))")

        # the filter box: only north-shop items come back, and each card shows its metadata
        page.fill("#query", "a round tile")
        page.fill("#where", 'shop = "north" and year >= 2021')
        cards = results("retrieve")
        assert sorted(c["id"] for c in cards) == ["blue.png", "purple.png"]
        assert all("north" in c["meta"] and "shop" in c["meta"] for c in cards)
        # the mode selector: an exact code, lexical then hybrid (filter cleared)
        page.fill("#where", "")
        page.fill("#query", "KX-2291")
        page.select_option("#mode", "lexical")
        assert [c["id"] for c in results("lexical")] == ["blue.png"]
        page.select_option("#mode", "hybrid")
        assert results("hybrid")[0]["id"] == "blue.png"
        # a bad filter is one clear line in the page
        page.fill("#where", 'shop = = "north"')
        page.select_option("#mode", "dense")
        page.click("#go")
        page.wait_for_function("document.getElementById('error').textContent !== ''")
        page.screenshot(path=str(tmp_path / "hybrid_page.png"), full_page=True)
        browser.close()
    assert not errors, errors
