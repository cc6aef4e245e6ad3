"""The curation page in a real browser on a vision-language run's counterfactuals: the study's X-ray is drawn
beside the pair (a decoded image, not a broken link), and an image swap shows the original and the swapped-in
X-ray side by side; the keyboard still decides."""

import pytest

from core.workspace import Workspace
from tests.pages.test_images_pages import generate_like_the_page
from tests.vl_world import make_vl_world

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def idle(page) -> None:
    page.wait_for_timeout(300)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=30_000)


MAIN_IMAGES = "[data-testid='stMain'] img"


def drawn_images(page, n: int) -> list[int]:
    """Natural widths of the images in the page's main area (0 for one that did not decode), once ``n`` of them
    have arrived and finished loading (the media files come after the script run)."""
    page.wait_for_function(f"n => {{ const imgs = [...document.querySelectorAll(\"{MAIN_IMAGES}\")];"
                           " return imgs.length >= n && imgs.every(i => i.complete); }", arg=n, timeout=30_000)
    return page.eval_on_selector_all(MAIN_IMAGES, "imgs => imgs.map(i => i.naturalWidth)")


def test_the_xray_is_visible_beside_the_pair_and_an_image_swap_shows_both(browser, app_server, artifacts, tmp_path):
    url, _ = app_server
    generate_like_the_page(Workspace.open(tmp_path / "ws"), make_vl_world(tmp_path / "vl"))
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url + "/curation")
    page.get_by_label("Your name, recorded with every decision").fill("ada")
    page.get_by_role("button", name="Start annotating").click()
    page.get_by_text("Item #1 ·").wait_for(timeout=60_000)
    idle(page)
    widths = drawn_images(page, 1)
    assert len(widths) == 1 and widths[0] > 0  # the study's X-ray, decoded
    page.screenshot(path=str(artifacts / "curation-xray.png"), full_page=True)
    page.keyboard.press("a")
    page.get_by_text("Item #2 ·").wait_for(timeout=30_000)
    idle(page)
    page.get_by_text("Counterfactual image · Edema").wait_for(timeout=30_000)
    widths = drawn_images(page, 2)
    assert len(widths) == 2 and min(widths) > 0  # original and swapped-in X-ray side by side
    page.screenshot(path=str(artifacts / "curation-image-swap.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0
