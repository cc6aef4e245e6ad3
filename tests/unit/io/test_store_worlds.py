"""Migration 7 -> 8 (issue 24): a workspace database written by the workbench before worlds, with two researchers'
runs registered as worlds (a TRL run and an ms-swift run) and an imported CCF file, takes each item's world from
its source, lists what cannot be told (never guessed), and loses nothing."""

import shutil
import sqlite3
from pathlib import Path

from core.counterfactuals.store import assign_world, list_counterfactuals, worldless
from core.curation import queue as curation
from core.io import store as store_module
from core.io.hashing import trajectory_hash
from core.io.store import Store

SCHEMA7 = Path(__file__).resolve().parents[2] / "data" / "workbench-schema7.db"
TRL, SWIFT = "/home/researcher/ws/worlds/trl-run", "/home/researcher/ws/worlds/swift-run"


def test_a_schema7_workspace_with_two_worlds_migrates_items_into_their_worlds(tmp_path):
    """``tests/data/workbench-schema7.db`` was written by the workbench at schema 7: worlds 'trl-run' and
    'swift-run' registered, graph counterfactuals of each ('<world>:<dataset>'), a CCF import, one annotator's
    decisions, a snapshot 'mixed' of every world's pairs and a CPO run of the TRL world on it."""
    path = tmp_path / "workbench.db"
    shutil.copyfile(SCHEMA7, path)
    con = sqlite3.connect(path)
    tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    before = {t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}
    assert con.execute("PRAGMA user_version").fetchone() == (7,)
    con.close()
    db = Store.open(path)
    assert db.schema_version == store_module.SCHEMA_VERSION
    for t in tables:  # nothing lost: every old column as it was, but the recomputed content hashes
        columns = [r[1] for r in db.query(f"PRAGMA table_info({t})") if r[1] not in ("world", "meta", "content_hash")]
        assert db.query(f"SELECT {', '.join(columns)} FROM {t} ORDER BY rowid") == [
            tuple(v for v, c in zip(row, [r[1] for r in db.query(f"PRAGMA table_info({t})")], strict=False)
                  if c in columns) for row in before[t]], t
    worlds = dict(db.query("SELECT source, world FROM trajectories"))
    assert worlds == {"trl-run:train": TRL, "swift-run:test": SWIFT, "ccf_example.json": ""}
    for id_, prompt, completion, world, h in db.query("SELECT id, prompt, completion, world, content_hash "
                                                      "FROM trajectories"):
        assert h == trajectory_hash(prompt, completion, (), None, world), id_  # the identity takes the world in
    listed = worldless(db)
    assert listed.to_dict("records") == [{"source": "ccf_example.json", "trajectories": 1,
                                          "counterfactuals": int(listed["counterfactuals"][0])}]
    trl = curation.queue(db, curation.QueueFilter(world=TRL))
    assert len(trl) and set(trl["source"]) == {"trl-run:train"}  # the TRL world's queue holds only its items
    assert db.query("SELECT world FROM dataset_snapshots") == [(TRL,)]  # the world of the one run that names it
    n = len(list_counterfactuals(db, world=SWIFT))
    assert assign_world(db, SWIFT, ["ccf_example.json"]) == (1, 0)  # the user's explicit choice
    assert worldless(db).empty and len(list_counterfactuals(db, world=SWIFT)) > n
    assert db.query("SELECT COUNT(*) FROM annotations") == [(len(before["annotations"]),)]
