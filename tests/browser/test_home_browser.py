"""The app in a real browser: ``workbench demo`` serves the Home page on the sample world without error."""

import time

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_home_renders_in_chromium(browser, app_server, artifacts):
    url, server_seconds = app_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    start = time.monotonic()
    page.goto(url)
    page.get_by_text("Checkpoint series").wait_for(timeout=60_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    first_page = time.monotonic() - start
    page.wait_for_timeout(500)
    page.screenshot(path=str(artifacts / "home.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.get_by_text("CoT Drift Workbench").first.is_visible()
    assert page.get_by_text("Llama", exact=True).first.is_visible()
    # a second visit redraws from the cache
    start = time.monotonic()
    page.reload()
    page.get_by_text("Checkpoint series").wait_for(timeout=30_000)
    cached = time.monotonic() - start
    print(f"\ncold start: server {server_seconds:.1f} s + first page {first_page:.1f} s; cached reload {cached:.2f} s")
