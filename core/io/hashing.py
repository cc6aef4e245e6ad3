"""Content hashes of stored text: sha256 over a JSON list of the fields, so no two different field lists
share an encoding (joining with a separator let ``"A\\0B" + "C"`` and ``"A" + "B\\0C"`` collide).

    content_hash(prompt, completion)        # any fields
    trajectory_hash(prompt, completion, image_hashes, system="You are...", world="/path/to/world")
    counterfactual_hash(trajectory_hash, target, completion)

A trajectory's identity is its text, its images, its system turn and its world: the same study with another
system prompt is another trajectory, and the same study in two worlds is one item in each (migration 8).
"""

from __future__ import annotations

import hashlib
import json


def content_hash(*fields: str | dict | None) -> str:
    """sha256 (hex) of the JSON array of ``fields``; JSON escapes every character that could separate them."""
    return hashlib.sha256(json.dumps(list(fields), ensure_ascii=False, sort_keys=True)
                          .encode("utf-8", "surrogatepass")).hexdigest()


def trajectory_hash(prompt: str, completion: str, image_hashes: tuple[str, ...] | list[str] = (),
                    system: str | None = None, world: str = "") -> str:
    """``trajectories.content_hash``: prompt, completion and the images' content hashes (one report shown with two
    studies' X-rays is two trajectories), then, when set, the system turn and the world as one JSON object (an
    object never equals a string field; a text-only trajectory of no world and no system turn keeps the hash it
    had before images, system turns and worlds were part of it)."""
    extra = {k: v for k, v in (("system", system), ("world", world)) if v}
    return content_hash(prompt, completion, *image_hashes, *([extra] if extra else []))


def counterfactual_hash(trajectory: str, target: str, completion: str,
                        image_hashes: tuple[str, ...] | list[str] = ()) -> str:
    """``counterfactuals.content_hash``: the trajectory's hash (so its world and system turn), target and
    completion, and its images' hashes when they are not the trajectory's own (an image swap)."""
    return content_hash(trajectory, target, completion, *image_hashes)
