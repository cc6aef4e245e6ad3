"""The one interface between the engine and a model family: what a series, the scorer, the probe, greedy
decoding and a CPO run ask of a model, each asked once per family instead of "is this a vision model?".

A family is a stateless object (one per family, in ``core.models.families.FAMILIES``); the state of a loaded
series (its model, processor, adapters, a kept batch) lives in ``core.models.series.ModelSeries``, which the
operations that need it receive. ``processor`` is what turns records into ids: the tokenizer for a text
family, ``core.models.families.qwen_vl.inputs.VLProcessor`` (image processor + tokenizer) for Qwen-VL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from core.models.families.matrix import types_of
from core.models.forward import inner

TEXT = "text"
VISION_LANGUAGE = "vision-language"


class Family(ABC):
    """A model family: its row in the table of families (the class attributes) and its operations."""

    name: str = ""  # the family's name in messages, the README and the registry
    modality: str = TEXT  # TEXT or VISION_LANGUAGE: what its records may carry
    auto_class: str = ""  # the transformers auto class its models load with
    chat_prompts: str = ""  # which records the ``chat_template`` setting renders through the chat template
    caches_prefix: bool = True  # the probe may encode a long prefix once into a real KV cache (else: chunks)
    max_generation_batch: int | None = None  # most rows per greedy batch (None: the caller's batch size)

    @property
    def model_types(self) -> tuple[str, ...]:
        """The config.json model_type values it serves: its rows of the family matrix
        (``core.models.families.matrix.MATRIX``, the one table dispatch reads)."""
        return types_of(self.name)

    @property
    def reads_images(self) -> bool:
        return self.modality == VISION_LANGUAGE

    def row(self) -> dict:
        """The family's row in the table of families (``core.models.families.table``)."""
        return {"family": self.name, "modality": self.modality, "model_types": list(self.model_types),
                "loads_with": self.auto_class, "chat_template": self.chat_prompts}

    # ---- loading --------------------------------------------------------------------------------------
    @abstractmethod
    def load_processor(self, folder: str | Path, vision=None, trust_remote_code: bool = False):
        """What encodes records for this family, from a local model folder (``vision``: a
        ``core.models.vision.VisionConfig``, used by families that read images)."""

    @abstractmethod
    def tokenizer(self, processor):
        """The tokenizer inside ``processor``."""

    @abstractmethod
    def load_model(self, folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                   trust_remote_code: bool = False):
        """The model of a local folder, on ``device`` in eval mode; ``InputError`` naming the folder."""

    @abstractmethod
    def attach_adapter(self, model, path: Path, name: str):
        """``model`` with the LoRA adapter of ``path`` loaded under ``name`` (frozen); ``InputError`` naming
        the folder when it does not fit."""

    def frozen_modules(self, model) -> list[str]:
        """Modules CPO leaves frozen and a series' LoRA should not touch, by name in the unwrapped model
        (``model.get_submodule``); empty: every linear layer may be adapted."""
        return []

    def lora_targets(self, model) -> str:
        """PEFT ``target_modules`` for a CPO run's LoRA (the authors: all linear layers of the language model)."""
        return "all-linear"

    def frozen_untouched(self, model) -> bool:
        """True when no adapter layer sits in a frozen module, so what those modules compute (a vision
        tower's image features) is the same under every adapter and may be computed once."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        base = inner(model)
        return not any(isinstance(m, BaseTunerLayer) for name in self.frozen_modules(base)
                       for m in base.get_submodule(name).modules())

    def adapter_state(self, state: dict) -> dict:
        """An adapter's saved weights under today's module names (older layouts mapped; default: as they are)."""
        return state

    # ---- records ---------------------------------------------------------------------------------------
    @abstractmethod
    def encode(self, processor, records: list[dict], chat_template: bool = True, where: str = "") -> list:
        """Records (``core.io.trajectories`` form) as teacher-forcing inputs (``core.io.trajectories.Encoded``
        or a subclass); ``where`` names the data in errors."""

    def inputs_key(self, encoded: list) -> tuple:
        """The part of a cache key the encodings' non-text inputs decide (image content, processor settings);
        empty for a text family, so text caches keep their keys."""
        return ()

    # ---- scoring and the probe -------------------------------------------------------------------------
    @abstractmethod
    def completion_hidden(self, series, model, encoded: list, can_share: list[bool]) -> torch.Tensor:
        """Last hidden states of the rows that predict each completion token, rows in batch order, under the
        active checkpoint ``model`` (no LM head: ``core.drift.scoring`` applies it in row chunks).  -> (N, H)
        ``can_share[0]``: the scorer may encode a common prompt prefix once (a family turns it off when its
        architecture cannot)."""

    def first_probe_position(self, enc, processor) -> int:
        """The smallest prefix length the probe may read at (a family with images: after the last one)."""
        return 0

    @abstractmethod
    def tree_batch(self, series, jobs: list[tuple], tokens):
        """The probe trees of ``jobs`` [(encoding, positions)] (``core.models.prefix_trees``) ready for the
        model: an object whose ``label_logprobs(model)`` gives [(P, K)] log P(label | x[:j]) per job."""

    def cached_prefix(self, series, enc, positions: list[int], tokens, budget: int):
        """One long trajectory's probe over its prefix's real KV cache (``label_logprobs(model)`` as above);
        only for families with ``caches_prefix``."""
        raise NotImplementedError(f"the {self.name} family probes long prefixes in chunks")

    # ---- generation ------------------------------------------------------------------------------------
    @abstractmethod
    def greedy(self, model, processor, records: list[dict], max_new_tokens: int = 96, batch_size: int = 64,
               chat_template: bool = True) -> list[str]:
        """The greedy completion text of each record's prompt (special tokens dropped), on the model's device."""

    # ---- CPO ---------------------------------------------------------------------------------------------
    @abstractmethod
    def encode_pairs(self, processor, pairs: list[dict], max_length: int, data: str = "",
                     model: str = "") -> tuple[list[dict], list[str]]:
        """Each preference pair's ids for training and what refuses the run (``data`` names the pairs file,
        ``model`` the base model folder)."""

    @abstractmethod
    def preference_collator(self, processor, max_length: int | None):
        """The collator that turns ``encode_pairs`` rows into TRL's ``[chosen; rejected]`` batches."""

    def forward_inputs(self, model, batch: dict) -> dict:
        """What the model takes from a collated batch besides ids and mask (images, their positions)."""
        return {}
