"""The drift pages in real Chromium on the sample world: explorer overview, one trajectory's heatmap and
belief plot, a perturbation in the lab; with screenshots and the redraw times from the cached analysis."""

import statistics
import time

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def settle(page, plots: int = 0, timeout: float = 60_000) -> None:
    """Wait until the script run that the last action started has finished and ``plots`` plots are drawn."""
    page.wait_for_timeout(50)
    page.wait_for_selector(IDLE, timeout=timeout)
    if plots:
        page.locator(".js-plotly-plot").nth(plots - 1).wait_for(timeout=timeout)
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].every(p => p._fullLayout)",
                           timeout=timeout)


def no_exception(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, page.locator("[data-testid='stException']").first.inner_text()


def test_explorer_heatmap_belief_plot_and_a_perturbation(browser, app_server, artifacts):
    url, _ = app_server
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(url + "/explorer")
    page.get_by_text("What drives the drift").wait_for(timeout=90_000)
    settle(page, plots=2)
    no_exception(page)
    assert page.locator(".js-plotly-plot").count() == 2
    page.screenshot(path=str(artifacts / "explorer-overview.png"))

    start = time.monotonic()
    page.locator("[data-testid='stButtonGroup'] button", has_text="Trajectory").first.click()
    page.locator("[data-testid='stText']").first.wait_for(timeout=30_000)
    settle(page, plots=2)
    to_trajectory = time.monotonic() - start
    no_exception(page)
    plots = page.locator(".js-plotly-plot")
    assert plots.count() == 2
    heatmap, beliefs = plots.nth(0), plots.nth(1)
    assert heatmap.locator(".heatmaplayer").count() == 1 and "checkpoint-160" in heatmap.inner_text()
    assert "<think>" in heatmap.inner_text()  # the token axis shows tokens as text
    assert beliefs.locator(".scatterlayer .trace").count() == 7  # one line per checkpoint
    assert "CoT starts" in beliefs.inner_text()
    page.screenshot(path=str(artifacts / "explorer-trajectory.png"))

    switches = []
    picker = page.locator("[data-testid='stSelectbox']", has_text="Trajectory (")
    for k in (3, 4, 5):
        picker.click()
        option = page.get_by_role("option").nth(k)
        wanted = option.inner_text().split(" · ")[0]
        start = time.monotonic()  # from the pick to the redrawn page
        option.click()
        page.wait_for_function("(w) => document.querySelector(\"input[aria-label^='Trajectory (']\").value"
                               ".startsWith(w)", arg=wanted, timeout=30_000)
        settle(page, plots=2)
        switches.append(time.monotonic() - start)
        no_exception(page)
    chosen = picker.locator("input").input_value()

    start = time.monotonic()
    page.get_by_role("link", name="Perturbation lab").click()
    page.get_by_role("button", name="Swap and compare").wait_for(timeout=30_000)
    settle(page)
    to_lab = time.monotonic() - start
    no_exception(page)
    lab_picker = page.locator("[data-testid='stSelectbox']", has_text="Trajectory").first.locator("input")
    assert lab_picker.input_value().split(" · ")[0] == chosen.split(" · ")[0]  # the explorer's pick carried over
    page.get_by_role("button", name="Swap and compare").click()
    page.get_by_text("the answer flips under").wait_for(timeout=90_000)
    settle(page, plots=1)
    no_exception(page)
    assert page.locator(".js-plotly-plot").count() >= 1
    page.screenshot(path=str(artifacts / "perturbation-lab.png"))

    start = time.monotonic()
    page.get_by_role("link", name="Drift explorer").click()
    page.get_by_text("What drives the drift").wait_for(timeout=30_000)
    settle(page, plots=2)
    back = time.monotonic() - start
    no_exception(page)

    start = time.monotonic()  # pages visited before redraw from the caches
    page.get_by_role("link", name="Perturbation lab").click()
    page.get_by_role("button", name="Swap and compare").wait_for(timeout=30_000)
    settle(page)
    again = time.monotonic() - start
    no_exception(page)
    print(f"\nredraw from the cached analysis: overview -> trajectory {to_trajectory:.2f} s; "
          f"switch trajectory {statistics.median(switches):.2f} s (median of {len(switches)}: "
          f"{', '.join(f'{s:.2f}' for s in switches)}); explorer -> lab {to_lab:.2f} s (first visit), {again:.2f} s (again); lab -> explorer {back:.2f} s")
