"""Content hashes of stored text: sha256 over a JSON list of the fields, so no two different field lists
share an encoding (joining with a separator let ``"A\\0B" + "C"`` and ``"A" + "B\\0C"`` collide).

    content_hash(prompt, completion)        # trajectories.content_hash
    content_hash(trajectory_hash, target, completion)   # counterfactuals.content_hash
"""

from __future__ import annotations

import hashlib
import json


def content_hash(*fields: str | None) -> str:
    """sha256 (hex) of the JSON array of ``fields``; JSON escapes every character that could separate them."""
    return hashlib.sha256(json.dumps(list(fields), ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()
