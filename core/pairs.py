"""The preference-pair contract: what curation exports, CPO training reads. One reader, one weight rule.

A TRL preference record is ``prompt`` / ``chosen`` / ``rejected``, either plain strings or conversational
(``prompt``: ``{role, content}`` turns ending with a user turn; ``chosen`` / ``rejected``: one assistant
turn), with optional ``source`` (a string), ``weight`` (a positive number) and ``label``::

    pairs = read_pairs("snapshots/trl-1/train.jsonl")   # [{"prompt", "chosen", "rejected", "source", ...}]
    weights = normalise_weights([p["weight"] for p in pairs])  # mean one

Export (``core.snapshots``) writes through ``check_weights`` and ``normalise_weights``, so it refuses what
training would refuse (a weight of 0 or below); training reads with ``read_pairs``, conversational records
included (their prompt turns go through the tokenizer's chat template, ``chat``). A plain record of chat
data carries its conversation's ``system`` turn as a string; training renders ``[system, user]`` through the
chat template as well, so a plain and a conversational export of the same pairs train on the same ids.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import InputError


def normalise_weights(weights: list[float]) -> list[float]:
    """Scale positive pair weights to mean one (the authors' CPO++ normalisation); all ones if none given."""
    if not weights:
        return []
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 for w in weights):
        raise ValueError("pair weights must be positive numbers")
    mean = sum(weights) / len(weights)
    return [w / mean for w in weights]


def check_weights(weights: dict[str, float], where: str = "weights") -> None:
    """Per-source weights as export takes them: every one a positive number (training refuses 0)."""
    bad = {k: w for k, w in weights.items() if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0}
    if bad:
        raise ValueError(f"{where}: every source weight must be a positive number (training refuses 0 or less), got {bad}")


def read_pairs(path: str | Path) -> list[dict]:
    """Preference pairs of a TRL JSONL file; ``InputError`` names the line and field of a bad record."""
    from core.trajectories import json_lines

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: preference data file not found")
    return [read_pair(rec, f"{path}, line {n}") for n, rec in json_lines(path)]


def read_pair(rec: dict, where: str) -> dict:
    chat = None
    if isinstance(rec.get("prompt"), list):
        chat = _turns(rec["prompt"], where, "prompt")
        prompt = next((t["content"] for t in reversed(chat) if t["role"] == "user"), "")
        chosen, rejected = (_assistant(rec.get(k), where, k) for k in ("chosen", "rejected"))
    else:
        prompt, chosen, rejected = (rec.get(k) for k in ("prompt", "chosen", "rejected"))
        chat = _plain_chat(rec, prompt, where)
    for key, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{where}, field {key!r}: expected a non-empty string (or, conversational, "
                             "a list of {role, content} turns)")
    weight = rec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise InputError(f"{where}, field 'weight': expected a positive number, got {weight!r}")
    source = rec.get("source") or "all"
    if not isinstance(source, str):
        raise InputError(f"{where}, field 'source': expected a string, got {source!r}")
    label = rec.get("label")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": source, "weight": float(weight),
            "label": label if isinstance(label, str) else None, "chat": chat}


def _plain_chat(rec: dict, prompt: object, where: str) -> list[dict] | None:
    """A plain record of chat data (a ``system`` string beside the prompt, as export writes it): its turns,
    which training renders through the chat template like a conversational record's."""
    system = rec.get("system")
    if system is None:
        return None
    if not isinstance(system, str) or not system.strip():
        raise InputError(f"{where}, field 'system': expected a non-empty string (the conversation's system turn)")
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def _turns(turns: list, where: str, field: str) -> list[dict]:
    if not turns or not all(isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str)
                            for t in turns):
        raise InputError(f"{where}, field {field!r}: expected a list of {{role, content}} turns with string content")
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def _assistant(turns: object, where: str, field: str) -> str:
    if isinstance(turns, str):
        return turns
    if not isinstance(turns, list):
        raise InputError(f"{where}, field {field!r}: expected an assistant turn [{{role, content}}] or a string")
    found = [t for t in _turns(turns, where, field) if t["role"] == "assistant"]
    if not found:
        raise InputError(f"{where}, field {field!r}: expected an assistant turn")
    return found[-1]["content"]
