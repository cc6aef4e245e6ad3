"""The workspace database: migrations, WAL, transactions, and refusal of files it must not touch."""

import sqlite3
import threading

import pytest

from core import store
from core.errors import WorkspaceError
from core.store import Store
from core.workspace import Workspace


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
