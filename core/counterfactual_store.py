"""Counterfactuals in the workspace database, with their provenance, and batch generation over a dataset.

    for p in generate_batch(ws.store, graph, records, "sample_data:test", mode="confusable", graph_version=3):
        print(p.done, p.total, p.stored)        # stop iterating to cancel: what was stored stays stored
    list_counterfactuals(ws.store).sort_values("consistency")

Each trajectory and its counterfactuals are written in one transaction (migration 2's tables). Content
hashes deduplicate: generating the same counterfactual twice stores it once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import networkx as nx
import pandas as pd

from core.counterfactual import Counterfactual, choose_targets, make_counterfactuals, true_disease
from core.hashing import content_hash
from core.store import Store


def trajectory_hash(prompt: str, completion: str) -> str:
    """``trajectories.content_hash``: ``core.hashing.content_hash`` of prompt and completion (migration 6)."""
    return content_hash(prompt, completion)


def counterfactual_hash(trajectory: str, target: str, completion: str) -> str:
    """``counterfactuals.content_hash``: ``content_hash`` of the trajectory's hash, target and completion."""
    return content_hash(trajectory, target, completion)


def store_counterfactuals(store: Store, record: dict, source: str, cfs: list[Counterfactual]) -> list[int]:
    """Store the trajectory (once) and its counterfactuals (once each); their row ids, in order."""
    traj_hash = trajectory_hash(record["prompt"], record["completion"])
    now = time.time()
    ids = []
    with store.transaction() as con:
        con.execute("INSERT INTO trajectories (content_hash, source, external_id, prompt, completion, label, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(content_hash) DO NOTHING",
                    (traj_hash, source, record.get("id"), record["prompt"], record["completion"], record.get("label"), now))
        traj_id = con.execute("SELECT id FROM trajectories WHERE content_hash = ?", (traj_hash,)).fetchone()[0]
        for cf in cfs:
            h = counterfactual_hash(traj_hash, cf.target, cf.completion)
            con.execute("INSERT INTO counterfactuals (trajectory_id, content_hash, target, completion, method, "
                        "graph_version, model, settings, consistency, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(content_hash) DO NOTHING",
                        (traj_id, h, cf.target, cf.completion, cf.method, cf.graph_version, cf.model,
                         json.dumps(cf.settings, ensure_ascii=False), cf.consistency.score, now))
            ids.append(con.execute("SELECT id FROM counterfactuals WHERE content_hash = ?", (h,)).fetchone()[0])
    return ids


def list_counterfactuals(store: Store, source: str | None = None) -> pd.DataFrame:
    """Stored counterfactuals with their trajectory, one row each, least consistent first."""
    sql = ("SELECT c.id, t.source, t.external_id AS trajectory, t.label, c.target, c.method, c.graph_version, "
           "c.model, c.consistency, c.created_at, t.completion AS original, c.completion AS counterfactual, "
           "c.settings FROM counterfactuals c JOIN trajectories t ON t.id = c.trajectory_id")
    params: tuple = ()
    if source is not None:
        sql, params = sql + " WHERE t.source = ?", (source,)
    columns, rows = store.query_columns(sql + " ORDER BY c.consistency ASC, c.id ASC", params)
    return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class BatchProgress:
    done: int  # trajectories processed
    total: int
    stored: int  # counterfactual rows written so far (duplicates of stored ones not counted twice)
    last: str | None  # id of the trajectory just processed


def generate_batch(store: Store, graph: nx.DiGraph, records: list[dict], source: str, mode: str,
                   target: str | None = None, method: str = "graph", graph_version: int | None = None,
                   expert=None) -> Iterator[BatchProgress]:
    """Generate and store counterfactuals record by record, yielding progress after each one.

    Cancel by no longer iterating (``break``, or ``close()`` the generator): every record finished so far
    is stored, the current one is not half-written.
    """
    stored: set[int] = set()
    for i, rec in enumerate(records):
        targets = choose_targets(graph, true_disease(rec), mode, target)
        cfs = make_counterfactuals(graph, rec, targets, method, graph_version, expert) if targets else []
        stored.update(store_counterfactuals(store, rec, source, cfs) if cfs else [])
        yield BatchProgress(i + 1, len(records), len(stored), rec.get("id"))
