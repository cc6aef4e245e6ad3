"""Model families: one backend per family of models, chosen once, when a model is loaded, from the
``model_type`` of its folder's ``config.json``.

    family = family_for("runs/base")          # TEXT_FAMILY, QWEN_VL_FAMILY, or UnsupportedModel naming why
    family.modality                          # "text" | "vision-language"
    table()                                  # the families as rows of data (name, modality, model types, ...)

A series (``core.models.series.load_series``), a CPO run, an evaluation and the perturbation tests ask
``family_for`` once and then call the family's operations (``core.models.families.base.Family``); nothing
else decides whether a model reads images. A ``model_type`` no family serves is refused with an
``UnsupportedModel`` (an ``InputError``) that names it, whether its config looks like a text or a
vision-language model, why when the type is a known one left out (``matrix.REFUSED``), and the families
there are. Which ``model_type`` goes to which family is the family matrix (``core.models.families.matrix``:
the one table dispatch reads, the README prints and the matrix test checks cell by cell). Adding a family:
implement ``Family`` in a module of this package, list its instance in ``FAMILIES`` and its model types in
the matrix.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import InputError
from core.models.families.base import TEXT, VISION_LANGUAGE, Family
from core.models.families.matrix import REFUSED, entry
from core.models.families.qwen_vl import QWEN_VL_FAMILY
from core.models.families.text import TEXT_FAMILY

FAMILIES: tuple[Family, ...] = (TEXT_FAMILY, QWEN_VL_FAMILY)


class UnsupportedModel(InputError):
    """A model folder whose ``model_type`` no family serves (the message names it and the families)."""


def table() -> list[dict]:
    """The families as data: one row each (family, modality, model_types, loads_with, chat_template)."""
    return [f.row() for f in FAMILIES]


def family_named(name: str) -> Family:
    """The family called ``name`` (``TEXT_FAMILY.name``, ...)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise InputError(f"no model family {name!r} (known: {', '.join(f.name for f in FAMILIES)})")


def read_config(folder: str | Path) -> dict:
    """A model folder's ``config.json`` as a dict; ``InputError`` naming the file when it is missing or broken."""
    path = Path(folder).expanduser() / "config.json"
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: model folder not found")
    try:
        config = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputError(f"{path.parent}: not a model folder (expected config.json)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable model config ({e})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object (a transformers config)")
    return config


def family_for(folder: str | Path) -> Family:
    """The family of the model in ``folder``, from its ``config.json`` ``model_type``."""
    return family_of_config(read_config(folder), f"{Path(folder).expanduser() / 'config.json'}")


def family_of_config(config: dict, where: str = "config.json") -> Family:
    """The family serving ``config["model_type"]`` (a dict or a transformers ``PretrainedConfig``)."""
    if not isinstance(config, dict):
        config = config.to_dict()
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):  # a list or object: named, not a TypeError
        raise UnsupportedModel(f"{where}: field 'model_type': expected a string (e.g. \"qwen2\"), got "
                               f"{type(model_type).__name__}; supported: {supported()}")
    row = entry(model_type)
    if row is not None:
        return family_named(row.family)
    looks = VISION_LANGUAGE if _looks_visual(config) else TEXT
    said = f"model_type {model_type[:60]!r}" if model_type else "no model_type"  # a long one is not echoed whole
    why = f": {REFUSED[model_type]}" if model_type in REFUSED else ""
    raise UnsupportedModel(f"{where}: {said} is not a supported model family (its config looks like a {looks} "
                           f"model{why}); supported: {supported()}; `workbench families` prints the matrix")


def supported() -> str:
    """The families and their model types, in one line (for messages)."""
    return "; ".join(f"{f.name} ({f.modality}: {', '.join(f.model_types)})" for f in FAMILIES)


def _looks_visual(config: dict) -> bool:
    """A config with a vision tower or image tokens (LLaVA, Idefics, PaliGemma, ...)."""
    return any(k in config for k in ("vision_config", "vision_tower", "image_token_index", "image_token_id",
                                     "mm_projector_type", "visual"))


__all__ = ["FAMILIES", "QWEN_VL_FAMILY", "TEXT", "TEXT_FAMILY", "VISION_LANGUAGE", "Family", "UnsupportedModel",
           "family_for", "family_named", "family_of_config", "read_config", "supported", "table"]
