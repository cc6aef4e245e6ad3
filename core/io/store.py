"""The workspace's SQLite database: WAL mode, versioned migrations, one transaction per write.

    db = Store.open(Path("~/.cot-drift-workbench/workbench.db").expanduser())
    with db.transaction() as con:
        con.execute("INSERT ...")

The schema version is SQLite's ``PRAGMA user_version``; ``MIGRATIONS[i]`` takes version i to i+1 and
runs in one transaction, so a crash mid-migration leaves the previous version intact. A file that is
not a SQLite database, or one written by a newer workbench, is refused and left untouched.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import WorkspaceError

MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # 0 -> 1: the registry of worlds (a base model, its checkpoint series, data and concept graph).
    """
    CREATE TABLE worlds (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        fingerprint TEXT NOT NULL,
        registered_at REAL NOT NULL,
        last_opened_at REAL NOT NULL
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 1 -> 2: reasoning trajectories and their counterfactuals, shared by the counterfactual generator
    # (writes them) and curation (imports, annotates and exports them). Content hashes deduplicate.
    """
    CREATE TABLE trajectories (
        id INTEGER PRIMARY KEY,
        content_hash TEXT NOT NULL UNIQUE,  -- sha256 of prompt + NUL + completion
        source TEXT NOT NULL,               -- dataset name, file name or import batch name
        external_id TEXT,                   -- the record's id in its source, when it had one
        prompt TEXT NOT NULL,               -- the report and question
        completion TEXT NOT NULL,           -- '<think> ... </think> The disease of this patient is X.'
        label TEXT,                         -- the gold answer (a disease of the concept graph)
        created_at REAL NOT NULL
    );
    CREATE INDEX trajectories_label ON trajectories(label);
    CREATE TABLE counterfactuals (
        id INTEGER PRIMARY KEY,
        trajectory_id INTEGER NOT NULL REFERENCES trajectories(id) ON DELETE CASCADE,
        content_hash TEXT NOT NULL UNIQUE,  -- sha256 of the trajectory's hash + NUL + target + NUL + completion
        target TEXT NOT NULL,               -- the disease the counterfactual argues for
        completion TEXT NOT NULL,           -- counterfactual CoT + answer, same format as the original
        method TEXT NOT NULL,               -- 'graph' | 'llm' | 'import'
        graph_version INTEGER,              -- the concept-graph version it was generated from
        model TEXT,                         -- the model that wrote it (method 'llm')
        settings TEXT NOT NULL DEFAULT '{}',-- JSON: prompt template, sampling settings, import format
        consistency REAL,                   -- graph consistency score in [0, 1]
        created_at REAL NOT NULL
    );
    CREATE INDEX counterfactuals_trajectory ON counterfactuals(trajectory_id);
    CREATE INDEX counterfactuals_target ON counterfactuals(target);
    """,
    # 2 -> 3: versioned concept graphs (core.graph.store). One row per version, each a full node-link
    # snapshot (graphs are small) with the edit that made it. graph_heads holds the current version
    # and the redo stack of each graph. graph_key is the world's graph file, resolved.
    """
    CREATE TABLE graph_versions (
        graph_key TEXT NOT NULL,
        version INTEGER NOT NULL,          -- 1, 2, ... per graph_key
        parent INTEGER,                    -- the version this one was edited from (NULL for version 1)
        summary TEXT NOT NULL,             -- one line for the history
        op TEXT NOT NULL DEFAULT '{}',     -- JSON: the edit, import or restore that made it
        data TEXT NOT NULL,                -- JSON: node-link snapshot of the whole graph
        created_at REAL NOT NULL,
        PRIMARY KEY (graph_key, version)
    );
    CREATE TABLE graph_heads (
        graph_key TEXT PRIMARY KEY,
        head INTEGER NOT NULL,             -- the current version
        redo TEXT NOT NULL DEFAULT '[]'    -- JSON list of versions that redo walks back to, last first
    );
    """,
    # 3 -> 4: curation. Import batches (provenance of imported pairs), annotations (one row per item and
    # annotator, so two tabs or two processes cannot double count a decision), claims (which annotator is
    # looking at which item, so two annotators are not handed the same item when it needs one decision),
    # resolutions of conflicts, guidelines (markdown, every saved version kept) and dataset snapshots
    # (exports a CPO run names). counterfactuals gains its import batch and k, the decisions it needs.
    # trajectories gains an optional system prompt (ms-swift and conversational TRL records carry one).
    """
    CREATE TABLE import_batches (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,                 -- the file name
        format TEXT NOT NULL,               -- 'ccf' | 'trl' | 'swift'
        content_hash TEXT NOT NULL,         -- sha256 of the file's bytes
        kept INTEGER NOT NULL,              -- pairs stored
        duplicates INTEGER NOT NULL,        -- valid pairs already in the database
        skipped INTEGER NOT NULL,           -- invalid records left out (the user chose to keep the valid part)
        errors TEXT NOT NULL DEFAULT '[]',  -- JSON list of the validation messages
        created_at REAL NOT NULL
    );
    ALTER TABLE counterfactuals ADD COLUMN import_batch_id INTEGER REFERENCES import_batches(id);
    ALTER TABLE counterfactuals ADD COLUMN required_decisions INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE trajectories ADD COLUMN system TEXT;
    CREATE TABLE annotations (
        id INTEGER PRIMARY KEY,
        counterfactual_id INTEGER NOT NULL REFERENCES counterfactuals(id) ON DELETE CASCADE,
        annotator TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'edit', 'skip')),
        edited_text TEXT,                   -- the counterfactual completion as edited (decision 'edit')
        note TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (counterfactual_id, annotator)
    );
    CREATE INDEX annotations_annotator ON annotations(annotator);
    CREATE TABLE claims (
        counterfactual_id INTEGER NOT NULL REFERENCES counterfactuals(id) ON DELETE CASCADE,
        annotator TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (counterfactual_id, annotator)
    );
    CREATE TABLE resolutions (
        counterfactual_id INTEGER PRIMARY KEY REFERENCES counterfactuals(id) ON DELETE CASCADE,
        decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'edit')),
        edited_text TEXT,
        resolver TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE TABLE guidelines (
        id INTEGER PRIMARY KEY,
        text TEXT NOT NULL,                 -- markdown, the latest row is in force
        author TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE dataset_snapshots (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,          -- what a CPO run names
        path TEXT NOT NULL,                 -- the export folder
        format TEXT NOT NULL,               -- 'trl' | 'swift' | 'hf' | 'ccf'
        split TEXT NOT NULL,                -- JSON: test fraction, seed and rows per split
        row_count INTEGER NOT NULL,
        content_hash TEXT NOT NULL,         -- sha256 over the folder's files (names and bytes)
        config TEXT NOT NULL,               -- JSON of the export config
        created_at REAL NOT NULL
    );
    """,
    # 4 -> 5: CPO runs (core.cpo.runs). One row per run: its TrainConfig, the data (and curation snapshot) it
    # trains on, the world whose held-out sets evaluate it, its status, the job folder with its log, the
    # cause of a failure and the evaluation of its adapter.
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        objective TEXT NOT NULL,            -- cpo | cpo++ | sft
        config TEXT NOT NULL,               -- JSON: the TrainConfig as saved in the run folder
        data TEXT NOT NULL,                 -- the preference file trained on
        snapshot TEXT,                      -- the curation snapshot it came from, if any
        world TEXT,                         -- the world whose held-out sets evaluate the run
        status TEXT NOT NULL,               -- running | done | failed | cancelled
        job TEXT,                           -- the current job folder (runs/cpo-...)
        output_dir TEXT NOT NULL,
        error TEXT,                         -- why it failed or stopped
        evaluation TEXT,                    -- JSON: accuracy, perturbed_accuracy, flip_rate, ...
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX runs_status ON runs(status);
    """,
    # 5 -> 6: content hashes over a JSON encoding of the fields (core.io.hashing) instead of NUL-joined text,
    # where different field pairs could collide. Recomputed from the stored text.
    lambda con: _rehash(con),  # _rehash is defined below
    # 6 -> 7: images (issue 16). A trajectory keeps the images it was shown with and a counterfactual the images
    # of its rejected side (the trajectory's for a text rewrite, another study's for an image swap): JSON lists
    # of absolute paths, and of the files' content hashes (core.io.images.content_hash) in the same order. Rows
    # stored before read as text-only ('[]').
    lambda con: _add_image_columns(con),
    # 7 -> 8: worlds (issue 24). Every trajectory (and so its counterfactuals), import batch and dataset snapshot
    # belongs to a world (its folder, as the worlds registry names it); '' where it cannot be told. A trajectory
    # keeps the identifiers of its source record (``meta``: a CCF item's dicom_id, sid, pid). Rows take the world
    # of their source (a generated one's source is '<world name>:<dataset>', when exactly one registered world has
    # that name); the rest are listed as of no known world, never guessed. Content hashes take in the world and the
    # system turn (core.io.hashing.trajectory_hash), so the same study is one item per world.
    lambda con: _add_worlds(con),
]
SCHEMA_VERSION = len(MIGRATIONS)


def _write_error(path: Path, e: sqlite3.OperationalError) -> Exception:
    """A write that failed for a reason the user can fix, said plainly (else the error itself)."""
    text = str(e).lower()
    if "disk is full" in text or "disk full" in text:
        return WorkspaceError(f"{path}: disk full; nothing of this change was written. Free some space and retry.")
    if "readonly" in text or "read-only" in text:
        return WorkspaceError(f"{path}: the database is read-only ({e}); nothing was written. Make the file and its "
                              "folder writable, or choose another --workspace.")
    return e


def _rehash(con: sqlite3.Connection) -> None:
    """Migration 5 -> 6: recompute every trajectory's and counterfactual's content hash (``core.io.hashing``)."""
    from core.io.hashing import content_hash

    new = {}
    for id_, prompt, completion in con.execute("SELECT id, prompt, completion FROM trajectories").fetchall():
        new[id_] = content_hash(prompt, completion)
        con.execute("UPDATE trajectories SET content_hash = ? WHERE id = ?", (new[id_], id_))
    rows = con.execute("SELECT id, trajectory_id, target, completion FROM counterfactuals").fetchall()
    for id_, tid, target, completion in rows:
        con.execute("UPDATE counterfactuals SET content_hash = ? WHERE id = ?",
                    (content_hash(new.get(tid, ""), target, completion), id_))


IMAGE_COLUMNS = ("images", "image_hashes")


def _add_image_columns(con: sqlite3.Connection) -> None:
    """Migration 6 -> 7: ``images`` and ``image_hashes`` on trajectories and counterfactuals (a column already
    there is left as it is, so a database rolled back by hand to an older version migrates again)."""
    for table in ("trajectories", "counterfactuals"):
        have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        for column in IMAGE_COLUMNS:
            if column not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT NOT NULL DEFAULT '[]'")


WORLD_TABLES = ("trajectories", "import_batches", "dataset_snapshots")  # a world column each (migration 8)


def _add_worlds(con: sqlite3.Connection) -> None:
    """Migration 7 -> 8: the ``world`` columns, ``trajectories.meta``, each trajectory's world from its source,
    and the content hashes recomputed for the rows whose world or system turn is now part of them."""
    for table, column, default in [*((t, "world", "''") for t in WORLD_TABLES), ("trajectories", "meta", "'{}'")]:
        if column not in {row[1] for row in con.execute(f"PRAGMA table_info({table})")}:  # a rerun leaves it
            con.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT NOT NULL DEFAULT {default}")
    con.execute("CREATE INDEX IF NOT EXISTS trajectories_world ON trajectories(world)")
    by_name: dict[str, list[str]] = {}
    for name, path in con.execute("SELECT name, path FROM worlds").fetchall():
        by_name.setdefault(name, []).append(path)
    for id_, source in con.execute("SELECT id, source FROM trajectories").fetchall():
        paths = by_name.get(source.rpartition(":")[0], []) if ":" in source else []
        if len(paths) == 1:  # a generated item's source names its world; two worlds of one name: not told
            con.execute("UPDATE trajectories SET world = ? WHERE id = ?", (paths[0], id_))
    con.execute("UPDATE dataset_snapshots SET world = (SELECT MIN(r.world) FROM runs r WHERE r.snapshot = "
                "dataset_snapshots.name) WHERE world = '' AND (SELECT COUNT(DISTINCT r.world) FROM runs r WHERE "
                "r.snapshot = dataset_snapshots.name AND r.world IS NOT NULL) = 1")  # the one world its runs named
    _rehash_identities(con)


def _rehash_identities(con: sqlite3.Connection) -> None:
    """Recompute ``content_hash`` of the trajectories with a world or a system turn, and of their counterfactuals."""
    for (id_,) in con.execute("SELECT id FROM trajectories WHERE world != '' OR system IS NOT NULL").fetchall():
        rehash_trajectory(con, id_)


def rehash_trajectory(con: sqlite3.Connection, id_: int) -> str:
    """Recompute the content hash of trajectory ``id_`` from its stored fields (text, images, system turn, world)
    and of its counterfactuals, in the caller's transaction; its new hash (``sqlite3.IntegrityError`` when
    another row has it already: the same item is there)."""
    import json

    from core.io.hashing import counterfactual_hash, trajectory_hash

    prompt, completion, images, system, world = con.execute(
        "SELECT prompt, completion, image_hashes, system, world FROM trajectories WHERE id = ?", (id_,)).fetchone()
    h = trajectory_hash(prompt, completion, json.loads(images), system, world)
    con.execute("UPDATE trajectories SET content_hash = ? WHERE id = ?", (h, id_))
    for cid, target, text, cf_images in con.execute(
            "SELECT id, target, completion, image_hashes FROM counterfactuals WHERE trajectory_id = ?",
            (id_,)).fetchall():
        own = json.loads(cf_images)
        con.execute("UPDATE counterfactuals SET content_hash = ? WHERE id = ?",
                    (counterfactual_hash(h, target, text, () if own == json.loads(images) else own), cid))
    return h


@dataclass
class Store:
    path: Path
    con: sqlite3.Connection
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)  # one connection, many threads

    notice: str | None = None  # something the user should hear about the opening (printed / shown once)

    @classmethod
    def open(cls, path: Path) -> "Store":
        """Open (creating if absent) and migrate the database at ``path``. A read-only file, or one that fails
        ``PRAGMA quick_check``, is refused and left untouched; an empty (0-byte) one becomes a new database,
        and ``notice`` says so."""
        path = Path(path)
        empty = path.is_file() and path.stat().st_size == 0
        if path.exists() and not os.access(path, os.W_OK):
            raise WorkspaceError(f"{path}: the database file is read-only; make it writable (chmod u+w) or choose "
                                 "another --workspace. The file was left untouched.")
        try:
            con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            version = con.execute("PRAGMA user_version").fetchone()[0]
            problems = [r[0] for r in con.execute("PRAGMA quick_check(5)").fetchall()]
        except sqlite3.DatabaseError as e:
            raise WorkspaceError(f"{path}: not a usable SQLite database ({e}). Expected a workbench.db "
                                 "created by this workbench; the file was left untouched.") from None
        if problems != ["ok"]:
            con.close()
            raise WorkspaceError(f"{path}: the database is damaged ({'; '.join(problems)[:300]}); restore it from "
                                 "a backup or choose another --workspace. The file was left untouched.")
        foreign = version == 0 and con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] > 0
        if foreign:
            con.close()
            raise WorkspaceError(f"{path}: a SQLite database that this workbench did not create (schema version 0 "
                                 "with tables in it); choose another --workspace. The file was left untouched.")
        if version > SCHEMA_VERSION:
            con.close()
            raise WorkspaceError(f"{path}: schema version {version} is newer than this workbench supports "
                                 f"({SCHEMA_VERSION}); upgrade the workbench. The file was left untouched.")
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA busy_timeout=30000")
            store = cls(path, con)
            store._migrate(version)
            if empty:
                store.notice = (f"{path} was an empty file (0 bytes); a new workspace database was started in it. "
                                "If it held your work before, restore it from a backup.")
        except sqlite3.OperationalError as e:
            con.close()
            raise WorkspaceError(f"{path}: cannot write the database ({e}); check its permissions") from None
        return store

    def _migrate(self, version: int) -> None:
        for target in range(version, SCHEMA_VERSION):
            step = MIGRATIONS[target]
            with self.transaction() as con:
                if callable(step):  # a migration that computes in Python
                    step(con)
                else:
                    for statement in step.split(";"):
                        if statement.strip():
                            con.execute(statement)
                con.execute(f"PRAGMA user_version = {target + 1}")

    @property
    def schema_version(self) -> int:
        return self.con.execute("PRAGMA user_version").fetchone()[0]

    def query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        """The rows of a read, under the store's lock: one connection serves all of the app's sessions, so a
        read never runs inside another thread's open write transaction (it would see uncommitted rows)."""
        return self.query_columns(sql, params)[1]

    def query_one(self, sql: str, params: tuple | list = ()) -> tuple | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def query_columns(self, sql: str, params: tuple | list = ()) -> tuple[list[str], list[tuple]]:
        """``query`` with the column names."""
        with self.lock:
            cur = self.con.execute(sql, params)
            return [d[0] for d in cur.description], cur.fetchall()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the store's lock; rolled back on any exception,
        including a failed COMMIT. A full disk or a read-only file becomes a ``WorkspaceError`` naming it."""
        with self.lock:
            try:
                self.con.execute("BEGIN IMMEDIATE")
                try:
                    yield self.con
                    self.con.execute("COMMIT")
                except BaseException:
                    if self.con.in_transaction:
                        self.con.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                plain = _write_error(self.path, e)
                if plain is e:
                    raise
                raise plain from e

    def register_world(self, name: str, path: Path, fingerprint: str) -> int:
        now = time.time()
        with self.transaction() as con:
            con.execute(
                "INSERT INTO worlds (name, path, fingerprint, registered_at, last_opened_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET name=excluded.name, fingerprint=excluded.fingerprint, "
                "last_opened_at=excluded.last_opened_at", (name, str(path), fingerprint, now, now))
            return con.execute("SELECT id FROM worlds WHERE path = ?", (str(path),)).fetchone()[0]

    def last_world(self) -> Path | None:
        row = self.query_one("SELECT path FROM worlds ORDER BY last_opened_at DESC LIMIT 1")
        return Path(row[0]) if row else None

    def close(self) -> None:
        self.con.close()
