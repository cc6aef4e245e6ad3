"""LoRA on a Qwen-VL base: on every linear layer of the language model and nothing else, and adapters saved
in the module layout of transformers before 4.52 (ms-swift runs on older stacks) mapped to today's.

The authors tune Qwen2.5-VL with LoRA on every linear layer of the language model and the vision tower
frozen (ms-swift ``--freeze_vit true``). ``lm_lora_targets`` gives PEFT that choice as a regex; a series
loads each adapter once into the base (``core.models.series`` switches them, under its lock).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from core.errors import InputError
from core.models.adapter_checks import check_adapter_file
from core.models.families.qwen_vl.inputs import vl_core

_PEFT_PARTS = {"base_layer", "lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B"}


def _is_linear(module) -> bool:
    """A linear layer, also when an adapter already wraps it (PEFT keeps the original as ``base_layer``)."""
    return isinstance(module, torch.nn.Linear) or isinstance(getattr(module, "base_layer", None), torch.nn.Linear)


def lm_lora_targets(model) -> str:
    """A PEFT ``target_modules`` regex for every linear layer of the language model and nothing else
    (not the vision tower, not its merger, not the LM head): PEFT full-matches it against module names."""
    names = {n.rsplit(".", 1)[-1] for n, m in vl_core(model).language_model.named_modules()
             if _is_linear(m) and not any(p in n.split(".") for p in _PEFT_PARTS)}
    if not names:
        raise InputError("the language model has no linear layers to adapt")
    return rf".*language_model\..*\.({'|'.join(sorted(names))})"


# Adapters saved before transformers 4.52 (ms-swift runs on older stacks) name the language model
# ``model.layers...`` and the vision tower ``visual...``; transformers 4.52-4.57 mapped them with this rule
# (Qwen2_5_VLForConditionalGeneration._checkpoint_conversion_mapping), which PEFT applies given ``key_mapping``.
LEGACY_KEYS = {"^visual": "model.visual", r"^model(?!\.(language_model|visual))": "model.language_model"}

# the same rule on PEFT's saved key names, for an init adapter's weights read by hand (a CPO run's start)
_LEGACY = (("base_model.model.visual.", "base_model.model.model.visual."),
           ("base_model.model.model.layers.", "base_model.model.model.language_model.layers."),
           ("base_model.model.model.norm.", "base_model.model.model.language_model.norm."),
           ("base_model.model.model.embed_tokens.", "base_model.model.model.language_model.embed_tokens."))


def attach_vl_adapter(model, path: Path, name: str):
    """Load one adapter into the VL base (old or new key layout); an adapter whose weights do not all find
    their layer is an ``InputError`` naming its folder (PEFT only warns, and would score a half-loaded adapter)."""
    from peft import PeftModel

    check_adapter_file(path)  # no pickle, finite, no undeclared base weights (as for text series)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(path, adapter_name=name, is_trainable=False, key_mapping=LEGACY_KEYS)
            else:
                model = PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=False,
                                                  key_mapping=LEGACY_KEYS)
        except Exception as e:  # noqa: BLE001 - any failure to read an adapter is reported with its path
            raise InputError(f"{path}: adapter does not fit the base model ({str(e).splitlines()[0]})") from None
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    if missing:
        raise InputError(f"{path}: adapter weights do not match the base model's layers "
                         f"({missing[0][:300]}...)")
    return model


def modern_keys(state: dict) -> dict:
    """An init adapter's weights under today's module names (old ms-swift layouts mapped, others unchanged)."""
    out = {}
    for key, value in state.items():
        for old, new in _LEGACY:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out
