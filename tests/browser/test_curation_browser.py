"""The curation page in a real browser: import a CCF file by path, annotate three items with the keyboard
(A accept, X reject, E save an edit), export a TRL snapshot, and check the database and the file."""

import json

import pytest

from core.curation import queue as curation
from core.curation import snapshots
from core.workspace.workspace import Workspace
from tests.curation_data import write_ccf

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def wait_item(page, n: int) -> None:
    page.get_by_text(f"Item #{n} ·").wait_for(timeout=30_000)
    idle(page)


def idle(page) -> None:
    """Wait until the script run is over (stale elements of the previous run are gone)."""
    page.wait_for_timeout(300)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=30_000)


def test_annotate_three_items_with_the_keyboard_and_export(browser, app_server, artifacts, tmp_path):
    url, _ = app_server
    ccf = write_ccf(tmp_path / "ccf.json", n=3)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url + "/curation")
    page.get_by_label("Your name, recorded with every decision").fill("ada")
    page.get_by_role("button", name="Start annotating").click()
    page.get_by_text("Annotating as").wait_for(timeout=30_000)
    idle(page)

    page.get_by_role("tab", name="Import").click()
    page.get_by_label("…or a path on this machine").fill(str(ccf))
    page.get_by_label("…or a path on this machine").press("Enter")
    page.get_by_role("button", name="Import", exact=True).click()
    page.get_by_text("kept 3 pairs, 0 duplicates, skipped 0").wait_for(timeout=30_000)

    page.get_by_role("tab", name="Annotate").click()
    wait_item(page, 1)
    page.locator("mark.ins").first.wait_for()  # the changed spans are highlighted
    page.keyboard.press("a")
    wait_item(page, 2)
    page.keyboard.press("x")
    wait_item(page, 3)
    page.screenshot(path=str(artifacts / "curation-focus.png"), full_page=True)
    edited = "<think> an edited chain of thought </think> The disease of this patient is Edema."
    box = page.get_by_label("Edit the counterfactual in place")
    box.fill(edited)
    page.get_by_text("Annotating as").click()  # leave the text box: its value is sent, keys are shortcuts again
    page.wait_for_timeout(500)
    page.keyboard.press("e")
    page.get_by_text("Nothing left for you in this queue").wait_for(timeout=30_000)

    page.get_by_role("tab", name="Export").click()
    page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_text("Snapshot trl-").wait_for(timeout=30_000)
    page.screenshot(path=str(artifacts / "curation-exported.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0

    store = Workspace.open(tmp_path / "ws").store
    decisions = {i: curation.item(store, i).annotations.iloc[0] for i in (1, 2, 3)}
    assert [decisions[i]["decision"] for i in (1, 2, 3)] == ["accept", "reject", "edit"]
    assert decisions[3]["edited_text"] == edited and set(curation.queue(store)["annotators"]) == {"ada"}
    snap = snapshots.snapshots(store)[0]
    rows = [json.loads(x) for x in (snap.path / "train.jsonl").read_text().splitlines()]
    assert snap.row_count == 2 and edited in {r["rejected"] for r in rows}
