"""The curation database's trajectories as a file the drift engine scores (the Checkpoints page's *Curation
database* data): the original side of every pair, of one world or of all.

    path = trajectories_file(store, ws.uploads_dir, world.key)
"""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import InputError
from core.io.store import Store


def trajectories_file(store: Store, folder: Path, world: str | None = None) -> Path:
    """The database's trajectories (the original side of every pair; of ``world`` when given, a ``World.key``)
    as a JSONL file the drift engine scores (id, prompt, completion, label). Trajectories are only ever inserted,
    so their world, count, last id and the last one's content hash name the file: a page rerun finds it without
    reading the rows again, and a recreated database with as many rows does not pick up another database's file."""
    from collections import Counter

    from core.io.cache import atomic_write_text

    where, params = ("world = ?", [world]) if world is not None else ("1 = 1", [])
    count, last, last_hash = store.query_one(
        f"SELECT COUNT(*), MAX(id), (SELECT content_hash FROM trajectories WHERE {where} ORDER BY id DESC LIMIT 1) "
        f"FROM trajectories WHERE {where}", params * 2)
    if not count:
        raise InputError(f"{store.path}: no trajectories in the curation database yet"
                         + (" in this world" if world else "") + " (import or generate some first)")
    path = Path(folder) / f"curation-{count}-{last}-{last_hash[:12]}.jsonl"  # the world is in the content hash
    if path.exists():
        return path
    rows = store.query(f"SELECT id, external_id, prompt, completion, label, images FROM trajectories WHERE id <= ? "
                       f"AND {where} ORDER BY id", (last, *params))
    seen = Counter(ext for _, ext, *_ in rows)
    atomic_write_text(path, "".join(json.dumps({"id": ext if ext and seen[ext] == 1 else f"db-{i}", "prompt": p,
                                                "completion": c, "label": y} | _images_field(im),
                                               ensure_ascii=False) + "\n"
                                    for i, ext, p, c, y, im in rows))
    return path


def _images_field(images: str) -> dict:
    """``{"images": [...]}`` for a trajectory with images (absolute paths), nothing for a text-only one."""
    paths = json.loads(images)
    return {"images": paths} if paths else {}
