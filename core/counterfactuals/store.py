"""Counterfactuals in the workspace database, with their provenance, and batch generation over a dataset.

    for p in generate_batch(ws.store, graph, records, "sample_data:test", mode="confusable", graph_version=3):
        print(p.done, p.total, p.stored)        # stop iterating to cancel: what was stored stays stored
    list_counterfactuals(ws.store).sort_values("consistency")

Each trajectory and its counterfactuals are written in one transaction (migration 2's tables). Content
hashes deduplicate: generating the same counterfactual twice stores it once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pandas as pd

from core.counterfactuals.rewrite import (
    Counterfactual,
    choose_targets,
    make_counterfactuals,
    true_disease,
)
from core.errors import InputError
from core.io.hashing import counterfactual_hash, trajectory_hash
from core.io.images import content_hash as image_hash
from core.io.store import Store, rehash_trajectory
from core.io.trajectories import system_of


def hashed_images(images: list[str] | tuple[str, ...] | None, where: str = "trajectory") -> tuple[list[str], list[str]]:
    """(absolute paths, content hashes) of a record's images; ``InputError`` names ``where`` and the path of a
    missing or unreadable file."""
    paths, hashes = [], []
    for i, image in enumerate(images or []):
        path = Path(image).expanduser()
        if not path.is_absolute():
            raise InputError(f"{where}, images[{i}]: expected an absolute image path, got {image!r}")
        try:
            hashes.append(image_hash(path))
        except OSError as e:
            raise InputError(f"{where}, images[{i}]: cannot read image {path} ({e.strerror or e})") from None
        paths.append(str(path))
    return paths, hashes


def insert_trajectory(con: sqlite3.Connection, prompt: str, completion: str, source: str, now: float,
                      external_id: str | None = None, label: str | None = None,
                      system: str | None = None, images: list[str] | None = None,
                      image_hashes: list[str] | None = None, world: str = "",
                      meta: dict | None = None) -> tuple[int, str]:
    """Store a trajectory once (by content hash: text, images, system turn, world) in the caller's transaction; its
    row id and hash. ``images``: absolute paths (hashed here unless ``image_hashes`` gives their hashes, in the same
    order); ``world``: the world it belongs to (``World.key``; '' for none); ``meta``: its source record's other
    identifiers (a CCF item's dicom_id, sid, pid), kept for the export.

    The one INSERT into ``trajectories``: generated counterfactuals and imported pairs both come here."""
    paths, hashes = (list(images or []), list(image_hashes)) if image_hashes is not None else hashed_images(images)
    h = trajectory_hash(prompt, completion, hashes, system, world)
    con.execute("INSERT INTO trajectories (content_hash, source, external_id, prompt, completion, label, system, "
                "images, image_hashes, world, meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(content_hash) DO NOTHING",
                (h, source, external_id, prompt, completion, label, system, json.dumps(paths), json.dumps(hashes),
                 world, json.dumps(meta or {}, ensure_ascii=False, sort_keys=True), now))
    return con.execute("SELECT id FROM trajectories WHERE content_hash = ?", (h,)).fetchone()[0], h


def insert_counterfactual(con: sqlite3.Connection, trajectory: tuple[int, str], target: str, completion: str,
                          method: str, now: float, *, settings: str = "{}", graph_version: int | None = None,
                          model: str | None = None, consistency: float | None = None,
                          import_batch_id: int | None = None, required_decisions: int = 1,
                          images: list[str] | None = None, image_hashes: list[str] | None = None) -> tuple[int, bool]:
    """Store a counterfactual of ``trajectory`` (``insert_trajectory``'s id and hash) once, by content hash,
    in the caller's transaction; its row id and whether this call added it. The one INSERT into
    ``counterfactuals`` (defaults as migrations 2 and 4 give them). ``images``: its rejected side's images,
    None for the trajectory's own (a text rewrite); another study's for an image swap."""
    traj_id, traj_hash = trajectory
    own_paths, own_hashes = (json.loads(v) for v in con.execute(
        "SELECT images, image_hashes FROM trajectories WHERE id = ?", (traj_id,)).fetchone())
    if images is None:
        paths, hashes = own_paths, own_hashes
    else:
        paths, hashes = (list(images), list(image_hashes)) if image_hashes is not None else hashed_images(images)
    h = counterfactual_hash(traj_hash, target, completion, () if hashes == own_hashes else hashes)
    added = con.execute(
        "INSERT INTO counterfactuals (trajectory_id, content_hash, target, completion, method, graph_version, model, "
        "settings, consistency, import_batch_id, required_decisions, images, image_hashes, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(content_hash) DO NOTHING",
        (traj_id, h, target, completion, method, graph_version, model, settings, consistency, import_batch_id,
         required_decisions, json.dumps(paths), json.dumps(hashes), now)).rowcount
    return con.execute("SELECT id FROM counterfactuals WHERE content_hash = ?", (h,)).fetchone()[0], added == 1


def store_counterfactuals(store: Store, record: dict, source: str, cfs: list[Counterfactual],
                          world: str = "") -> list[int]:
    """Store the trajectory (once, with its ``images`` and its conversation's system turn, in ``world``) and its
    counterfactuals (once each, with theirs); their row ids, in order."""
    return [id_ for id_, _ in _store(store, record, source, cfs, world)]


def _store(store: Store, record: dict, source: str, cfs: list[Counterfactual], world: str) -> list[tuple[int, bool]]:
    """``store_counterfactuals``, with whether each row is new (False: that counterfactual was stored before)."""
    now = time.time()
    where = f"trajectory {record.get('id')}"
    images = hashed_images(record.get("images"), where)
    swapped = [hashed_images(cf.images, f"{where}, {cf.method} counterfactual for {cf.target}")
               if cf.images != tuple(images[0]) else images for cf in cfs]  # hashed before the transaction
    with store.transaction() as con:
        traj = insert_trajectory(con, record["prompt"], record["completion"], source, now, record.get("id"),
                                 record.get("label"), system_of(record), images=images[0], image_hashes=images[1],
                                 world=world)
        return [insert_counterfactual(con, traj, cf.target, cf.completion, cf.method, now,
                                      settings=json.dumps(cf.settings, ensure_ascii=False),
                                      graph_version=cf.graph_version, model=cf.model,
                                      consistency=None if cf.consistency is None else cf.consistency.score,
                                      images=paths, image_hashes=hashes)
                for cf, (paths, hashes) in zip(cfs, swapped, strict=True)]


def by_consistency(table: pd.DataFrame, lowest_first: bool = True) -> pd.DataFrame:
    """``list_counterfactuals``'s table ordered by consistency (ties by id, stable): the least consistent
    first to review the doubtful ones, or the most consistent first."""
    return table.sort_values(["consistency", "id"], ascending=[lowest_first, True], kind="stable")


def list_counterfactuals(store: Store, source: str | None = None, world: str | None = None) -> pd.DataFrame:
    """Stored counterfactuals with their trajectory, one row each, least consistent first (of ``source`` and of
    ``world`` when given; None: every one); ``images`` is the JSON list of the counterfactual's images (the
    study's own, or the swapped-in one of an image swap)."""
    sql = ("SELECT c.id, t.source, t.external_id AS trajectory, t.label, c.target, c.method, c.graph_version, "
           "c.model, c.consistency, c.created_at, t.completion AS original, c.completion AS counterfactual, "
           "c.settings, c.images FROM counterfactuals c JOIN trajectories t ON t.id = c.trajectory_id WHERE 1 = 1")
    params: list = []
    for column, value in (("t.source", source), ("t.world", world)):
        if value is not None:
            sql += f" AND {column} = ?"
            params.append(value)
    columns, rows = store.query_columns(sql + " ORDER BY c.consistency ASC, c.id ASC", params)
    return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class BatchProgress:
    done: int  # trajectories processed
    total: int
    stored: int  # the batch's counterfactuals so far, each once: new ones and those the database held already
    last: str | None  # id of the trajectory just processed
    skipped: int = 0  # targets left out so far: the rewrite changed no finding (not a counterfactual)
    new: int = 0  # of ``stored``, those this batch added (a rerun over stored studies adds none)

    def summary(self) -> str:
        """What the batch did so far, in words (a job's report; the page shows it when the job ends)."""
        return (f"{self.done} of {self.total} trajectories, {self.stored} counterfactuals stored ({self.new} new, "
                f"{self.stored - self.new} stored before)"
                + (f", {self.skipped} rewrites left out (no finding changed)" if self.skipped else ""))


def generate_batch(store: Store, graph: nx.DiGraph, records: list[dict], source: str, mode: str,
                   target: str | None = None, method: str = "graph", graph_version: int | None = None,
                   expert=None, donors: list[dict] | None = None, world: str = "") -> Iterator[BatchProgress]:
    """Generate and store counterfactuals record by record (into ``world``, a ``World.key``), yielding progress
    after each one. For ``image_swap`` the swapped-in images come from ``donors`` (default: ``records``); records
    without images are passed over. A rewrite that changes no finding is not stored (``skipped`` counts them).

    Cancel by no longer iterating (``break``, or ``close()`` the generator): every record finished so far
    is stored, the current one is not half-written.
    """
    stored: set[int] = set()
    new: set[int] = set()
    skipped: list[str] = []
    for i, rec in enumerate(records):
        targets = choose_targets(graph, true_disease(rec), mode, target)
        if method == "image_swap" and not rec.get("images"):
            targets = []
        cfs = make_counterfactuals(graph, rec, targets, method, graph_version, expert,
                                   records if donors is None else donors, skipped) if targets else []
        rows = _store(store, rec, source, cfs, world) if cfs else []
        stored.update(id_ for id_, _ in rows)
        new.update(id_ for id_, added in rows if added)
        yield BatchProgress(i + 1, len(records), len(stored), rec.get("id"), len(skipped), len(new))


def worldless(store: Store) -> pd.DataFrame:
    """The items of no known world (stored before worlds, from a source no registered world names: an import
    file, a world of another name), one row per source: ``source``, ``trajectories``, ``counterfactuals``. They
    are listed for the user to place (``assign_world``), never guessed into a world."""
    columns, rows = store.query_columns(
        "SELECT t.source, COUNT(DISTINCT t.id) AS trajectories, COUNT(c.id) AS counterfactuals FROM trajectories t "
        "LEFT JOIN counterfactuals c ON c.trajectory_id = t.id WHERE t.world = '' GROUP BY t.source ORDER BY t.source")
    return pd.DataFrame(rows, columns=columns)


def assign_world(store: Store, world: str, sources: list[str]) -> tuple[int, int]:
    """Place the worldless trajectories of ``sources`` (and their counterfactuals, decisions and all) in
    ``world``, the user's explicit choice; (moved, left). One already in that world with the same content stays
    where it was (left, still listed): nothing is merged or deleted."""
    if not world:
        raise InputError("assign to a world: expected a world (its folder), got none")
    moved = left = 0
    with store.transaction() as con:
        ids = [r[0] for r in con.execute(f"SELECT id FROM trajectories WHERE world = '' AND source IN "
                                         f"({', '.join('?' * len(sources))})", list(sources)).fetchall()]
        for id_ in ids:
            con.execute("SAVEPOINT move")
            try:
                con.execute("UPDATE trajectories SET world = ? WHERE id = ?", (world, id_))
                rehash_trajectory(con, id_)
                con.execute("RELEASE move")
                moved += 1
            except sqlite3.IntegrityError:  # the same study (or counterfactual) is in that world already
                con.execute("ROLLBACK TO move")
                con.execute("RELEASE move")
                left += 1
    return moved, left
