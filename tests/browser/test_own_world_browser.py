"""A world of your own in real Chromium: a TRL-made run (adapters naming a base path that no longer exists,
conversational data) registered with ``workbench world create``, opened with ``workbench app --world``,
scored from the Checkpoints page and shown in the drift explorer."""


import pytest

from tests.browser.conftest import served
from tests.browser.test_drift_browser import settle
from tests.browser.test_loop_browser import go, idle, no_exception, set_number
from workbench import cli

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def own_app(foreign_run, free_port, tmp_path):
    ws = tmp_path / "ws"
    assert cli.main(["world", "create", "--name", "trl run", "--base", str(foreign_run["base"]), "--checkpoints",
                     str(foreign_run["run"]), "--data", str(foreign_run["heldout"]), "--workspace", str(ws)]) == 0
    args = ["app", "--headless", "--port", str(free_port), "--workspace",
           str(ws), "--world", str(ws / "worlds" / "trl-run")]
    with served(args, free_port) as url:
        yield url


def test_score_and_explore_a_world_of_your_own(browser, own_app, artifacts):
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(own_app)
    page.get_by_text("Checkpoint series").wait_for(timeout=90_000)
    assert page.get_by_role("heading", name="trl run").first.is_visible()
    no_exception(page)

    go(page, "Checkpoints")
    page.get_by_text("2 checkpoints plus the base").wait_for(timeout=60_000)
    page.get_by_text("loaded anyway").first.wait_for(timeout=30_000)  # the base-name warning, not a refusal
    set_number(page, "Trajectories to score (0 = all)", 3)  # beside the Score button
    page.get_by_role("button", name="Score", exact=True).click()
    open_button = page.locator("[data-testid='stButton'] button", has_text="Open").first
    open_button.wait_for(timeout=240_000)
    page.wait_for_timeout(2500)  # the job panel redraws the page once when the job ends
    idle(page)
    no_exception(page)
    page.screenshot(path=str(artifacts / "own-world-checkpoints.png"), full_page=True)
    open_button.click()
    page.get_by_text("What drives the drift").wait_for(timeout=60_000)
    settle(page, plots=1)  # the screenshot shows the drawn charts, not their placeholders
    no_exception(page)
    page.screenshot(path=str(artifacts / "own-world-explorer.png"), full_page=True)

    go(page, "CPO runs")
    no_exception(page)
