"""In real Chromium: add a node (named like an XSS probe) and an edge in the concept graph editor, see both
drawn by vis-network in the page's iframe with no script run from the label, then generate a counterfactual
for a sample trajectory and see the side-by-side preview."""

import re

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

pytestmark = [pytest.mark.browser, pytest.mark.slow]

XSS = "<img src=x onerror=alert(1)>"


def graph_frame(page, timeout_ms: int = 60_000):
    """The iframe that holds the pyvis page (its script defines ``network`` and ``nodes``)."""
    for _ in range(timeout_ms // 250):
        for frame in page.frames[1:]:
            try:
                if frame.evaluate("typeof network !== 'undefined' && typeof nodes !== 'undefined'"):
                    return frame
            except Exception:  # noqa: BLE001 - a frame being replaced by Streamlit's rerender
                continue
        page.wait_for_timeout(250)
    raise AssertionError("no graph iframe with a vis network appeared")


def wait_drawn(page, node_id: str, target: str, artifacts, timeout_ms: int = 150_000) -> dict:
    """Poll the iframe until the node and its edge are in vis' data and have canvas positions (generous: under a
    load of 10-18 on two cores the rerun after Save edge and vis' first layout took over a minute once)."""
    probe = """([id, to]) => {
        const n = nodes.get(id); if (!n) return null;
        const e = edges.get({filter: x => x.from === id && x.to === to});
        const pos = network.getPositions([id])[id];
        return {label: n.label, edges: e.length, color: e.length ? e[0].color : null, placed: !!pos};
    }"""
    for _ in range(timeout_ms // 500):
        try:
            got = graph_frame(page).evaluate(probe, [node_id, target])
        except Exception:  # noqa: BLE001 - the iframe was swapped between lookup and evaluate
            got = None
        if got and got["edges"] and got["placed"]:
            return got
        page.wait_for_timeout(500)
    page.screenshot(path=str(artifacts / "graph_editor-not-drawn.png"), full_page=True)  # what the page showed
    raise AssertionError(f"{node_id!r} -> {target!r} was not drawn (see graph_editor-not-drawn.png)")


def choose(page, label: str, text: str, tries: int = 3) -> None:
    """Pick an option of a Streamlit selectbox by typing part of it. A rerun that redraws the box while we type
    (the node just added reaches the list with it) loses the typed text or the open list: then type again."""
    for attempt in range(tries):
        box = page.get_by_role("combobox", name=label)
        box.click(timeout=90_000)  # generous: on a loaded 2-core machine a rerun can take tens of seconds
        page.keyboard.press("Control+A")
        page.keyboard.type(text)
        option = page.get_by_role("option").filter(has_text=text).first
        try:  # the option shows once the list holds the new node (a rerun can redraw the list meanwhile)
            option.wait_for(timeout=30_000)
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise
            page.keyboard.press("Escape")
            continue
        page.keyboard.press("Enter")  # picks the highlighted (first filtered) option
        for _ in range(30):  # the box shows it (in its input or beside it); a redraw can swallow the pick: again
            shown = page.get_by_test_id("stSelectbox").filter(has_text=label).first
            if text in shown.inner_text() + " ".join(i.input_value() for i in shown.locator("input").all()):
                return
            page.wait_for_timeout(500)
        if attempt == tries - 1:
            raise AssertionError(f"{label}: {text!r} was not chosen")


def test_add_node_and_edge_see_them_drawn_then_generate_a_counterfactual(browser, app_server, artifacts, tmp_path):
    url, _ = app_server
    workspace = tmp_path / "ws"  # app_server's workspace
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(url + "/graph_editor")
    page.get_by_text("Add a node").wait_for(timeout=90_000)
    graph_frame(page)

    page.get_by_label("Name", exact=True).fill(XSS)
    page.get_by_text("finding", exact=True).first.click()
    page.get_by_role("button", name="Add node").click()
    page.get_by_text(f"Added finding '{XSS}'.").wait_for(timeout=30_000)

    # a fresh load: the stored graph (versioned in the workspace) with the new node in every list from the start,
    # not a list that a rerun redraws while we type into it
    page.reload()
    page.get_by_text("Add a node").wait_for(timeout=90_000)
    page.get_by_role("tab", name="Edges").click()
    choose(page, "Finding", "onerror")
    choose(page, "Disease", "Edema")
    page.get_by_role("button", name="Save edge").click()
    page.get_by_text("Saved ").first.wait_for(timeout=30_000)

    drawn = wait_drawn(page, XSS, "Edema", artifacts)
    assert drawn["label"] == XSS and drawn["color"] == "#2CA02C"  # drawn as text, supports green
    frame = graph_frame(page)
    assert frame.locator("img").count() == 0 and frame.locator("canvas").count() >= 1
    page.wait_for_timeout(1500)  # let the physics settle for the screenshot
    page.screenshot(path=str(artifacts / "graph_editor.png"), full_page=True)
    assert dialogs == [] and page.locator("[data-testid='stException']").count() == 0

    page.get_by_role("link", name="Counterfactuals").click()
    page.get_by_role("button", name="Generate for this trajectory").click(timeout=60_000)
    page.get_by_text("Preview · test-00000").wait_for(timeout=60_000)
    preview = page.locator("table.cf-diff")
    assert preview.locator("mark").count() >= 2 and preview.locator("del").count() >= 2
    assert "The disease of this patient is No Finding." in preview.inner_text()
    page.locator("[data-testid='stApp'][data-test-script-state='notRunning']").wait_for(timeout=60_000)
    page.get_by_text("Question: what is the disease of this patient?").first.wait_for(timeout=30_000)  # the record
    page.screenshot(path=str(artifacts / "counterfactuals.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0

    # a batch over the whole test set, stopped while it runs: what finished stays stored
    page.get_by_text("all other diseases").click()
    page.get_by_label("Trajectories (from the first)").fill("700")
    page.get_by_label("Trajectories (from the first)").press("Enter")
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Run batch").click()  # a background job: the jobs panel shows it live
    page.get_by_text("of 700 trajectories").first.wait_for(timeout=60_000)
    ended = page.get_by_text(re.compile(r"· (cancelled|done) ·")).first
    for _ in range(4):  # under load the live panel may redraw the button under the click: click again
        cancel = page.get_by_role("button", name="Cancel")
        if cancel.count():
            cancel.first.click(timeout=30_000)
        try:
            ended.wait_for(timeout=45_000)
            break
        except PlaywrightTimeout:
            continue
    ended.wait_for(timeout=30_000)
    finished_first = "· done ·" in ended.inner_text()  # the batch outran the click: nothing left to stop
    from core.counterfactuals.store import list_counterfactuals
    from core.workspace.workspace import Workspace

    stored = list_counterfactuals(Workspace.open(workspace).store)
    done = stored["trajectory"].nunique()  # the batch starts at test-00000, which the single run stored too
    assert done == 700 if finished_first else 0 < done < 700
    assert page.locator("[data-testid='stException']").count() == 0
