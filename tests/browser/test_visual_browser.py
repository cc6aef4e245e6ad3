"""Visual drift in real Chromium: a user's vision-language world (``tests/vl_world.py``) opened with
``workbench app --world``; in the Perturbation lab the study's X-ray is shown, a region occlusion runs as a
background job and its heatmap is drawn over the image, with a slider over the checkpoints."""

import subprocess
import sys

import pytest

from tests.browser.conftest import stop, wait_http
from tests.browser.test_loop_browser import go, idle, no_exception
from tests.conftest import ROOT
from tests.vl_world import make_vl_world

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def vl_app(free_port, tmp_path):
    world = make_vl_world(tmp_path / "run")
    cmd = [sys.executable, "-m", "workbench.cli", "app", "--headless", "--port", str(free_port), "--workspace",
           str(tmp_path / "ws"), "--world", str(world)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{free_port}"
    try:
        wait_http(url + "/_stcore/health", proc)
        yield url
    finally:
        stop(proc)


def test_occlusion_heatmap_is_drawn_over_the_xray(browser, vl_app, artifacts):
    page = browser.new_page(viewport={"width": 1500, "height": 1200})
    page.goto(vl_app)
    page.get_by_role("link", name="Perturbation lab", exact=True).wait_for(timeout=90_000)
    go(page, "Perturbation lab")
    no_exception(page)
    page.get_by_role("heading", name="Image").first.wait_for(timeout=60_000)
    xray = page.locator("[data-testid='stImage'] img").first
    xray.wait_for(timeout=30_000)
    assert xray.evaluate("img => img.complete && img.naturalWidth > 0")  # the study's X-ray, decoded
    page.get_by_role("tab", name="Region occlusion").click()
    page.get_by_role("button", name="Run", exact=True).first.click()  # the visible one: the occlusion tab's
    heat = page.locator(".js-plotly-plot", has=page.locator(".heatmaplayer"))
    heat.first.wait_for(timeout=240_000)
    page.wait_for_timeout(1500)
    idle(page)
    no_exception(page)
    plot = heat.first
    assert plot.locator(".layer-above image, .imagelayer image").count() >= 1  # the X-ray under the heatmap
    assert plot.locator(".heatmaplayer image, .heatmaplayer .hm").count() >= 1
    assert plot.locator(".slider-container, g.slider-container").count() == 1  # one frame per checkpoint
    plot.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "perturbation-occlusion.png"), full_page=True)
