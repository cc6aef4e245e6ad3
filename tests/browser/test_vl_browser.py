"""A vision-language run in real Chromium: registered with ``workbench world create``, opened with ``workbench
app --world``, scored from the Checkpoints page (a background job) and shown in the drift explorer, where the
study's X-ray is drawn beside its chain of thought."""

import subprocess
import sys

import pytest

from tests.browser.conftest import stop, wait_http
from tests.browser.test_loop_browser import go, idle, no_exception, set_number
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


def test_score_a_vl_run_and_see_the_x_ray_in_the_explorer(browser, vl_app, artifacts):
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(vl_app)
    page.get_by_role("heading", name="Tiny X-ray world").first.wait_for(timeout=90_000)
    go(page, "Checkpoints")
    page.get_by_text("2 checkpoints plus the base").wait_for(timeout=60_000)
    set_number(page, "Trajectories to score (0 = all)", 3)
    page.get_by_role("button", name="Score", exact=True).click()
    open_button = page.locator("[data-testid='stButton'] button", has_text="Open").first
    open_button.wait_for(timeout=240_000)
    page.wait_for_timeout(2500)  # the job panel redraws the page once when the job ends
    idle(page)
    no_exception(page)
    open_button.click()
    page.get_by_text("What drives the drift").wait_for(timeout=60_000)
    idle(page)
    page.locator("[data-testid='stButtonGroup'] button", has_text="Trajectory").first.click()
    picture = page.locator("[data-testid='stImage'] img").first
    picture.wait_for(timeout=60_000)
    idle(page)
    no_exception(page)
    # decoded and drawn: the browser has the image's pixels, at the width the page asked for
    assert page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=picture.element_handle())
    assert picture.bounding_box()["width"] >= 200
    picture.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "vl-explorer.png"))
