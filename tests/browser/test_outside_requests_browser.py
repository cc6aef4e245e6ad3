"""Nothing reaches out: in real Chromium, with every request recorded, a world whose ``world.json`` name and
description carry markdown images, links and bare URLs renders them as text, and the page fetches nothing
from another host (not its favicon either: a Material icon name made every page fetch one from a font host)."""

from urllib.parse import urlparse

import pytest

from core.workspace import world as world_mod
from tests.browser.conftest import served

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NAME = "Evil ![n](http://evil.example/name.png)"
DESCRIPTION = ("see [here](http://evil.example/desc), <http://evil.example/auto>, www.evil.example and "
               "![d](https://evil.example/desc.png)")


@pytest.fixture
def hostile_app(foreign_run, free_port, tmp_path):
    ws = tmp_path / "ws"
    w = world_mod.create_world(ws / "worlds" / "evil", NAME, foreign_run["base"], [foreign_run["run"]],
                               [foreign_run["heldout"]], description=DESCRIPTION)
    args = ["app", "--headless", "--port", str(free_port), "--workspace",
           str(ws), "--world", str(w.root)]
    with served(args, free_port) as url:
        yield url


def test_world_text_and_the_favicon_fetch_nothing_from_outside(browser, hostile_app, artifacts):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if urlparse(r.url).scheme in ("http", "https", "ws", "wss")
            and urlparse(r.url).hostname not in ("127.0.0.1", "localhost") else None)
    page.goto(hostile_app)
    page.get_by_text("Checkpoint series").wait_for(timeout=90_000)
    page.wait_for_timeout(2000)  # late requests (icons, images) have time to start
    page.screenshot(path=str(artifacts / "outside-requests-home.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0
    assert not outside, outside
    hrefs = page.locator("a[href]").evaluate_all("links => links.map(a => a.href)")
    assert not [h for h in hrefs if "evil" in h and not urlparse(h).fragment], hrefs  # heading anchors are #ids
    assert page.locator("img[src*='evil.example']").count() == 0
    body = page.locator("[data-testid='stMain']").inner_text()
    assert "evil.example/name.png" in body and "evil.example/desc" in body  # shown, as text
    icon = page.locator("link[rel~='icon']").first.get_attribute("href")
    assert icon and urlparse(icon).hostname in (None, "127.0.0.1", "localhost"), icon
