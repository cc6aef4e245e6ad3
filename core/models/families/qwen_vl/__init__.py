"""The Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): models that read images, loaded with
``AutoModelForImageTextToText`` and their image processor.

Its parts, one module each: ``inputs`` (processor, records with images -> ids, padded batches, 3-D rotary
positions), ``forward`` (the scored rows' hidden states, image features shared across adapters, the probe's
trees with images), ``adapters`` (LoRA on the language model only, old key layouts), ``generation`` (greedy
decoding with images) and ``pairs`` (CPO's pairs with images and their collator).
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.models.families.base import VISION_LANGUAGE, Family
from core.models.families.qwen_vl.adapters import attach_vl_adapter, lm_lora_targets, modern_keys
from core.models.families.qwen_vl.forward import VLTrees, first_probe_position, series_hidden
from core.models.families.qwen_vl.generation import greedy_records
from core.models.families.qwen_vl.inputs import (
    VLProcessor,
    as_vl,
    encode_records,
    load_processor,
    load_vl_model,
    vl_core,
)
from core.models.families.qwen_vl.pairs import VLPreferenceCollator, encode_pairs, image_inputs, prompt_errors
from core.models.forward import inner

class QwenVLFamily(Family):
    name = "qwen_vl"
    modality = VISION_LANGUAGE
    auto_class = "AutoModelForImageTextToText"
    chat_prompts = "every record (a conversation's turns, else the prompt as one user turn)"
    caches_prefix = False  # a prefix with images and 3-D positions: long trajectories are probed in chunks
    max_generation_batch = 16  # images make rows heavy (patches, and image tokens in every row)

    def load_processor(self, folder: str | Path, vision=None, trust_remote_code: bool = False) -> VLProcessor:
        return load_processor(folder, vision, trust_remote_code)

    def tokenizer(self, processor: VLProcessor):
        return processor.tokenizer

    def load_model(self, folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                   trust_remote_code: bool = False):
        return load_vl_model(folder, device, dtype, trust_remote_code)

    def attach_adapter(self, model, path: Path, name: str):
        return attach_vl_adapter(model, path, name)

    def frozen_modules(self, model) -> list[str]:
        """The vision tower and its merger (the authors' ``--freeze_vit true``)."""
        base = inner(model)
        return [n for n, m in base.named_modules() if m is vl_core(base).visual]

    def lora_targets(self, model) -> str:
        return lm_lora_targets(model)

    def adapter_state(self, state: dict) -> dict:
        return modern_keys(state)

    def encode(self, processor: VLProcessor, records: list[dict], chat_template: bool = True, where: str = "") -> list:
        return encode_records(processor, records, chat_template, where)

    def inputs_key(self, encoded: list) -> tuple:
        """The images' content hashes and the processor's settings, per trajectory (``VLEncoded.images_key``)."""
        from core.io.cache import cache_key

        keys = [getattr(e, "images_key", "") for e in encoded]
        return ("images", cache_key(keys)) if any(keys) else ()

    def completion_hidden(self, series, model, encoded: list, can_share: list[bool]) -> torch.Tensor:
        return series_hidden(series, model, encoded)

    def first_probe_position(self, enc, processor: VLProcessor) -> int:
        return first_probe_position(enc, processor)

    def tree_batch(self, series, jobs: list[tuple], tokens) -> VLTrees:
        series.forget_inputs()  # scoring's last batch is not needed by the probe: its device memory goes back
        return VLTrees(series.processor, [as_vl(e) for e, _ in jobs], [ch for _, ch in jobs], tokens,
                       series.shared_inputs)

    def greedy(self, model, processor: VLProcessor, records: list[dict], max_new_tokens: int = 96,
               batch_size: int = 16, chat_template: bool = True) -> list[str]:
        return greedy_records(model, processor, records, max_new_tokens, batch_size, chat_template)

    def encode_pairs(self, processor: VLProcessor, pairs: list[dict], max_length: int, data: str = "",
                     model: str = "") -> tuple[list[dict], list[str]]:
        encoded = encode_pairs(processor, pairs)
        return encoded, prompt_errors(encoded, max_length)

    def preference_collator(self, processor: VLProcessor, max_length: int | None) -> VLPreferenceCollator:
        return VLPreferenceCollator(processor, pad_token_id=processor.tokenizer.pad_token_id or 0,
                                    max_length=max_length)

    def forward_inputs(self, model, batch: dict) -> dict:
        return image_inputs(model, batch)


QWEN_VL_FAMILY = QwenVLFamily()
