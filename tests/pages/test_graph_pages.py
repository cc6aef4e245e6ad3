"""AppTests of the concept graph editor and the counterfactuals page, and the escaping of their HTML builders."""

import pytest
from streamlit.testing.v1 import AppTest

from core.graph import concepts
from tests.conftest import ROOT
from workbench import graphview, state

XSS = "<img src=x onerror=alert(1)>"
XSS_JSON = "\\u003cimg src=x onerror=alert(1)\\u003e"  # how jinja's tojson writes it into the page's script


def page(name: str, workspace, world=None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=120)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    if world is not None:
        at.session_state[state.WORLD_PATH] = str(world)
    return at.run()


def iframe_html(at: AppTest) -> str:
    return at.get("iframe")[0].proto.srcdoc


def add_node(at: AppTest, name: str, kind: str = "finding") -> AppTest:
    at.text_input(key="node_name").input(name)
    at.radio(key="node_kind").set_value(kind)
    return at.button(key="FormSubmitter:add_node-Add node").click().run()


def test_graph_html_draws_an_xss_label_as_text(sample_world):
    g = concepts.load_graph(sample_world / "concept_graph.json")
    g = concepts.apply_edit(g, {"op": "add_node", "id": XSS, "kind": "finding", "synonyms": ["<b>bold</b>"],
                                "description": "</script><script>alert(2)</script>"})
    g = concepts.apply_edit(g, {"op": "set_edge", "source": XSS, "target": "Edema", "relation": "supports", "weight": 0.5})
    html = graphview.graph_html(g, highlight=XSS)
    assert XSS not in html and "<b>bold" not in html and "</script><script>alert(2)" not in html
    assert XSS_JSON in html and "vis.Network" in html and "cdn.jsdelivr" not in html
    # readable at the starting zoom: larger labels, and the fitted view zoomed in to a minimum scale
    assert f'"size": {graphview.LABEL_SIZE}' in html and f"moveTo({{scale: {graphview.MIN_START_SCALE}}})" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in graphview.legend_html(g, 2, XSS)
    diff = graphview.side_by_side_html(f"{XSS} suggests Edema.", "infiltrate suggests Pneumonia.")
    assert XSS not in diff and "<del style='background:#fdd'>&lt;" in diff and "<mark" in diff


def test_editor_shows_the_graph_and_adds_an_escaped_node_and_an_edge(tmp_path):
    at = page("graph_editor.py", tmp_path)
    assert not at.exception
    assert '"label": "Pleural Effusion"' in iframe_html(at) and "vis.Network" in iframe_html(at)
    at = add_node(at, XSS)
    assert not at.exception and at.success[0].value == f"Added finding {XSS!r}."
    at.selectbox(key="edge_source").set_value(XSS)
    at.selectbox(key="edge_target").set_value("Edema")
    at.slider(key="edge_weight").set_value(0.8)
    at.button(key="FormSubmitter:set_edge-Save edge").click().run()
    assert not at.exception and not at.error
    html = iframe_html(at)
    assert XSS not in html and html.count(XSS_JSON) >= 2  # the node and its edge's tooltip
    assert '"color": "#2CA02C"' in html and '"width": 5.0' in html  # supports green, width 1 + 5 * 0.8
    at.text_input(key=state.GRAPH_SEARCH).input("onerror").run()
    assert at.selectbox(key="graph_focus").value == XSS
    assert any("&lt;img src=x" in md.value for md in at.markdown)
    history = at.dataframe[0].value
    assert history["version"].tolist() == [3, 2, 1]


def test_undo_redo_and_history_diff(tmp_path):
    at = add_node(page("graph_editor.py", tmp_path), "pleural fluid")
    assert '"id": "pleural fluid"' in iframe_html(at)
    at.button(key="graph_undo").click().run()
    assert not at.exception and '"id": "pleural fluid"' not in iframe_html(at)
    at.button(key="graph_redo").click().run()
    assert '"id": "pleural fluid"' in iframe_html(at)
    diff = at.dataframe[1].value
    assert diff.to_dict("records") == [{"change": "node added", "item": "pleural fluid", "detail": ""}]


def test_undo_keeps_the_open_tab_and_the_diff_never_compares_a_version_with_itself(tmp_path):
    at = add_node(page("graph_editor.py", tmp_path), "pleural fluid")
    at.session_state["graph_tab"] = "Edges"
    at.button(key="graph_undo").click().run()
    assert not at.exception and at.session_state["graph_tab"] == "Edges"
    old = [s for s in at.selectbox if s.label == "Compare version"][0].value
    new = [s for s in at.selectbox if s.label == "with version"][0].value
    assert old != new and not at.dataframe[1].value.empty  # the undone node shows in the default diff


def test_two_tabs_never_lose_an_edit_silently(tmp_path):
    tab_a, tab_b = page("graph_editor.py", tmp_path), page("graph_editor.py", tmp_path)
    add_node(tab_a, "finding from A")
    tab_b = add_node(tab_b, "finding from B")
    assert not tab_b.exception
    assert "changed while you were editing" in tab_b.error[0].value
    assert "version 2 is current" in tab_b.warning[0].value
    tab_b.button(key="graph_load_head").click().run()
    tab_b = add_node(tab_b, "finding from B")
    assert tab_b.success and '"id": "finding from A"' in iframe_html(tab_b) and '"id": "finding from B"' in iframe_html(tab_b)


def test_counterfactuals_page_generates_previews_batches_and_lists(tmp_path):
    at = page("counterfactuals.py", tmp_path)
    assert not at.exception
    at.radio(key="cf_mode").set_value("confusable").run()
    at.button(key="cf_generate").click().run()
    assert not at.exception and not at.error
    preview = [h.value for h in at.get("html") if "cf-diff" in h.value][0]  # as HTML, not markdown
    assert "<mark style='background:#cfc'>Edema</mark>" in preview
    table = at.dataframe[0].value
    assert sorted(table["target"]) == ["Edema", "Pleural Effusion"] and set(table["consistency"]) == {1.0}
    assert str(table["created_at"].dtype).startswith("datetime64") and table["created_at"].dt.year.min() >= 2024
    assert set(table["model"]) == {"graph rules"}  # graph rules use no model: not "None"
    at.radio(key="cf_mode").set_value("all").run()
    at.number_input(key="cf_batch_n").set_value(5).run()
    at.button(key="cf_batch_run").click().run()
    assert not at.exception and not at.error
    from core.counterfactuals import batch as counterfactual_job
    from core.jobs import supervisor as jobs
    from core.workspace.workspace import Workspace

    job = jobs.list_jobs(Workspace.open(at.session_state[state.WORKSPACE_PATH]).job_dirs, counterfactual_job.KIND)[0]
    assert job.wait(timeout=120) == "done", job.log_tail()  # a background job: the page only re-attaches
    at.run()
    assert any("5 of 5 trajectories" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert table["trajectory"].nunique() == 5 and len(table) >= 5 * 13 - 2


@pytest.mark.slow
def test_counterfactuals_page_llm_expert(tmp_path):
    at = page("counterfactuals.py", tmp_path)
    at.radio(key="cf_method").set_value("llm").run()
    assert not at.exception
    at.selectbox(key="cf_checkpoint").set_value("checkpoint-40")
    at.number_input(key="cf_max_new").set_value(16)
    at.button(key="cf_generate").click().run()
    assert not at.exception and not at.error
    row = at.dataframe[0].value.iloc[0]
    assert (row["method"], row["model"], row["target"]) == ("llm", "model@checkpoint-40", "No Finding")
    at.text_area(key="cf_template").input("no placeholders").run()
    assert "must contain {report}, {graph}, {disease}" in at.error[0].value


def test_counterfactuals_use_the_edited_graph_and_record_its_version(tmp_path, sample_world):
    from core.graph.store import GraphStore
    from core.workspace.workspace import Workspace

    gs = GraphStore.open(Workspace.open(tmp_path).store, sample_world / "concept_graph.json")
    gs.edit({"op": "add_node", "id": "pleural fluid", "kind": "finding"}, base=1)
    gs.edit({"op": "set_edge", "source": "pleural fluid", "target": "No Finding", "relation": "supports",
             "weight": 1.0}, base=2)
    at = page("counterfactuals.py", tmp_path)
    assert any("Concept graph version 3" in c.value for c in at.caption)
    at.button(key="cf_generate").click().run()
    row = at.dataframe[0].value.iloc[0]
    assert (row["target"], row["graph_version"]) == ("No Finding", 3)
    assert row["counterfactual"].startswith("<think> pleural fluid suggests No Finding.")  # the new, heaviest supporter
