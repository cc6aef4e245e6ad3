"""The workspace: one folder per user or project holding the database, caches, jobs and run folders.

    ws = Workspace.open()                      # $WORKBENCH_WORKSPACE or ~/.cot-drift-workbench
    ws.store.register_world(...); ws.cache_dir; ws.jobs_dir; ws.runs_dir

Every folder the workbench writes in a workspace is named here, so pages and notebooks ask for it instead of
building the path themselves.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import WorkspaceError
from core.paths import expand
from core.errors import InputError
from core.store import Store

ENV_VAR = "WORKBENCH_WORKSPACE"
DB_NAME = "workbench.db"
FOLDERS = ("cache", "jobs", "runs", "analyses", "uploads", "datasets", "perturbations")  # made by Workspace.open
DATA_ROOTS_ENV = "WORKBENCH_DATA_ROOTS"  # more folders whose files the UI may open, os.pathsep-separated


def default_path() -> Path:
    return expand(os.environ.get(ENV_VAR) or Path.home() / ".cot-drift-workbench")


@dataclass
class Workspace:
    root: Path
    store: Store

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def runs_dir(self) -> Path:
        """CPO run folders, ``runs/cpo/<name>/`` (``core.runs``)."""
        return self.root / "runs"

    @property
    def jobs_dir(self) -> Path:
        """Background jobs, one folder each (``core.jobs``): where new jobs start."""
        return self.root / "jobs"

    @property
    def job_dirs(self) -> tuple[Path, Path]:
        """Where jobs are found: ``jobs/``, and ``runs/``, where workspaces kept them before ``jobs/`` existed."""
        return self.jobs_dir, self.runs_dir

    @property
    def datasets_dir(self) -> Path:
        """Dataset snapshots exported from curation (``core.snapshots.export_snapshot``)."""
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
        """The folder of the CPO run ``name`` (``core.runs``): ``runs/cpo/<name>/``."""
        return self.runs_dir / "cpo" / name

    def keep_upload(self, filename: str, raw: bytes, suffix: str = ".jsonl") -> Path:
        """Store an uploaded text file as ``uploads/<stem>-<sha256[:12]><suffix>``: the same content uploaded
        twice is one file, different content under one name never overwrites. Not UTF-8: ``InputError``."""
        from core.cache import atomic_write_text

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
    """The folders whose files a path typed in the UI may name: the workspace, every registered world
    folder, ``$WORKBENCH_DATA_ROOTS`` and ``extra``."""
    worlds = [Path(r[0]) for r in store.query("SELECT path FROM worlds")]
    return [store.path.parent, *worlds, *env_data_roots(), *(Path(e) for e in extra if e)]


def env_data_roots() -> list[Path]:
    """The folders ``$WORKBENCH_DATA_ROOTS`` names (``os.pathsep``-separated; empty entries skipped)."""
    return [Path(p) for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p.strip()]


def search_roots(workspace_root: str | Path, world_root: str | Path | None = None) -> list[Path]:
    """Where the UI looks for models and checkpoint series, in this order: the open world's folder, the
    workspace, then ``$WORKBENCH_DATA_ROOTS``."""
    return [*([Path(world_root)] if world_root else []), Path(workspace_root), *env_data_roots()]


def check_data_path(path: str | Path, roots: list[Path]) -> Path:
    """``path`` resolved (links followed, so a link cannot lead out), if it lies under one of ``roots``; else an
    ``InputError`` whose message is the same whether or not the file exists, so a visitor learns nothing
    about the machine's files outside the data roots."""
    resolved = Path(os.path.realpath(Path(str(path)).expanduser()))
    for root in roots:
        if resolved.is_relative_to(os.path.realpath(Path(root).expanduser())):
            return resolved
    raise InputError(f"{path}: not under the data roots, so the workbench does not open it. Typed paths must lie "
                     f"in the workspace, a world folder or ${DATA_ROOTS_ENV} (start the workbench with "
                     f"{DATA_ROOTS_ENV}=/your/data to add a folder)")


def refused_paths(paths: list[str | None], roots: list[Path]) -> list[str]:
    """One message per typed path outside ``roots`` (``check_data_path``); empty and None entries are skipped."""
    problems = []
    for p in paths:
        if p and p.strip():
            try:
                check_data_path(p.strip(), roots)
            except InputError as e:
                problems.append(str(e))
    return problems
