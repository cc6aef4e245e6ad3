"""The concept graph as versions in the workspace database: history, undo / redo, diff, restore.

    gs = GraphStore.open(ws.store, world.graph_path)    # first open: the world's file becomes version 1
    g, v = gs.graph(), gs.head()
    v = gs.edit({"op": "add_node", "id": "pleural fluid", "kind": "finding"}, base=v)
    v = gs.undo(base=v); v = gs.redo(base=v)
    gs.diff(1, v).rows(); gs.restore(1, base=v)

Every version is immutable and holds a full snapshot; ``head`` points at the current one. Undo moves the
head to the version the current one was made from and remembers it for redo; a new edit, import or
restore clears the redo stack. The world's file is never written: export is the user's choice.

Optimistic concurrency: every change names the version it was based on (``base``, the version the
browser tab shows). Inside one ``BEGIN IMMEDIATE`` transaction the store checks that the head is still
``base``; if another tab moved it, the change is refused with ``ConflictError`` and nothing is written,
so two tabs never overwrite each other's edit silently.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from core.errors import InputError
from core.graph import concepts
from core.io.paths import expand
from core.io.store import Store


class ConflictError(InputError):
    """The graph moved on since the caller loaded it; the change was not applied."""


@dataclass(frozen=True)
class Version:
    version: int
    parent: int | None
    summary: str
    op: dict
    created_at: float
    is_head: bool


@dataclass
class GraphStore:
    store: Store
    key: str

    @classmethod
    def open(cls, store: Store, path: str | Path) -> "GraphStore":
        """The versioned graph of the file at ``path``; version 1 is the file itself, read once."""
        path = expand(path).resolve()
        gs = cls(store, str(path))
        if gs._head() is None:
            graph = concepts.load_graph(path)  # InputError names the file when it is broken
            with store.transaction() as con:
                if _head(con, gs.key) is None:  # another tab may have won the race
                    _insert(con, gs.key, 1, None, f"opened {path.name}", {"op": "open", "file": str(path)}, graph)
        return gs

    def _head(self) -> int | None:
        with self.store.lock:  # reads share the app's one connection: never inside another thread's write
            return _head(self.store.con, self.key)

    def head(self) -> int:
        head = self._head()
        if head is None:
            raise InputError(f"{self.key}: no versions stored")
        return head

    def graph(self, version: int | None = None) -> nx.DiGraph:
        """The graph at ``version`` (the head when None)."""
        version = self.head() if version is None else version
        row = self.store.query_one("SELECT data FROM graph_versions WHERE graph_key = ? AND version = ?",
                                   (self.key, version))
        if row is None:
            raise InputError(f"{self.key}: no version {version} (versions 1-{self.latest()})")
        return concepts.from_node_link(json.loads(row[0]), f"{self.key} version {version}")

    def latest(self) -> int:
        return self.store.query_one("SELECT MAX(version) FROM graph_versions WHERE graph_key = ?", (self.key,))[0] or 0

    def history(self) -> list[Version]:
        """Every version, newest first."""
        head = self._head()
        rows = self.store.query("SELECT version, parent, summary, op, created_at FROM graph_versions "
                                "WHERE graph_key = ? ORDER BY version DESC", (self.key,))
        return [Version(v, p, s, json.loads(o), t, v == head) for v, p, s, o, t in rows]

    def can_undo(self) -> bool:
        row = self.store.query_one("SELECT parent FROM graph_versions WHERE graph_key = ? AND version = ?",
                                   (self.key, self._head()))
        return bool(row and row[0])

    def can_redo(self) -> bool:
        with self.store.lock:
            return bool(self._redo(self.store.con))

    def edit(self, op: dict, base: int) -> int:
        """Apply one edit (``concepts.apply_edit``) to version ``base``; the new version number."""
        new = concepts.apply_edit(self.graph(base), op)
        return self._commit(new, base, concepts.describe_edit(op), op)

    def replace(self, graph: nx.DiGraph, base: int, summary: str) -> int:
        """Store a whole graph (an import) as the next version after ``base``."""
        concepts.raise_if_invalid(graph, summary)
        return self._commit(graph, base, summary, {"op": "import", "summary": summary})

    def restore(self, version: int, base: int) -> int:
        """A new version equal to the old ``version`` (history is kept, nothing is deleted)."""
        return self._commit(self.graph(version), base, f"restore version {version}", {"op": "restore", "version": version})

    def undo(self, base: int) -> int:
        with self.store.transaction() as con:
            head = self._check(con, base)
            parent = con.execute("SELECT parent FROM graph_versions WHERE graph_key = ? AND version = ?",
                                 (self.key, head)).fetchone()[0]
            if parent is None:
                raise InputError("nothing to undo: this is the first version")
            self._move(con, parent, self._redo(con) + [head])
            return parent

    def redo(self, base: int) -> int:
        with self.store.transaction() as con:
            self._check(con, base)
            stack = self._redo(con)
            if not stack:
                raise InputError("nothing to redo")
            self._move(con, stack[-1], stack[:-1])
            return stack[-1]

    def diff(self, a: int, b: int) -> concepts.GraphDiff:
        return concepts.diff_graphs(self.graph(a), self.graph(b))

    def _commit(self, graph: nx.DiGraph, base: int, summary: str, op: dict) -> int:
        with self.store.transaction() as con:
            self._check(con, base)
            version = con.execute("SELECT MAX(version) FROM graph_versions WHERE graph_key = ?",
                                  (self.key,)).fetchone()[0] + 1
            _insert(con, self.key, version, base, summary, op, graph)
            return version

    def _check(self, con, base: int) -> int:
        head = _head(con, self.key)
        if head != base:
            raise ConflictError(f"the concept graph changed while you were editing: your change was based on "
                                f"version {base}, but version {head} is now current (another tab or user saved "
                                "it). Nothing was applied; load the current version and make your change again.")
        return head

    def _redo(self, con) -> list[int]:
        row = con.execute("SELECT redo FROM graph_heads WHERE graph_key = ?", (self.key,)).fetchone()
        return json.loads(row[0]) if row else []

    def _move(self, con, head: int, redo: list[int]) -> None:
        con.execute("UPDATE graph_heads SET head = ?, redo = ? WHERE graph_key = ?", (head, json.dumps(redo), self.key))


def _head(con, key: str) -> int | None:
    row = con.execute("SELECT head FROM graph_heads WHERE graph_key = ?", (key,)).fetchone()
    return row[0] if row else None


def _insert(con, key: str, version: int, parent: int | None, summary: str, op: dict, graph: nx.DiGraph) -> None:
    """Add a version and make it the head; a new version clears the redo stack."""
    data = json.dumps(concepts.to_node_link(graph), ensure_ascii=False)
    con.execute("INSERT INTO graph_versions (graph_key, version, parent, summary, op, data, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (key, version, parent, summary, json.dumps(op), data, time.time()))
    con.execute("INSERT INTO graph_heads (graph_key, head, redo) VALUES (?, ?, '[]') "
                "ON CONFLICT(graph_key) DO UPDATE SET head = excluded.head, redo = '[]'", (key, version))
