"""Preference data in and out of the store: import files as counterfactual pairs (one transaction per
import, deduplicated by content hash) and export curated pairs as dataset snapshots a CPO run names.

    result = import_file(store, "ccf.json", keep_valid=False, required=2)   # ImportResult(kept=..., ...)
    snap = export_snapshot(store, workspace.datasets_dir, ExportConfig(format="trl", test_fraction=0.1))
    snapshot(store, snap.name).path      # what a CPO run opens

An import with invalid records raises ``InputError`` and stores nothing unless ``keep_valid`` is set; then
the valid part is stored and the batch records how many were kept, duplicates and skipped. An export is
reproducible: the same decisions in the database give the same files and the same content hash, whatever
order the pairs were imported in (rows are ordered by their content hash).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.counterfactuals.store import insert_counterfactual, insert_trajectory
from core.curation import queue as curation
from core.curation.queue import IMAGE_SWAP
from core.errors import InputError
from core.io import formats
from core.io.images import content_hash as image_hash
from core.io.outputs import disk_full_named
from core.io.pairs import check_weights, normalise_weights
from core.io.store import Store

MAX_LISTED_ERRORS = 5


@dataclass
class ImportResult:
    batch_id: int
    format: str
    kept: int        # new pairs stored
    duplicates: int  # valid pairs already in the database (or twice in the file)
    skipped: int     # invalid records left out
    errors: list[str]


def import_file(store: Store, path: str | Path, fmt: str | None = None, keep_valid: bool = False, required: int = 1,
                progress: Callable[[int, int], None] | None = None,
                image_folder: str | Path | None = None, image_roots: list[Path] | None = None,
                world: str = "") -> ImportResult:
    """Import a file (CCF, TRL, ms-swift: relative ``images`` are relative to it; CCF items find their image by
    ``dicom_id`` in ``image_folder``) or a Hugging Face ``datasets`` folder (embedded images are written once
    into the workspace's ``uploads/images/``, named by content) into ``world`` (a ``World.key``: the open world's;
    '' for none). See ``import_text``."""
    path = Path(path).expanduser()
    if formats.is_hf_folder(path):
        parsed = formats.parse_hf_folder(path, image_store(store), image_roots)
        return _import_parsed(store, parsed, path.name, formats.folder_hash(path), keep_valid, required, progress,
                              world)
    return import_text(store, formats.read_text(path), path.name, fmt, keep_valid, required, progress,
                       data_file=path, image_folder=image_folder, image_roots=image_roots, world=world)


def image_store(store: Store) -> Path:
    """Where images that arrive inside a file (a Hugging Face folder's embedded ones) are kept as files."""
    return store.path.parent / "uploads" / "images"


def import_text(store: Store, text: str, name: str, fmt: str | None = None, keep_valid: bool = False,
                required: int = 1, progress: Callable[[int, int], None] | None = None,
                data_file: str | Path | None = None, image_folder: str | Path | None = None,
                image_roots: list[Path] | None = None, world: str = "") -> ImportResult:
    """Parse ``text`` (the file ``name``, at ``data_file`` when it has a path: relative images start there;
    ``image_roots``: the folders its images must lie in, the UI's data roots) and store its pairs in one
    transaction. ``required`` is k, the decisions each new pair needs;
    ``progress(done, total)`` is called as pairs are written (an exception raised from it, e.g. a Stop
    button's rerun, rolls the whole import back)."""
    parsed = formats.parse(text, name, fmt, data_file, image_folder, image_roots)
    return _import_parsed(store, parsed, name, hashlib.sha256(text.encode()).hexdigest(), keep_valid, required,
                          progress, world)


def _import_parsed(store: Store, parsed: formats.Parsed, name: str, digest: str, keep_valid: bool = False,
                   required: int = 1, progress: Callable[[int, int], None] | None = None,
                   world: str = "") -> ImportResult:
    if required < 1:
        raise InputError(f"required decisions per item must be at least 1, got {required}")
    if parsed.errors and not keep_valid:
        raise InputError(_error_summary(name, parsed) + " Nothing was stored; fix the file, or choose to keep "
                         f"the valid part ({parsed.records - parsed.skipped} records).")
    if not parsed.pairs:
        raise InputError(_error_summary(name, parsed) + " No valid pair to store; nothing was stored.")
    settings = json.dumps({"format": parsed.format, "file": name})
    now = time.time()
    with store.transaction() as con:
        batch = con.execute(
            "INSERT INTO import_batches (name, format, content_hash, kept, duplicates, skipped, errors, created_at, "
            "world) VALUES (?, ?, ?, 0, 0, ?, ?, ?, ?)", (name, parsed.format, digest, parsed.skipped,
                                                         json.dumps(parsed.errors), now, world)).lastrowid
        kept = 0
        # text pairs first: a study's trajectory takes its source from them, not from a visual pair's 'image_swap'
        for i, pair in enumerate(sorted(parsed.pairs, key=lambda p: p.rejected_images is not None)):
            kept += _insert_pair(con, pair, name, batch, required, settings, now, world)
            if progress and (i % 200 == 0 or i == len(parsed.pairs) - 1):
                progress(i + 1, len(parsed.pairs))
        duplicates = len(parsed.pairs) - kept
        con.execute("UPDATE import_batches SET kept = ?, duplicates = ? WHERE id = ?", (kept, duplicates, batch))
    return ImportResult(batch, parsed.format, kept, duplicates, parsed.skipped, parsed.errors)


def _error_summary(name: str, parsed: formats.Parsed) -> str:
    shown = "; ".join(parsed.errors[:MAX_LISTED_ERRORS])
    more = f" (and {len(parsed.errors) - MAX_LISTED_ERRORS} more)" if len(parsed.errors) > MAX_LISTED_ERRORS else ""
    return (f"{name}: {len(parsed.errors)} of {parsed.records} {parsed.format} records are invalid: "
            f"{shown}{more}." if parsed.errors else f"{name}: no pairs.")


def _insert_pair(con, pair: formats.Pair, name: str, batch: int, required: int, settings: str, now: float,
                 world: str = "") -> int:
    swapped = pair.rejected_images is not None  # a visual pair: the rejected side keeps its own images
    source = name if swapped and pair.source == IMAGE_SWAP else pair.source or name
    traj = insert_trajectory(con, pair.prompt, pair.chosen, source, now, pair.external_id, pair.label,
                             pair.system, images=list(pair.images), world=world, meta=pair.meta)
    method = IMAGE_SWAP if swapped and pair.source == IMAGE_SWAP else "import"
    _, added = insert_counterfactual(con, traj, pair.target, pair.rejected, method, now, settings=settings,
                                     import_batch_id=batch, required_decisions=required,
                                     images=list(pair.rejected_images) if swapped else None)
    return int(added)


def import_batches(store: Store, world: str | None = None) -> list[dict]:
    """The imports, newest first (into ``world``, when given)."""
    rows = store.query("SELECT id, name, format, kept, duplicates, skipped, created_at FROM import_batches "
                       "WHERE ? IS NULL OR world = ? ORDER BY id DESC", (world, world))
    return [dict(zip(("id", "name", "format", "kept", "duplicates", "skipped", "created_at"), r, strict=True)) for r in rows]


# ---------------------------------------------------------------- export

@dataclass
class ExportConfig:
    """How curated pairs become a dataset snapshot."""
    format: str = "trl"               # 'trl' | 'swift' | 'hf' | 'ccf'
    test_fraction: float = 0.0        # share of studies (trajectories) in the test split, 0 for none
    seed: int = 0                     # seeds the split
    conversational: bool = False      # TRL: messages instead of plain strings
    system: str | None = None         # system turn for ms-swift / conversational TRL (else the stored one)
    weights: dict[str, float] = field(default_factory=dict)  # per-source weight, normalised to mean one
    include_pending: bool = False     # also pairs nobody has decided yet (format conversion without curation)
    name: str | None = None           # snapshot name; default '<format>-<hash prefix>'
    copy_images: bool = False         # copy the images into the snapshot (images/); else reference them by path

    def __post_init__(self):
        if self.format not in formats.EXPORT_FORMATS:
            raise ValueError(f"format must be one of {formats.EXPORT_FORMATS}, got {self.format!r}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        check_weights(self.weights)  # training refuses a weight of 0 (core.io.pairs)
        if self.name is not None and (not self.name.strip() or Path(self.name).name != self.name
                                      or self.name.startswith(".")):
            raise ValueError(f"snapshot name must be a plain folder name, got {self.name!r}")


@dataclass
class Snapshot:
    id: int
    name: str
    path: Path
    format: str
    split: dict
    row_count: int
    content_hash: str
    created_at: float
    world: str = ""  # the world whose pairs it holds ('' for every world's, or one of no known world)

    def image_changes(self) -> list[str]:
        """One message per image of the snapshot (its ``images.json`` manifest) that is missing or whose bytes
        changed since the export: a run on it would train on other images than were curated."""
        return image_changes(self.path)


def weighted_rows(rows: list[dict], weights: dict[str, float]) -> list[dict]:
    """Each row's ``weight``: its source's weight (default 1) divided by the mean over the rows, so the
    weights average one (the CPO++ trainer's per-source weighting)."""
    raw = [weights.get(r["source"], 1.0) for r in rows]
    return [{**r, "weight": round(w, 6)} for r, w in zip(rows, normalise_weights(raw), strict=True)]


def export_snapshot(store: Store, root: Path, config: ExportConfig, world: str | None = None) -> Snapshot:
    """Write the curated pairs of ``world`` (a ``World.key``; None: every world's, a choice the caller names)
    under ``root`` and record the snapshot, in that world (or return the identical one)."""
    rows = sorted(curation.curated_rows(store, config.include_pending, world), key=lambda r: r["hash"])
    if not rows:
        raise InputError("nothing to export: no accepted or edited pair yet" + (" in this world" if world else "")
                         + " (or tick 'include undecided pairs')")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    with disk_full_named(root):  # a full disk is named; the temporary folder is removed either way
        try:
            paths = _image_names(rows) if config.copy_images else None
            counts = formats.write(weighted_rows(rows, config.weights), tmp, config.format, config.test_fraction,
                                   config.seed, config.system, config.conversational, paths)
            if paths and config.format != "hf":  # the Hugging Face folder embeds them in its arrow files
                _copy_images(paths, tmp)
            _write_manifest(rows, tmp, config, paths)
            digest = formats.folder_hash(tmp)
            # the same pairs exported in another world are that world's snapshot: its own default name
            name = config.name or f"{config.format}-{digest[:10]}" + (f"-{_world_tag(world)}" if world else "")
            final = root / name
            if final.exists():
                if formats.folder_hash(final) != digest:
                    raise InputError(f"{final}: a different export already has this name; choose another name")
            else:
                tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _record(store, name, final, config, counts, digest, world or "")


MANIFEST = "images.json"


def _image_list(rows: list[dict]) -> list[str]:
    """Every image the rows name (chosen and rejected sides), each once, in a stable order."""
    return sorted({p for r in rows for p in (*(r.get("images") or ()), *(r.get("rejected_images") or ()))})


def _image_names(rows: list[dict]) -> dict[str, str]:
    """Absolute path -> ``images/<content hash><suffix>``, the copy's path relative to the pairs file."""
    out = {}
    for src in _image_list(rows):
        try:
            out[src] = f"images/{image_hash(Path(src))}{Path(src).suffix.lower()}"
        except OSError as e:
            raise InputError(f"export: cannot read image {src} ({e.strerror or e}); it was curated with this "
                             "path: restore the file, or leave the pair out") from None
    return out


def _copy_images(names: dict[str, str], folder: Path) -> None:
    (folder / "images").mkdir(exist_ok=True)
    for src, name in names.items():
        shutil.copyfile(src, folder / name)


def _write_manifest(rows: list[dict], folder: Path, config: ExportConfig, paths: dict[str, str] | None) -> None:
    """``images.json``: each image's path as written (or embedded) and its content hash, so a
    reloaded snapshot can tell whether an image changed. Only for exports with images."""
    images = _image_list(rows)
    if not images:
        return
    how = "referenced" if paths is None else "embedded" if config.format == "hf" else "copied"
    entries = []
    for src in images:
        try:
            digest = image_hash(Path(src))
        except OSError as e:
            raise InputError(f"export: cannot read image {src} ({e.strerror or e})") from None
        entries.append({"path": src if paths is None else paths[src], "content_hash": digest, "stored": how})
    formats.write_json(folder / MANIFEST, {"images": sorted(entries, key=lambda e: (e["path"], e["content_hash"]))})


def image_changes(folder: Path) -> list[str]:
    """What ``Snapshot.image_changes`` reports, for a snapshot folder."""
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return []
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["images"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{manifest}: unreadable image manifest ({e})"]
    out = []
    for e in entries:
        if e.get("stored") == "embedded":
            continue  # inside the arrow files, covered by the snapshot's own hash
        path = Path(e["path"]) if Path(e["path"]).is_absolute() else Path(folder) / e["path"]
        try:
            now = image_hash(path)
        except OSError:
            out.append(f"{path}: image missing (recorded with content hash {e['content_hash']})")
            continue
        if now != e["content_hash"]:
            out.append(f"{path}: image changed since the snapshot (content hash {e['content_hash']} then, {now} now)")
    return out


def _world_tag(world: str) -> str:
    return hashlib.sha256(world.encode()).hexdigest()[:6]


def _record(store: Store, name: str, path: Path, config: ExportConfig, counts: dict, digest: str,
            world: str = "") -> Snapshot:
    split = {"test_fraction": config.test_fraction, "seed": config.seed, "rows": counts}
    with store.transaction() as con:
        row = con.execute("SELECT content_hash, world FROM dataset_snapshots WHERE name = ?", (name,)).fetchone()
        if row and row[0] != digest:
            raise InputError(f"snapshot {name!r} already exists with other content; choose another name")
        if row and (row[1] or "") != (world or ""):
            raise InputError(f"snapshot {name!r} is another world's ({row[1] or 'no world'}); choose another name")
        if not row:
            con.execute("INSERT INTO dataset_snapshots (name, path, format, split, row_count, content_hash, config, "
                        "created_at, world) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (name, str(path), config.format, json.dumps(split), sum(counts.values()), digest,
                         json.dumps(asdict(config), sort_keys=True), time.time(), world))
    return snapshot(store, name)


SNAPSHOT_COLUMNS = "id, name, path, format, split, row_count, content_hash, created_at, world"


def _snapshot(row: tuple) -> Snapshot:
    return Snapshot(row[0], row[1], Path(row[2]), row[3], json.loads(row[4]), row[5], row[6], row[7], row[8])


def snapshot(store: Store, name: str) -> Snapshot:
    """The snapshot a CPO run names; ``InputError`` lists the known ones if the name is unknown."""
    row = store.query_one(f"SELECT {SNAPSHOT_COLUMNS} FROM dataset_snapshots WHERE name = ?", (name,))
    if row is None:
        known = [s.name for s in snapshots(store)]
        raise InputError(f"no dataset snapshot named {name!r} (known: {', '.join(known) or 'none yet'})")
    return _snapshot(row)


def trainable(snap: Snapshot) -> bool:
    """Whether a CPO run can train on ``snap``: a TRL export (plain or conversational, ``core.io.pairs``) whose
    train.jsonl is still there."""
    return snap.format == "trl" and (snap.path / "train.jsonl").is_file()


def snapshots(store: Store, world: str | None = None) -> list[Snapshot]:
    """The snapshots, newest first (of ``world``, when given: what its runs page offers)."""
    rows = store.query(f"SELECT {SNAPSHOT_COLUMNS} FROM dataset_snapshots WHERE ? IS NULL OR world = ? "
                       "ORDER BY id DESC", (world, world))
    return [_snapshot(r) for r in rows]
