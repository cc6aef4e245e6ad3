"""The multimodal demo world in real Chromium, as a speaker demos it (``workbench demo --world multimodal``, one
server for the module): the X-ray is drawn (decoded, not a broken link) beside the CoT in the drift explorer
straight from the shipped analysis, an occlusion heatmap is drawn over it in the Perturbation lab, the study's
X-ray is beside the pair in Curation and an image swap shows both X-rays side by side (the keyboard still
decides), and a vision-language series is scored from the Checkpoints page as a background job whose analysis
opens with the X-ray. (These checks were three browser tests on a tiny test world, each starting a server.)"""

import os
import subprocess
import sys

import pytest

from core.workspace.workspace import Workspace
from tests.browser.conftest import stop, wait_http
from tests.browser.test_loop_browser import go, idle, no_exception, set_number
from tests.conftest import ROOT
from tests.pages.test_images_pages import generate_like_the_page
from workbench.demo import SAMPLE_WORLDS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MAIN_IMAGES = "[data-testid='stMain'] img"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``workbench demo --world multimodal`` on a free port with a fresh workspace; yields (url, workspace)."""
    import socket

    tmp = tmp_path_factory.mktemp("mmdemo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "workbench.cli", "demo", "--world", "multimodal", "--headless", "--port", str(port),
           "--workspace", str(tmp / "ws")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "WORKBENCH_DATA_ROOTS": str(tmp)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/_stcore/health", proc)
        yield url, tmp / "ws"
    finally:
        stop(proc)


def decoded(page, picture) -> None:
    """The browser has the image's pixels: loaded and decoded, not a broken link."""
    picture.wait_for(timeout=60_000)
    assert page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=picture.element_handle())


def drawn_images(page, n: int) -> list[int]:
    """Natural widths of the images in the page's main area (0 for one that did not decode), once ``n`` of them
    have arrived and finished loading (the media files come after the script run)."""
    page.wait_for_function(f"n => {{ const imgs = [...document.querySelectorAll(\"{MAIN_IMAGES}\")];"
                           " return imgs.length >= n && imgs.every(i => i.complete); }", arg=n, timeout=30_000)
    return page.eval_on_selector_all(MAIN_IMAGES, "imgs => imgs.map(i => i.naturalWidth)")


def trajectory_view(page) -> None:
    page.locator("[data-testid='stButtonGroup'] button", has_text="Trajectory").first.click()
    idle(page)


def test_the_x_ray_in_the_explorer_from_the_shipped_analysis_and_an_occlusion_heatmap(browser, demo, artifacts):
    url, _ = demo
    page = browser.new_page(viewport={"width": 1500, "height": 1200})
    page.goto(url)
    page.get_by_role("heading", name="CheXpert multimodal demo world").first.wait_for(timeout=90_000)
    go(page, "Drift explorer")
    page.get_by_text("What drives the drift").wait_for(timeout=60_000)  # the overview, nothing scored
    no_exception(page)
    trajectory_view(page)
    picture = page.locator("[data-testid='stImage'] img").first
    decoded(page, picture)
    no_exception(page)
    assert picture.bounding_box()["width"] >= 200
    picture.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "multimodal-explorer.png"))

    go(page, "Perturbation lab")
    no_exception(page)
    page.get_by_role("heading", name="Image").first.wait_for(timeout=60_000)
    decoded(page, page.locator("[data-testid='stImage'] img").first)  # the study's X-ray
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
    page.screenshot(path=str(artifacts / "multimodal-occlusion.png"), full_page=True)


def test_the_x_ray_beside_the_pair_in_curation_and_an_image_swap_side_by_side(browser, demo, artifacts):
    url, ws = demo
    generate_like_the_page(Workspace.open(ws), SAMPLE_WORLDS["multimodal"])  # a graph rewrite and an image swap
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url + "/curation")
    page.get_by_label("Your name, recorded with every decision").fill("ada")
    page.get_by_role("button", name="Start annotating").click()
    page.get_by_text("Item #1 ·").wait_for(timeout=60_000)
    idle(page)
    widths = drawn_images(page, 1)
    assert len(widths) == 1 and widths[0] > 0  # the study's X-ray, decoded
    page.screenshot(path=str(artifacts / "multimodal-curation-xray.png"), full_page=True)
    page.keyboard.press("a")
    page.get_by_text("Item #2 ·").wait_for(timeout=30_000)
    idle(page)
    page.get_by_text("Counterfactual image · Edema").wait_for(timeout=30_000)
    widths = drawn_images(page, 2)
    assert len(widths) == 2 and min(widths) > 0  # original and swapped-in X-ray side by side
    page.screenshot(path=str(artifacts / "multimodal-curation-image-swap.png"), full_page=True)
    no_exception(page)


def test_score_the_vl_series_from_the_page_and_see_the_x_ray(browser, demo, artifacts):
    url, _ = demo
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(url)
    page.get_by_role("heading", name="CheXpert multimodal demo world").first.wait_for(timeout=90_000)
    go(page, "Checkpoints")
    page.get_by_text("5 checkpoints plus the base").wait_for(timeout=60_000)
    set_number(page, "Trajectories to score (0 = all)", 2)
    command = page.locator("code", has_text="workbench score").first.text_content()  # in its closed expander
    # the session still has the demo's world (the sidebar's picker once switched it to sample_data here)
    assert '"data": "' + str(SAMPLE_WORLDS["multimodal"].resolve() / "data" / "test.jsonl") in command, command
    page.get_by_role("button", name="Score", exact=True).click()
    open_button = page.locator("[data-testid='stButton'] button", has_text="Open").first
    open_button.wait_for(timeout=240_000)
    page.wait_for_timeout(2500)  # the job panel redraws the page once when the job ends
    idle(page)
    no_exception(page)
    open_button.click()
    page.get_by_text("What drives the drift").wait_for(timeout=60_000)
    idle(page)
    scored = page.locator("[data-testid='stMetric']", has_text="Trajectories").first
    assert scored.locator("[data-testid='stMetricValue']").inner_text().strip() == "2"  # the new analysis, not the shipped
    trajectory_view(page)
    picture = page.locator("[data-testid='stImage'] img").first
    decoded(page, picture)
    no_exception(page)
    page.screenshot(path=str(artifacts / "multimodal-scored.png"))
