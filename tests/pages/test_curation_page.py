"""AppTest for the curation page: name once per session, decide with the buttons, import and export."""

import json

from streamlit.testing.v1 import AppTest

from core.curation import queue as curation
from core.curation import snapshots
from core.workspace.workspace import Workspace
from tests.conftest import ROOT
from tests.curation_data import write_ccf
from workbench import state
from workbench.demo import SAMPLE_WORLDS

WORLD = str(SAMPLE_WORLDS["text"].resolve())  # the world the page opens by default: its items are curated


def page(workspace, annotator: str = "") -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "curation.py"), default_timeout=60)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    at.session_state[state.ANNOTATOR] = annotator
    return at.run()


def test_asks_the_name_once_then_annotates_with_the_buttons(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    snapshots.import_file(ws.store, write_ccf(tmp_path / "ccf.json", n=3), world=WORLD)
    at = page(tmp_path / "ws")
    assert not at.exception
    assert any("Enter your name to start" in i.value for i in at.info)
    at.text_input(key="cur_name").input("ada")
    at.button[0].click().run()  # the form's submit button, the first button of the page
    assert at.session_state[state.ANNOTATOR] == "ada"
    assert "0 of 3 settled" in at.get("progress")[0].proto.text
    at.button(key="cur_accept").click().run()
    at.text_input(key="cur_note_2").input("keeps a finding of the original")
    at.button(key="cur_reject").click().run()
    assert not at.exception
    df = curation.queue(ws.store)
    assert dict(zip(df["id"], df["status"], strict=True)) == {1: "done", 2: "done", 3: "pending"}
    assert curation.item(ws.store, 2).annotations["note"].tolist() == ["keeps a finding of the original"]
    edited = "<think> an edited chain of thought </think> The disease of this patient is Edema."
    at.text_area(key="cur_edit_3").input(edited)
    at.button(key="cur_edit").click().run()
    assert curation.item(ws.store, 3).annotations["edited_text"].tolist() == [edited]
    assert any("Nothing left for you" in i.value for i in at.info)


def test_import_by_path_reports_counts_and_a_bad_file_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n"
                   + json.dumps({"prompt": "p"}) + "\n")
    at = page(tmp_path / "ws", "ada")
    at.text_input(key="cur_import_path").input(str(bad))
    at.button(key="cur_import").click().run()
    assert not at.exception
    assert "bad.jsonl, line 2, field 'chosen'" in at.error[0].value and "Nothing was stored" in at.error[0].value
    ws = Workspace.open(tmp_path / "ws")
    assert curation.queue(ws.store).empty
    at.text_input(key="cur_import_path").input(str(write_ccf(tmp_path / "ccf.json", n=4, targets_per_item=2)))
    at.button(key="cur_import").click().run()
    assert "kept 8 pairs, 0 duplicates, skipped 0" in at.success[0].value
    assert len(curation.queue(ws.store)) == 8


def test_export_records_a_snapshot_and_agreement_renders(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    snapshots.import_file(ws.store, write_ccf(tmp_path / "ccf.json", n=3), required=2, world=WORLD)
    for who, decisions in (("ada", ["accept", "accept", "reject"]), ("bob", ["accept", "reject", "reject"])):
        for item_id, decision in zip((1, 2, 3), decisions, strict=True):
            curation.annotate(ws.store, item_id, who, decision)
    at = page(tmp_path / "ws", "ada")
    assert {m.label: m.value for m in at.metric}["Items rated twice or more"] == "3"
    assert at.selectbox(key="cur_conflict_item").options == ["2"]
    at.selectbox(key="cur_export_format").select("swift")
    at.button(key="cur_export").click().run()
    assert not at.exception
    snap = snapshots.snapshots(ws.store)[0]
    assert snap.format == "swift" and snap.row_count == 1 and snap.name in at.success[0].value
    at.button(key="cur_settle").click().run()  # settle item 2 as accept
    assert curation.queue(ws.store, curation.QueueFilter(status="resolved"))["id"].tolist() == [2]


def test_guidelines_and_k_are_edited_on_the_page(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    snapshots.import_file(ws.store, write_ccf(tmp_path / "ccf.json", n=3), world=WORLD)
    at = page(tmp_path / "ws", "ada")
    at.text_area(key="cur_guidelines").input("**Reject** every counterfactual that cites *opacity*.")
    at.button(key="cur_save_guidelines").click().run()
    assert not at.exception
    assert curation.guidelines(ws.store).startswith("**Reject** every")
    assert any("cites *opacity*" in md.value for md in at.markdown)
    at.number_input(key="cur_k").set_value(2)
    at.button(key="cur_set_k").click().run()
    assert set(curation.queue(ws.store)["required"]) == {2}
    assert "needs 2 decision(s)" in " ".join(c.value for c in at.caption)


def test_an_unusable_workspace_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    at = page(tmp_path / "file", "ada")
    assert not at.exception
    assert "workspace must be a folder" in at.error[0].value


def test_the_worlds_example_files_import_in_one_click_and_a_tiny_export_says_so(tmp_path, sample_world):
    at = page(tmp_path / "ws", "ada")
    labels = at.selectbox(key="cur_example").options
    names = ["ccf_example.json", "swift_pairs.json", "trl_pairs.jsonl"]
    assert [o.split(" · ")[0] for o in labels] == names and "TRL preference JSONL" in labels[2]
    for name in names:  # the same six pairs in three formats: the later imports are duplicates
        at.selectbox(key="cur_example").set_value(sample_world / "examples" / name)
        at.button(key="cur_import_example").click().run()
        assert not at.exception and not at.error
        assert f"Imported {name}" in at.success[0].value and "kept" in at.success[0].value
    ws = Workspace.open(tmp_path / "ws")
    assert len(curation.queue(ws.store, curation.QueueFilter())) == 6
    at.checkbox(key="cur_export_pending").check()
    at.button(key="cur_export").click().run()
    assert not at.exception and any("Only 6 pairs" in w.value for w in at.warning)


def test_example_files_are_the_same_pairs_in_each_format(sample_world):
    from core.io import formats
    from workbench.demo.examples import FILES

    parsed = {fmt: formats.parse(formats.read_text(sample_world / "examples" / name), name) for fmt, name in FILES.items()}
    assert {p.format for p in parsed.values()} == set(FILES) and all(not p.errors for p in parsed.values())
    chosen = {fmt: sorted((x.prompt, x.chosen, x.rejected) for x in p.pairs) for fmt, p in parsed.items()}
    assert len(chosen["trl"]) == 6 and chosen["trl"] == chosen["swift"] == chosen["ccf"]


def test_the_page_curates_the_open_worlds_items_and_lists_those_of_no_world(tmp_path):
    """Two worlds' items and a pre-worlds import in one workspace: the page shows the open world's, every world's
    only on the toggle, and places the worldless ones in the open world only when asked."""
    ws = Workspace.open(tmp_path / "ws")
    snapshots.import_file(ws.store, write_ccf(tmp_path / "a.json", n=2), world=WORLD)
    snapshots.import_file(ws.store, write_ccf(tmp_path / "b.json", n=3, offset=5), world=str(tmp_path / "swift-run"))
    snapshots.import_file(ws.store, write_ccf(tmp_path / "old.json", n=1, offset=9))  # of no known world
    at = page(tmp_path / "ws", "ada")
    assert not at.exception
    assert "0 of 2 settled" in at.get("progress")[0].proto.text  # this world's two, not the other world's
    assert any("Annotators and items of this world only" in c.value for c in at.caption)  # the Agreement tab too
    at.toggle(key="cur_every_world").set_value(True).run()
    assert "0 of 6 settled" in at.get("progress")[0].proto.text and "every world" in " ".join(c.value for c in at.caption)
    assert any(c.value == "Annotators and items of every world." for c in at.caption)
    at.toggle(key="cur_every_world").set_value(False).run()
    at.multiselect(key="cur_assign_sources").set_value(["old.json"]).run()
    at.button(key="cur_assign").click().run()
    assert not at.exception and "0 of 3 settled" in at.get("progress")[0].proto.text
    for i in curation.queue(ws.store, curation.QueueFilter(world=WORLD))["id"]:
        curation.annotate(ws.store, int(i), "ada", "accept")
    at.run()
    at.button(key="cur_export").click().run()
    snap = snapshots.snapshots(ws.store)[0]
    assert snap.row_count == 3 and snap.world == WORLD  # the other world's pairs stay out of this world's export
