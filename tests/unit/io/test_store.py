"""The workspace database: migrations, WAL, transactions, and refusal of files it must not touch."""

import sqlite3
import threading

import pytest

from core.errors import WorkspaceError
from core.io import store
from core.io.store import Store
from core.workspace.workspace import Workspace


def test_new_database_is_migrated_to_the_latest_schema_in_wal_mode(tmp_path):
    db = Store.open(tmp_path / "w.db")
    assert db.schema_version == store.SCHEMA_VERSION >= 1
    assert db.con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"worlds", "meta"} <= tables


def test_reopening_keeps_data_and_does_not_rerun_migrations(tmp_path):
    db = Store.open(tmp_path / "w.db")
    db.register_world("w", tmp_path / "world", "abc")
    db.close()
    again = Store.open(tmp_path / "w.db")
    assert again.last_world() == tmp_path / "world"
    assert again.schema_version == store.SCHEMA_VERSION


def test_failed_transaction_rolls_back(tmp_path):
    db = Store.open(tmp_path / "w.db")
    with pytest.raises(RuntimeError):
        with db.transaction() as con:
            con.execute("INSERT INTO meta VALUES ('k', 'v')")
            raise RuntimeError("crash mid-write")
    assert db.con.execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 0


def test_corrupt_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "workbench.db"
    junk = b"this is not a database" * 100
    path.write_bytes(junk)
    with pytest.raises(WorkspaceError, match="workbench.db.*not a usable SQLite database"):
        Store.open(path)
    assert path.read_bytes() == junk


def test_database_from_a_newer_workbench_is_refused(tmp_path):
    path = tmp_path / "w.db"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 5}")
    con.close()
    with pytest.raises(WorkspaceError, match="newer than this workbench"):
        Store.open(path)


def test_concurrent_writers_lose_nothing(tmp_path):
    Store.open(tmp_path / "w.db").close()

    def writer(k):
        db = Store.open(tmp_path / "w.db")
        for i in range(50):
            with db.transaction() as con:
                con.execute("INSERT INTO meta VALUES (?, ?)", (f"{k}-{i}", "v"))
        db.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Store.open(tmp_path / "w.db").con.execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 200


def test_workspace_creates_its_folders_and_database(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    assert ws.cache_dir.is_dir() and ws.runs_dir.is_dir()
    assert (tmp_path / "ws" / "workbench.db").is_file()


def test_workspace_on_a_path_that_cannot_be_a_folder_names_the_path(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(WorkspaceError, match="afile"):
        Workspace.open(blocker)
    with pytest.raises(WorkspaceError, match="not writable"):
        Workspace.open(blocker / "sub")


def test_someone_elses_sqlite_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / "workbench.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(WorkspaceError, match="did not create"):
        Store.open(path)
    assert path.read_bytes() == before


def test_a_database_with_a_damaged_page_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "workbench.db"
    db = Store.open(path)
    with db.transaction() as con:
        con.executemany("INSERT INTO meta VALUES (?, ?)", [(f"k{i}", "x" * 500) for i in range(200)])
    db.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    raw = bytearray(path.read_bytes())
    page = 4096
    assert len(raw) > 5 * page
    raw[3 * page:4 * page] = bytes((i * 37 + 11) % 256 for i in range(page))  # page 4: garbage
    path.write_bytes(bytes(raw))
    with pytest.raises(WorkspaceError, match="workbench.db: the database is damaged"):
        Store.open(path)
    assert path.read_bytes() == bytes(raw)


def test_an_empty_database_file_becomes_a_new_workspace_and_says_so(tmp_path):
    path = tmp_path / "workbench.db"
    path.write_bytes(b"")
    db = Store.open(path)
    assert db.schema_version == store.SCHEMA_VERSION
    assert "empty file (0 bytes); a new workspace database was started" in db.notice
    db.close()
    assert Store.open(path).notice is None


def test_a_read_only_database_is_refused_untouched_and_read_only_writes_are_named(tmp_path):
    import os
    import subprocess

    path = tmp_path / "workbench.db"
    Store.open(path).close()
    before = path.read_bytes()
    immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    if not immutable:
        os.chmod(path, 0o444)
    try:
        if os.access(path, os.W_OK):
            pytest.skip("cannot make a file read-only for this user (root without chattr)")
        with pytest.raises(WorkspaceError, match="workbench.db: the database file is read-only"):
            Store.open(path)
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        os.chmod(path, 0o644)
    assert path.read_bytes() == before
    ro = Store(path, sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None))
    with pytest.raises(WorkspaceError, match="read-only.*nothing was written"):
        ro.register_world("w", tmp_path, "abc")


def test_old_nul_joined_hashes_are_recomputed_and_no_longer_collide(tmp_path):
    import hashlib

    from core.counterfactuals.store import counterfactual_hash, trajectory_hash

    assert trajectory_hash("A\0B", "C") != trajectory_hash("A", "B\0C")
    assert counterfactual_hash("h", "T\0x", "y") != counterfactual_hash("h", "T", "x\0y")
    path = tmp_path / "w.db"
    db = Store.open(path)
    old = hashlib.sha256(b"p\0c").hexdigest()
    with db.transaction() as con:  # a row as workbench schema 5 stored it
        con.execute("INSERT INTO trajectories (content_hash, source, prompt, completion, created_at) "
                    "VALUES (?, 's', 'p', 'c', 0)", (old,))
        con.execute("INSERT INTO counterfactuals (trajectory_id, content_hash, target, completion, method, created_at) "
                    "VALUES (1, ?, 'T', 'x', 'graph', 0)", (hashlib.sha256(f"{old}\0T\0x".encode()).hexdigest(),))
        con.execute("PRAGMA user_version = 5")
    db.close()
    db = Store.open(path)
    assert db.schema_version == store.SCHEMA_VERSION
    [(th,)], [(ch,)] = db.query("SELECT content_hash FROM trajectories"), db.query("SELECT content_hash FROM counterfactuals")
    assert th == trajectory_hash("p", "c") and ch == counterfactual_hash(th, "T", "x")
