"""The preference-pair contract: what curation exports, CPO training reads. One reader, one weight rule.

A TRL preference record is ``prompt`` / ``chosen`` / ``rejected``, either plain strings or conversational
(``prompt``: ``{role, content}`` turns ending with a user turn; ``chosen`` / ``rejected``: one assistant
turn), with optional ``source`` (a string), ``weight`` (a positive number) and ``label``::

    pairs = read_pairs("snapshots/trl-1/train.jsonl")   # [{"prompt", "chosen", "rejected", "source", ...}]
    weights = normalise_weights([p["weight"] for p in pairs])  # mean one

Export (``core.curation.snapshots``) writes through ``check_weights`` and ``normalise_weights``, so it refuses what
training would refuse (a weight of 0 or below); training reads with ``read_pairs``, conversational records
included (their prompt turns go through the tokenizer's chat template, ``chat``). A plain record of chat
data carries its conversation's ``system`` turn as a string; training renders ``[system, user]`` through the
chat template as well, so a plain and a conversational export of the same pairs train on the same ids.

Pairs with images (vision-language runs): ``images`` lists the chosen side's images (paths absolute or relative
to the pairs file), ``rejected_images`` the rejected side's (absent: the same images; different: a *visual*
pair, CPO++'s "same CoT, counterfactual image", source ``image_swap``). The prompt holds one ``<image>`` per
image, or, in TRL's vision format, one ``{"type": "image"}`` content item per image; a prompt without any gets
them in front, as TRL does. Each image is checked when read (``core.io.images``: missing, unreadable, oversized),
the error naming the file, line, field and path. A read pair carries ``images`` / ``rejected_images`` as
absolute path strings ([] for text-only pairs).
"""

from __future__ import annotations

import math
from pathlib import Path

from core.errors import InputError
from core.io.images import (
    PLACEHOLDER,
    ImageLimits,
    check_image,
    check_placeholders,
    record_images,
)
from core.io.roots import check_image_refs


def is_weight(w: object) -> bool:
    """A pair or source weight: a positive, finite number (JSON's ``1e400`` reads as infinity)."""
    return not isinstance(w, bool) and isinstance(w, (int, float)) and math.isfinite(w) and w > 0


def normalise_weights(weights: list[float]) -> list[float]:
    """Scale positive pair weights to mean one (the authors' CPO++ normalisation); all ones if none given.
    Divided by the largest first, so that the sum of weights near ``1.8e308`` cannot overflow; a spread so
    wide that a weight would round to 0 is refused rather than dropping its pair unseen."""
    if not weights:
        return []
    if not all(is_weight(w) for w in weights):
        raise ValueError("pair weights must be positive finite numbers")
    top = max(weights)
    scaled = [w / top for w in weights]  # each in (0, 1]: their sum is at most len(weights)
    mean = math.fsum(scaled) / len(scaled)
    out = [s / mean for s in scaled]
    if not all(is_weight(w) for w in out):
        raise ValueError(f"pair weights span too wide a range ({min(weights):g} to {top:g}): the smallest would "
                         "weigh 0 after normalising to mean one")
    return out


def check_weights(weights: dict[str, float], where: str = "weights") -> None:
    """Per-source weights as export takes them: every one a positive finite number (training refuses 0)."""
    bad = {k: w for k, w in weights.items() if not is_weight(w)}
    if bad:
        raise ValueError(f"{where}: every source weight must be a positive finite number (training refuses 0 or "
                         f"less), got {bad}")


def read_pairs(path: str | Path, limits: ImageLimits | None = None, roots: list[Path] | None = None) -> list[dict]:
    """Preference pairs of a TRL JSONL file; ``InputError`` names the line and field of a bad record (and the
    path of a bad image). ``roots``: the folders its images must lie in (a run launched from the UI: the data
    roots; each image checked before it is opened, ``core.io.roots.check_image_refs``); None: unchecked."""
    from core.io.trajectories import json_lines

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: preference data file not found")
    checked: dict[Path, tuple[int, int]] = {}  # an image shared by many pairs is checked once
    return [read_pair(rec, f"{path}, line {n}", path, n, limits, checked, roots) for n, rec in json_lines(path)]


def is_visual(pair: dict) -> bool:
    """A visual pair: the rejected side is encoded with other images than the chosen side."""
    return pair.get("rejected_images", pair.get("images", [])) != pair.get("images", [])


def read_pair(rec: dict, where: str, data_file: Path | None = None, line: int | None = None,
              limits: ImageLimits | None = None, checked: dict | None = None, roots: list[Path] | None = None) -> dict:
    images, rejected_images = _images(rec, data_file or Path.cwd() / "pairs.jsonl", line, limits, checked, roots)
    if images:
        rec = _with_placeholders(rec, len(images), where)
    pair = _texts(rec, where)
    if images:
        check_placeholders(pair["prompt"], len(images), f"{where}, field 'prompt'")
    return {**pair, "images": images, "rejected_images": rejected_images}


def _images(rec: dict, data_file: Path, line: int | None, limits: ImageLimits | None,
            checked: dict | None, roots: list[Path] | None = None) -> tuple[list[str], list[str]]:
    """The chosen and rejected sides' images as absolute path strings, each checked (named on failure): under
    ``roots`` first, so that nothing tells whether a file outside them exists."""
    checked = {} if checked is None else checked
    sides = []
    for field in ("images", "rejected_images"):
        refs = record_images(rec, data_file, line, field)
        check_image_refs([r for r in refs if r.path not in checked], roots)  # a checked path passed already
        for ref in refs:
            if ref.path not in checked:
                checked[ref.path] = check_image(ref, limits)
        sides.append([str(r.path) for r in refs])
    images, rejected = sides
    if "rejected_images" not in rec or rec.get("rejected_images") is None:
        return images, list(images)
    if len(rejected) != len(images):
        raise InputError(f"{data_file}, line {line}, field 'rejected_images': {len(rejected)} image(s) for the "
                         f"rejected side but {len(images)} in 'images'; expected one per <image> of the prompt")
    return images, rejected


def _with_placeholders(rec: dict, n: int, where: str) -> dict:
    """TRL's vision records mark images as ``{"type": "image"}`` content items (``_content`` turns them into
    ``<image>``); a prompt without any marker gets ``n`` in front of its (last user) text, as TRL does."""
    prompt = rec.get("prompt")
    if isinstance(prompt, str):
        return rec if PLACEHOLDER in prompt else {**rec, "prompt": PLACEHOLDER * n + prompt}
    if not isinstance(prompt, list) or not prompt:
        return rec  # _texts names the bad field
    texts = [_content(t.get("content"), where, "prompt") if isinstance(t, dict) else "" for t in prompt]
    if any(PLACEHOLDER in t for t in texts):
        return rec
    users = [i for i, t in enumerate(prompt) if isinstance(t, dict) and t.get("role") == "user"]
    if not users:
        return rec
    turns = list(prompt)
    turns[users[-1]] = {**turns[users[-1]], "content": PLACEHOLDER * n + texts[users[-1]]}
    return {**rec, "prompt": turns}


def _content(content: object, where: str, field: str) -> str:
    """A turn's content as text: a string as is; TRL's list of ``{"type": "text" | "image"}`` items joined,
    each image item written as ``<image>``."""
    if isinstance(content, str) or not isinstance(content, list):
        return content  # type: ignore[return-value] - a non-string is named by the caller
    parts = []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "image":
            parts.append(PLACEHOLDER)
        elif kind == "text" and isinstance(item.get("text"), str):
            parts.append(item["text"])
        else:
            raise InputError(f"{where}, field {field!r}: expected content items {{\"type\": \"text\", \"text\": ...}} "
                             f"or {{\"type\": \"image\"}}, got {item!r}")
    return "".join(parts)


def _texts(rec: dict, where: str) -> dict:
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
    if not is_weight(weight):
        raise InputError(f"{where}, field 'weight': expected a positive finite number, got {weight!r}")
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
    if not turns or not all(isinstance(t, dict) and isinstance(t.get("role"), str) for t in turns):
        raise InputError(f"{where}, field {field!r}: expected a list of {{role, content}} turns with string content")
    out = [{"role": t["role"], "content": _content(t.get("content"), where, field)} for t in turns]
    if not all(isinstance(t["content"], str) for t in out):
        raise InputError(f"{where}, field {field!r}: expected a list of {{role, content}} turns with string content")
    return out


def _assistant(turns: object, where: str, field: str) -> str:
    if isinstance(turns, str):
        return turns
    if not isinstance(turns, list):
        raise InputError(f"{where}, field {field!r}: expected an assistant turn [{{role, content}}] or a string")
    found = [t for t in _turns(turns, where, field) if t["role"] == "assistant"]
    if not found:
        raise InputError(f"{where}, field {field!r}: expected an assistant turn")
    return found[-1]["content"]
