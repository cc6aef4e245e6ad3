"""The workspace: one folder per user or project holding the database, caches, jobs and run folders.

    ws = Workspace.open()                      # $WORKBENCH_WORKSPACE or ~/.cot-drift-workbench
    ws.store.register_world(...); ws.cache_dir; ws.jobs_dir; ws.runs_dir

Every folder the workbench writes in a workspace is named here, so pages and notebooks ask for it instead of
building the path themselves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError, WorkspaceError
from core.io.paths import expand
from core.io.roots import default_path, env_data_roots
from core.io.store import Store

DB_NAME = "workbench.db"
FOLDERS = ("cache", "jobs", "runs", "analyses", "uploads", "datasets", "perturbations")  # made by Workspace.open


@dataclass
class Workspace:
    root: Path
    store: Store

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def runs_dir(self) -> Path:
        """CPO run folders, ``runs/cpo/<name>/`` (``core.cpo.runs``)."""
        return self.root / "runs"

    @property
    def jobs_dir(self) -> Path:
        """Background jobs, one folder each (``core.jobs.supervisor``): where new jobs start."""
        return self.root / "jobs"

    @property
    def job_dirs(self) -> tuple[Path, Path]:
        """Where jobs are found: ``jobs/``, and ``runs/``, where workspaces kept them before ``jobs/`` existed."""
        return self.jobs_dir, self.runs_dir

    @property
    def datasets_dir(self) -> Path:
        """Dataset snapshots exported from curation (``core.curation.snapshots.export_snapshot``)."""
        return self.root / "datasets"

    @property
    def perturbations_dir(self) -> Path:
        """Perturbation tests over a dataset (parquet, one file per test), as the lab's jobs write them."""
        return self.root / "perturbations"

    @property
    def analyses_dir(self) -> Path:
        """Drift analyses scored from the UI (one folder each, as ``Analysis.save`` writes them)."""
        return self.root / "analyses"

    @property
    def uploads_dir(self) -> Path:
        """Trajectory files uploaded through the browser, stored under their content hash."""
        return self.root / "uploads"

    def cpo_run_dir(self, name: str) -> Path:
        """The folder of the CPO run ``name`` (``core.cpo.runs``): ``runs/cpo/<name>/``."""
        return self.runs_dir / "cpo" / name

    def keep_upload(self, filename: str, raw: bytes, suffix: str = ".jsonl") -> Path:
        """Store an uploaded text file as ``uploads/<stem>-<sha256[:12]><suffix>``: the same content uploaded
        twice is one file, different content under one name never overwrites. Not UTF-8: ``InputError``."""
        from core.io.cache import atomic_write_text

        target = self.uploads_dir / f"{Path(filename).stem}-{hashlib.sha256(raw).hexdigest()[:12]}{suffix}"
        if not target.exists():
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{filename}: not UTF-8 text (byte {e.start}); expected JSON lines") from None
            atomic_write_text(target, text)
        return target

    @classmethod
    def open(cls, root: str | Path | None = None) -> "Workspace":
        """Create the folder if needed, check it is writable, open and migrate its database."""
        root = expand(root).resolve() if root else default_path().resolve()
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"{root}: workspace must be a folder, but a file is there")
        try:
            for sub in (root, *(root / name for name in FOLDERS)):
                sub.mkdir(parents=True, exist_ok=True)
            probe = root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise WorkspaceError(f"{root}: workspace folder is not writable ({e.strerror}); "
                                 "choose another with --workspace") from None
        return cls(root, Store.open(root / DB_NAME))


def data_roots(store: Store, *extra: str | Path | None) -> list[Path]:
    """The folders whose files a path typed in the UI may name: the workspace, every registered world folder and
    the folders its datasets lie in (a registered run's data stays where the user keeps it), ``$WORKBENCH_DATA_ROOTS``
    and ``extra`` (a world folder among them brings its data folders too)."""
    worlds = [Path(r[0]) for r in store.query("SELECT path FROM worlds")] + [Path(e) for e in extra if e]
    found = [store.path.parent, *worlds, *(f for w in worlds for f in world_data_folders(w)), *env_data_roots()]
    return list(dict.fromkeys(found))


def world_data_folders(root: str | Path) -> list[Path]:
    """The folders holding the datasets the world folder ``root``'s manifest names (none when it has no readable
    manifest): its own data, where a typed path of that world's data may point."""
    import json

    try:
        manifest = json.loads((Path(root) / "world.json").read_text(encoding="utf-8-sig"))
        paths = [d["path"] for d in manifest["datasets"].values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return list(dict.fromkeys((Path(root) / p).resolve().parent for p in paths if isinstance(p, str)))
