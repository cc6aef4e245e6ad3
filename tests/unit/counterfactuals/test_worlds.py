"""Counterfactuals of a researcher's own run (issue 24): a rewrite that only relabels is no counterfactual,
consistency is scored on what the rewrite contains, the conversation's system turn is stored with the trajectory,
and the same study in two worlds of one workspace is one item in each, listed per world."""

import json
import random

import pytest

from core.counterfactuals.rewrite import changes_findings, consistency, make_counterfactuals
from core.counterfactuals.store import generate_batch, list_counterfactuals, store_counterfactuals
from core.io.hashing import trajectory_hash
from core.io.store import Store
from core.io.trajectories import read_trajectories, system_of
from tests import foreign


@pytest.fixture
def graph():
    """The foreign run's diseases and findings (``tests.foreign.DISEASES``), and a finding that excludes one."""
    g = foreign.concept_graph()
    g.add_node("No Finding", kind="disease", label="No Finding", synonyms=[])
    g.add_node("clear lungs", kind="finding", label="clear lungs", synonyms=[])
    g.add_edge("clear lungs", "No Finding", relation="supports", weight=1.0)
    g.add_edge("clear lungs", "Pneumonia", relation="excludes", weight=1.0)
    return g


@pytest.fixture
def records(tmp_path):
    """The foreign TRL run's conversations (system, user, assistant), read as the workbench reads a dataset."""
    path = tmp_path / "train.jsonl"
    rng = random.Random(0)
    path.write_text("".join(json.dumps(foreign.conversation(rng, i)) + "\n" for i in range(6)))
    return read_trajectories(path)


def test_a_rewrite_that_changes_only_the_answer_is_not_a_counterfactual(graph):
    rec = {"id": "s1", "prompt": "Report: unremarkable.", "label": "Pneumonia",
           "completion": "<think> The patient looks unwell. </think> The disease of this patient is Pneumonia."}
    skipped: list[str] = []
    assert make_counterfactuals(graph, rec, ["Edema", "Pneumothorax"], skipped=skipped) == []
    assert len(skipped) == 2 and all("changes no finding" in s for s in skipped)
    assert not changes_findings(graph, rec["completion"], rec["completion"].replace("Pneumonia", "Edema"))


def test_consistency_is_scored_on_what_the_rewrite_contains(graph):
    original = "<think> consolidation suggests Pneumonia. </think> The disease of this patient is Pneumonia."
    relabelled = "<think> The patient looks unwell. </think> The disease of this patient is Edema."
    c = consistency(graph, relabelled, "Edema", original)
    assert (c.support, c.no_excluded) == (0.0, 0.0) and c.score < 0.67  # no finding: no evidence of consistency
    mixed = "<think> clear lungs, concerning for Pneumonia. </think> The disease of this patient is No Finding."
    c = consistency(graph, mixed, "No Finding", original)
    assert c.others == ("Pneumonia",) and c.no_excluded == 0.0 and c.score < 1.0
    good = "<think> clear lungs suggest No Finding. </think> The disease of this patient is No Finding."
    assert consistency(graph, good, "No Finding", original).score == 1.0


def test_the_system_turn_is_stored_and_part_of_the_identity(graph, records, tmp_path):
    db = Store.open(tmp_path / "w.db")
    rec = records[0]
    assert system_of(rec) == foreign.SYSTEM
    cfs = make_counterfactuals(graph, rec, [t for t in foreign.DISEASES if t != rec["label"]])
    assert cfs and all(cf.consistency.score == 1.0 for cf in cfs)
    store_counterfactuals(db, rec, "trl-run:train", cfs, "/worlds/trl")
    plain = {k: v for k, v in rec.items() if k != "chat"}  # the same study without a system prompt
    store_counterfactuals(db, plain, "trl-run:train", cfs, "/worlds/trl")
    rows = db.query("SELECT system, content_hash FROM trajectories ORDER BY id")
    assert [r[0] for r in rows] == [foreign.SYSTEM, None]  # two items: the prompt is not lost as a "duplicate"
    assert rows[0][1] == trajectory_hash(rec["prompt"], rec["completion"], (), foreign.SYSTEM, "/worlds/trl")
    assert trajectory_hash("p", "c") == trajectory_hash("p", "c", (), None, "")  # older rows keep their hash


def test_two_worlds_in_one_workspace_keep_their_own_counterfactuals(graph, records, tmp_path):
    db = Store.open(tmp_path / "w.db")
    for world, source in (("/worlds/trl", "trl-run:train"), ("/worlds/swift", "swift-run:train")):
        for _ in generate_batch(db, graph, records[:3], source, "all", world=world):
            pass
    a, b = list_counterfactuals(db, world="/worlds/trl"), list_counterfactuals(db, world="/worlds/swift")
    assert len(a) == len(b) > 0 and set(a["id"]).isdisjoint(b["id"])  # the same studies, one item per world
    assert set(a["source"]) == {"trl-run:train"} and len(list_counterfactuals(db)) == len(a) + len(b)


def test_a_batch_over_a_foreign_world_keeps_its_system_turn_into_the_export(foreign_run, tmp_path, graph):
    """The TRL run registered as a world: its batch stores items in that world with the system prompt, and a TRL
    export of them trains on the prompt scoring saw."""
    from core.counterfactuals.batch import BatchConfig, run
    from core.curation import queue as curation
    from core.curation import snapshots
    from core.graph import concepts
    from core.workspace.workspace import Workspace
    from core.workspace.world import create_world

    concepts.save_graph(graph, tmp_path / "graph.json")
    world = create_world(tmp_path / "trl-world", "trl-run", foreign_run["base"], [foreign_run["run"]],
                         [foreign_run["train"]], graph=tmp_path / "graph.json")
    ws = Workspace.open(tmp_path / "ws")
    last = run(BatchConfig(workspace=str(ws.root), world=str(world.root), dataset="train", n=4, mode="all"))
    assert last.stored > 0
    assert ws.store.query("SELECT DISTINCT world, system FROM trajectories") == [(world.key, foreign.SYSTEM)]
    for i in curation.queue(ws.store, curation.QueueFilter(world=world.key))["id"]:
        curation.annotate(ws.store, int(i), "ada", "accept")
    snap = snapshots.export_snapshot(ws.store, ws.datasets_dir, snapshots.ExportConfig("trl"), world=world.key)
    rows = [json.loads(x) for x in (snap.path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == last.stored and {r["system"] for r in rows} == {foreign.SYSTEM}
