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


def test_starting_a_job_on_a_full_disk_names_it_and_leaves_no_job_folder(tiny_disk):
    from core.jobs import supervisor

    disk = tiny_disk(64 * 1024)
    (disk / "filler").write_bytes(b"x" * (60 * 1024))
    (disk / "jobs").mkdir()
    with pytest.raises(InputError, match=r"jobs/score-.*: disk full while writing; nothing was written"):
        supervisor.start(disk / "jobs", "score", ["-c", "pass"], files={"analysis.json": "{}" + " " * 8192})
    assert list((disk / "jobs").iterdir()) == []


def test_a_cpo_run_on_a_full_disk_says_disk_full_with_its_folder(tmp_path, sample_world, tiny_disk):
    """torch.save on a full disk says only "[enforce fail at inline_container.cc] . unexpected pos"."""
    from core.cpo.config import TrainConfig
    from core.cpo.train import is_disk_full, train
    from workbench.demo.preferences import build_preferences

    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"))
    assert not is_disk_full(RuntimeError("size mismatch"))
    pairs = build_preferences(sample_world, tmp_path / "pairs.jsonl", n=8, seed=0)
    disk = tiny_disk(96 * 1024)  # the config and metrics fit; a checkpoint's optimizer state does not
    out = disk / "run"
    cfg = TrainConfig(base_model=str(sample_world / "model"), data=str(pairs), output_dir=str(out),
                      init_adapter=str(sample_world / "rft" / "checkpoint-160"), max_steps=1, batch_size=4,
                      save_steps=1, base_names=["cxr-demo-tiny-llama"])
    with pytest.raises(InputError, match=rf"{out}: disk full while saving the run \(step 1\)"):
        train(cfg)
