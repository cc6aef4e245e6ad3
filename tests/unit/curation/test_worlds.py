"""Curation with two worlds in one workspace (issue 24): a TRL run's conversational pairs imported into one world,
a CCF file with study identifiers into another; each world's queue, filters, conflicts, exports and snapshots
hold its own items only, and a CCF export keeps dicom_id, sid and pid."""

import json
import random

import pytest

from core.curation import queue as curation
from core.curation import snapshots
from core.curation.snapshots import ExportConfig
from core.errors import InputError
from core.io.store import Store
from tests import foreign
from tests.curation_data import ccf_items

TRL, CCF = "/ws/worlds/trl-run", "/ws/worlds/ccf-world"


def trl_pairs(path):
    """The foreign TRL run's conversations as a TRL preference file (system turn kept): each study's answer argued
    for each other disease, 3 studies x 2 = 6 pairs."""
    lines = []
    for label in sorted(foreign.DISEASES):
        rng = random.Random(0)
        conv = next(c for c in (foreign.conversation(rng, i) for i in range(50))
                    if c["messages"][2]["content"].endswith(f"{label}."))["messages"]
        for other in sorted(set(foreign.DISEASES) - {label}):
            lines.append({"prompt": conv[:2], "chosen": [conv[2]],
                          "rejected": [{"role": "assistant", "content": conv[2]["content"].replace(label, other)}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


@pytest.fixture
def db(tmp_path):
    db = Store.open(tmp_path / "workbench.db")
    snapshots.import_file(db, trl_pairs(tmp_path / "trl_pairs.jsonl"), world=TRL)
    items = ccf_items(n=3)
    for i, item in enumerate(items):
        item |= {"dicom_id": f"dcm-{i}", "sid": f"s{i}", "pid": 100 + i}
    (tmp_path / "ccf.json").write_text(json.dumps(items))
    snapshots.import_file(db, tmp_path / "ccf.json", world=CCF)
    return db


def test_each_world_curates_and_exports_its_own_pairs(db, tmp_path):
    trl, ccf = (curation.queue(db, curation.QueueFilter(world=w)) for w in (TRL, CCF))
    assert len(trl) == 6 and len(ccf) == 3 and set(trl["id"]).isdisjoint(ccf["id"])
    assert len(curation.queue(db)) == 9  # every world's: only when asked for
    assert set(curation.filter_options(db, TRL)["labels"]) <= set(foreign.DISEASES)
    assert db.query("SELECT DISTINCT system FROM trajectories WHERE world = ?", (TRL,)) == [(foreign.SYSTEM,)]
    assert [b["name"] for b in snapshots.import_batches(db, CCF)] == ["ccf.json"]
    assert curation.claim_next(db, "ada", curation.QueueFilter(world=CCF)) in set(ccf["id"])
    for i in curation.queue(db)["id"]:
        curation.annotate(db, int(i), "ada", "accept")
    snap = snapshots.export_snapshot(db, tmp_path / "datasets", ExportConfig("ccf", name="ccf-only"), world=CCF)
    items = json.loads((snap.path / "train.json").read_text()) if (snap.path / "train.json").is_file() else None
    items = items or [json.loads(x) for x in (snap.path / "train.jsonl").read_text().splitlines()]
    assert snap.row_count == 3 and snap.world == CCF
    assert sorted((it["dicom_id"], it["sid"], it["pid"]) for it in items) == [
        ("dcm-0", "s0", 100), ("dcm-1", "s1", 101), ("dcm-2", "s2", 102)]  # matched to its image folder again
    trl_snap = snapshots.export_snapshot(db, tmp_path / "datasets", ExportConfig("trl", name="trl-only"), world=TRL)
    rows = [json.loads(x) for x in (trl_snap.path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(set(r["label"] for r in rows) <= set(foreign.DISEASES) for r in rows)
    assert [s.name for s in snapshots.snapshots(db, TRL)] == ["trl-only"]
    assert {s.name for s in snapshots.snapshots(db)} == {"trl-only", "ccf-only"}


def test_conflicts_are_the_worlds_own(db):
    curation.set_required(db, 2)  # an agreement study: two decisions per item (a second can't decide a k=1 item)
    for world in (TRL, CCF):
        first = int(curation.queue(db, curation.QueueFilter(world=world))["id"].iloc[0])
        curation.annotate(db, first, "ada", "accept")
        curation.annotate(db, first, "bo", "reject")
    assert set(curation.conflicts(db, TRL)["id"]) < set(curation.queue(db, curation.QueueFilter(world=TRL))["id"])
    assert len(curation.conflicts(db)) == 4 and len(curation.conflicts(db, CCF)) == 2


def test_the_curation_trajectories_to_score_are_the_worlds_own(db, tmp_path):
    """The Checkpoints page's *Curation database* data: the open world's studies, not every world's."""
    from core.curation.scored import trajectories_file

    def ids(path):
        return [json.loads(x)["prompt"] for x in path.read_text().splitlines()]
    trl, ccf, both = (trajectories_file(db, tmp_path, w) for w in (TRL, CCF, None))
    assert len(ids(trl)) == 3 and len(ids(ccf)) == 3 and sorted(ids(both)) == sorted(ids(trl) + ids(ccf))
    assert trajectories_file(db, tmp_path, TRL) == trl  # the same rows: the same file


def test_agreement_counts_the_worlds_own_annotators_and_items(db):
    """The Agreement tab of a world: its annotators and items only (issue 24: it counted every world's)."""
    curation.set_required(db, 2)
    trl = [int(i) for i in curation.queue(db, curation.QueueFilter(world=TRL))["id"]]
    ccf = [int(i) for i in curation.queue(db, curation.QueueFilter(world=CCF))["id"]]
    for item, (a, b) in zip(trl[:4], [("accept", "accept"), ("accept", "reject"), ("reject", "reject"),
                                       ("reject", "reject")], strict=True):
        curation.annotate(db, item, "ada", a)
        curation.annotate(db, item, "bo", b)
    for item in ccf:  # another world's study: other annotators, who always disagree
        curation.annotate(db, item, "cy", "accept")
        curation.annotate(db, item, "dee", "reject")
    mine = curation.agreement(db, TRL)
    assert mine.pairs[["annotator_a", "annotator_b", "items"]].values.tolist() == [["ada", "bo", 4]]
    assert mine.items == 4 and mine.light == pytest.approx(0.5)  # p_o 0.75, p_e 0.5
    theirs = curation.agreement(db, CCF)
    assert theirs.pairs[["annotator_a", "annotator_b", "items"]].values.tolist() == [["cy", "dee", 3]]
    every = curation.agreement(db)  # every world's: only when the page's toggle asks for it
    assert every.items == 7 and len(every.pairs) == 2
    assert curation.agreement(db, "").items == 0  # items of no known world: none here


def test_the_same_pairs_exported_in_two_worlds_are_each_worlds_snapshot(tmp_path):
    """One TRL file imported into two worlds and exported from each: the same content, each world's own snapshot
    under its own default name (the second was recorded as the first world's, so its runs page offered nothing
    while the page said it would); one name given in two worlds is refused by name."""
    db = Store.open(tmp_path / "workbench.db")
    pairs = trl_pairs(tmp_path / "trl_pairs.jsonl")
    for world in (TRL, CCF):
        snapshots.import_file(db, pairs, world=world)
    for i in curation.queue(db)["id"]:
        curation.annotate(db, int(i), "ada", "accept")
    a, b = (snapshots.export_snapshot(db, tmp_path / "ds", ExportConfig("trl"), world=w) for w in (TRL, CCF))
    assert a.content_hash == b.content_hash and a.name != b.name and (a.world, b.world) == (TRL, CCF)
    assert [s.name for s in snapshots.snapshots(db, CCF)] == [b.name]
    snapshots.export_snapshot(db, tmp_path / "ds", ExportConfig("trl", name="shared"), world=TRL)
    with pytest.raises(InputError, match="'shared' is another world's"):
        snapshots.export_snapshot(db, tmp_path / "ds", ExportConfig("trl", name="shared"), world=CCF)
