"""A full disk while saving an analysis, exporting or importing: a message naming the path and "disk full",
nothing partial left. Uses a small tmpfs (needs mount rights; skipped where the machine does not allow it)."""

import subprocess
import uuid
from pathlib import Path

import pytest

from core.curation import snapshots
from core.drift.analysis import Analysis
from core.errors import InputError, WorkspaceError
from core.io.outputs import disk_full_named
from core.io.store import Store
from tests.curation_data import write_ccf


@pytest.fixture
def tiny_disk(tmp_path):
    """A folder on a tmpfs of ``size`` bytes: ``tiny_disk(size) -> Path``; unmounted afterwards."""
    mounts = []

    def make(size: int) -> Path:
        folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN)")
        mounts.append(folder)
        return folder

    yield make
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_saving_an_analysis_on_a_full_disk_names_the_path_and_leaves_nothing(sample_world, tiny_disk):
    analysis = Analysis.load(sample_world / "analysis")
    disk = tiny_disk(256 * 1024)  # the tables need megabytes
    out = disk / "drift"
    with pytest.raises(InputError, match=r"drift: disk full while writing; nothing was written"), disk_full_named(out):
        analysis.save(out)
    assert list(disk.iterdir()) == []  # no partial folder, no temporary one


def test_exporting_on_a_full_disk_names_the_path_and_leaves_nothing(tmp_path, tiny_disk):
    store = Store.open(tmp_path / "w.db")
    snapshots.import_file(store, write_ccf(tmp_path / "ccf.json", n=40, targets_per_item=3))
    disk = tiny_disk(16 * 1024)
    with pytest.raises(InputError, match=r"disk full while writing"):
        snapshots.export_snapshot(store, disk / "exports", snapshots.ExportConfig(include_pending=True))
    assert list((disk / "exports").iterdir()) == [] and snapshots.snapshots(store) == []


def test_importing_into_a_database_on_a_full_disk_names_it_and_stores_nothing(tmp_path, tiny_disk):
    disk = tiny_disk(512 * 1024)
    store = Store.open(disk / "workbench.db")
    ccf = write_ccf(tmp_path / "ccf.json", n=300, targets_per_item=6)
    with pytest.raises(WorkspaceError, match=r"workbench.db: disk full; nothing of this change was written"):
        snapshots.import_file(store, ccf)
    assert store.query_one("SELECT COUNT(*) FROM counterfactuals") == (0,)
    store.close()
