"""Trajectories longer than the model's context: scored anyway (positions past the context are what the
model would extrapolate), but never silently: one warning per trajectory, naming it and both lengths.

    for message in context_warnings(encoded, base_dir):
        print("warning:", message)
"""

from __future__ import annotations

import json
from pathlib import Path

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
MAX_LISTED = 20  # warnings named one by one; the rest are counted


def model_context(base: str | Path) -> int | None:
    """The base model's context length from its config.json (text_config for vision-language models)."""
    try:
        cfg = json.loads((Path(base) / "config.json").read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        return None
    for section in (cfg, cfg.get("text_config") or {}) if isinstance(cfg, dict) else ():
        for key in CONTEXT_KEYS:
            if isinstance(section.get(key), int) and section[key] > 0:
                return section[key]
    return None


def context_warnings(encoded: list, base: str | Path) -> list[str]:
    """One message per trajectory whose tokens (prompt + completion) exceed the model's context."""
    context = model_context(base)
    if context is None:
        return []
    long = [(e.id, len(e.input_ids)) for e in encoded if len(e.input_ids) > context]
    messages = [f"trajectory {tid}: {n} tokens, longer than the model's context of {context}; positions past "
                f"{context} are scored as the model extrapolates them" for tid, n in long[:MAX_LISTED]]
    if len(long) > MAX_LISTED:
        messages.append(f"{len(long) - MAX_LISTED} more trajectories are longer than the model's context of {context}")
    return messages
