"""Nothing reaches out: in real Chromium, with every request recorded, stored and file text that carries
markdown images, links and bare URLs renders as text, and no page fetches anything from another host (not its
favicon either: a Material icon name made every page fetch one from a font host). One server and one browser
page go through Home (the world's name and description), Counterfactuals (a trajectory id and a concept graph
node name, before and after a rewrite is stored), Curation (an annotator's name and the stored item's labels)
and CPO runs (an error message quoting a pair's weight)."""

import json
from urllib.parse import urlparse

import pytest

from core.workspace import world as world_mod
from tests.browser.conftest import served

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EVIL = "evil.example"
NAME = f"Evil ![n](http://{EVIL}/name.png)"
DESCRIPTION = (f"see [here](http://{EVIL}/desc), <http://{EVIL}/auto>, www.{EVIL} and "
               f"![d](https://{EVIL}/desc.png)")
STUDY = f"study ![t](http://{EVIL}/id.png) [x](http://{EVIL}/id)"  # a trajectory id
NODE = f"Evil ![g](http://{EVIL}/node.png)"  # a disease of the concept graph
ANNOTATOR = f"ada ![a](http://{EVIL}/ann.png) www.{EVIL}"
WEIGHT = f"![w](http://{EVIL}/weight.png)"  # a pair's weight, quoted by the error that refuses it


def hostile_graph(path):
    """Three diseases, the hostile one first (the default target), each with findings the rewrite can swap."""
    findings = {NODE: ["evil finding"], "Pneumonia": ["consolidation", "fever"],
                "Edema": ["vascular congestion", "kerley lines"]}
    nodes = [{"id": d, "label": d, "kind": "disease", "synonyms": [], "description": ""} for d in findings]
    nodes += [{"id": f, "label": f, "kind": "finding", "synonyms": [], "description": ""}
              for fs in findings.values() for f in fs]
    edges = [{"source": f, "target": d, "relation": "supports", "weight": 0.9} for d, fs in findings.items() for f in fs]
    path.write_text(json.dumps({"directed": True, "multigraph": False, "graph": {"name": "hostile"},
                                "nodes": nodes, "edges": edges}))
    return path


@pytest.fixture
def hostile_app(foreign_run, free_port, tmp_path):
    ws = tmp_path / "ws"
    data = tmp_path / "data"
    data.mkdir()
    records = [json.loads(line) for line in foreign_run["heldout"].read_text().splitlines() if line.strip()]
    pneumonia = next(r for r in records if "is Pneumonia" in r["messages"][-1]["content"])
    rest = [r for r in records if r is not pneumonia]
    trajectories = data / "hostile.jsonl"  # the Pneumonia study first (the page's default), with a hostile id
    trajectories.write_text("".join(json.dumps(r) + "\n" for r in [{**pneumonia, "id": STUDY}, *rest]))
    pairs = data / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "weight": WEIGHT}) + "\n")
    w = world_mod.create_world(ws / "worlds" / "evil", NAME, foreign_run["base"], [foreign_run["run"]],
                               [trajectories], graph=hostile_graph(tmp_path / "graph.json"), description=DESCRIPTION)
    args = ["app", "--headless", "--port", str(free_port), "--workspace", str(ws), "--world", str(w.root)]
    with served(args, free_port) as url:
        yield url, pairs


def check_inert(page, outside: list[str], artifacts, name: str, shown: list[str]) -> None:
    """No exception, no request left 127.0.0.1, no link or image to the evil host, and the hostile text shown."""
    page.wait_for_timeout(1500)  # late requests (icons, images) have time to start
    page.screenshot(path=str(artifacts / f"outside-requests-{name}.png"), full_page=True)
    assert page.locator("[data-testid='stException']").count() == 0, name
    assert not outside, (name, outside)
    hrefs = page.locator("a[href]").evaluate_all("links => links.map(a => a.href)")
    assert not [h for h in hrefs if EVIL in h and not urlparse(h).fragment], (name, hrefs)  # heading anchors: #ids
    assert page.locator(f"img[src*='{EVIL}']").count() == 0, name
    body = page.locator("[data-testid='stMain']").inner_text()
    for text in shown:
        assert text in body, (name, text)  # shown, as text


def test_stored_and_file_text_fetch_nothing_from_outside_on_four_pages(browser, hostile_app, artifacts):
    url, pairs = hostile_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if urlparse(r.url).scheme in ("http", "https", "ws", "wss")
            and urlparse(r.url).hostname not in ("127.0.0.1", "localhost") else None)
    page.goto(url)
    page.get_by_text("Checkpoint series").wait_for(timeout=90_000)
    check_inert(page, outside, artifacts, "home", [f"{EVIL}/name.png", f"{EVIL}/desc"])
    icon = page.locator("link[rel~='icon']").first.get_attribute("href")
    assert icon and urlparse(icon).hostname in (None, "127.0.0.1", "localhost"), icon

    page.goto(url + "/counterfactuals")
    page.get_by_role("button", name="Generate for this trajectory").click()
    page.get_by_text("Preview ·").wait_for(timeout=60_000)
    check_inert(page, outside, artifacts, "counterfactuals", [f"{EVIL}/id.png", f"{EVIL}/node.png"])

    page.goto(url + "/curation")
    page.get_by_label("Your name, recorded with every decision").fill(ANNOTATOR)
    page.get_by_role("button", name="Start annotating").click()
    page.get_by_text("Annotating as").wait_for(timeout=30_000)
    check_inert(page, outside, artifacts, "curation", [f"{EVIL}/ann.png", f"{EVIL}/node.png"])

    page.goto(url + "/runs")
    choice = page.get_by_role("combobox", name="Preference data")
    choice.wait_for(timeout=60_000)
    if choice.input_value() != "a TRL preference file":  # the default when the world has no snapshot
        choice.click()
        page.get_by_role("option", name="a TRL preference file").click()
    box = page.get_by_label("Preference file (JSONL")
    box.fill(str(pairs))
    box.press("Enter")
    page.get_by_text("field 'weight'").wait_for(timeout=60_000)
    check_inert(page, outside, artifacts, "runs", [f"{EVIL}/weight.png"])
