"""A vision-language base and its checkpoint series: LoRA adapters on the language model, switched in place.

The authors tune Qwen2.5-VL with LoRA on every linear layer of the language model and the vision tower
frozen (ms-swift ``--freeze_vit true``). ``lm_lora_targets`` gives PEFT that choice as a regex; a series
loads each adapter once into the base (``core.models.series`` does the switching, under its lock), and when no
adapter touches the vision tower the image features of a batch are computed once for all checkpoints.

    vs = load_vl_series("Qwen2.5-VL-7B-Instruct", "output/v0-2025/", VisionConfig(max_pixels=1003520))
    encs = encode_vl(vs.processor, records)
    df = score_vl_series(vs, encs)      # one row per trajectory x checkpoint x completion token: logprob
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.drift.vl_scoring import image_features, token_logprobs, vision_untouched
from core.errors import InputError
from core.models import series as text_series
from core.models.device import detect
from core.models.vision import (
    VisionConfig,
    VLBatch,
    VLEncoded,
    VLProcessor,
    collate,
    is_vl_folder,
    load_processor,
    load_vl_model,
    vl_core,
)

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


@dataclass
class VLSeries(text_series.ModelSeries):
    """A ``core.models.series.ModelSeries`` of a vision-language base: the same names, steps, parents, switching,
    fingerprint, device and dtype, plus the ``processor`` that turns records with images into inputs."""
    processor: VLProcessor | None = None
    shared_vision: bool = True  # no adapter touches the vision tower: image features are the same under all
    _inputs: tuple | None = field(default=None, repr=False)  # (key, VLBatch, features): the last batch's inputs

    @property
    def series(self) -> VLSeries:
        """The series itself (earlier callers reached the text series through this attribute)."""
        return self

    @contextmanager
    def activate(self, name: str) -> Iterator[torch.nn.Module]:
        """The model in the state of checkpoint ``name``: adapters switched in place; a full VL checkpoint
        loaded through the image-text-to-text class and released afterwards."""
        info = {text_series.adapter_name(c): c for c in self.checkpoints}.get(name)
        if info is None or info.kind == "adapter":
            with super().activate(name) as model:
                yield model
            return
        with self.lock:
            full = load_vl_model(info.path, self.device, self.dtype, self.trust_remote_code)
            try:
                yield full
            finally:
                del full
                gc.collect()

    def inputs(self, encs: list[VLEncoded], model) -> tuple[VLBatch, dict | None]:
        """One batch's padded inputs and, when the vision tower is shared, its image features: computed under
        the first checkpoint that asks and reused by the others (one batch kept: scoring is batch-outer)."""
        key = tuple((e.id, e.images_key, len(e.input_ids)) for e in encs)
        if self._inputs is None or self._inputs[0] != key:
            self._inputs = None  # the previous batch's tensors are freed before this one's are built
            batch = collate(encs, self.processor, model, self.device)
            features = image_features(model, batch.pixel_values, batch.image_grid_thw) if self.shared_vision else None
            self._inputs = (key, batch, features)
        return self._inputs[1], self._inputs[2]

    def forget_inputs(self) -> None:
        """Free the kept batch (its pixels and image features), e.g. before the probe builds its own."""
        self._inputs = None


def load_vl_series(base: str | Path, checkpoints: str | Path | Sequence[str | Path] | None = None,
                   cfg: VisionConfig | None = None, *, device: str | None = None, dtype: str | None = None,
                   trust_remote_code: bool = False, base_names: Sequence[str] = ()) -> VLSeries:
    """Load a VL base (model + processor) and every adapter checkpoint into it (see module docstring)."""
    base = Path(base).expanduser().resolve()
    if not is_vl_folder(base):
        raise InputError(f"{base}: not a vision-language model folder (expected config.json with a vision_config)")
    infos = text_series._resolve_checkpoints(checkpoints)
    dev = device or detect().device
    dt = text_series._dtype(dtype, dev)
    proc = load_processor(base, cfg, trust_remote_code)
    model = load_vl_model(base, dev, dt, trust_remote_code)
    vocab = proc.tokenizer.get_vocab()
    for info in infos:
        text_series._check_tokenizer(info, vocab, trust_remote_code)
        if info.kind == "adapter":
            model = attach_vl_adapter(model, info)
    shared = not hasattr(model, "peft_config") or vision_untouched(model)
    shared = shared and all(c.kind == "adapter" for c in infos)
    notes = text_series.base_name_warnings(base, infos, base_names)  # a hint, never a refusal (core.models.series)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return VLSeries(base, infos, model.eval(), proc.tokenizer, dev, dt, trust_remote_code, warnings=notes,
                    processor=proc, shared_vision=shared)


# Adapters saved before transformers 4.52 (ms-swift runs on older stacks) name the language model
# ``model.layers...`` and the vision tower ``visual...``; transformers 4.52-4.57 mapped them with this rule
# (Qwen2_5_VLForConditionalGeneration._checkpoint_conversion_mapping), which PEFT applies given ``key_mapping``.
LEGACY_KEYS = {"^visual": "model.visual", r"^model(?!\.(language_model|visual))": "model.language_model"}


def attach_vl_adapter(model, info):
    """Load one adapter into the VL base (old or new key layout); an adapter whose weights do not all find
    their layer is an ``InputError`` naming its folder (PEFT only warns, and would score a half-loaded adapter)."""
    import warnings

    from peft import PeftModel

    from core.models.adapter_checks import refuse_pickle_adapter

    name = text_series.adapter_name(info)
    refuse_pickle_adapter(info.path)  # adapter_model.bin only: named, never unpickled (as for text series)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(info.path, adapter_name=name, is_trainable=False, key_mapping=LEGACY_KEYS)
            else:
                model = PeftModel.from_pretrained(model, info.path, adapter_name=name, is_trainable=False,
                                                  key_mapping=LEGACY_KEYS)
        except Exception as e:  # noqa: BLE001 - any failure to read an adapter is reported with its path
            raise InputError(f"{info.path}: adapter does not fit the base model ({str(e).splitlines()[0]})") from None
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    if missing:
        raise InputError(f"{info.path}: adapter weights do not match the base model's layers "
                         f"({missing[0][:300]}...)")
    return model


def _batches(encs: list[VLEncoded], size: int) -> list[list[int]]:
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].input_ids))
    return [order[i: i + size] for i in range(0, len(order), size)]


@torch.no_grad()
def score_vl_series(vs: VLSeries, encs: list[VLEncoded], batch_size: int = 8) -> pd.DataFrame:
    """log p of every completion token under every checkpoint, batch-outer and checkpoint-inner (adapters
    switched, never reloaded; image features computed once per batch when the vision tower is shared).
    -> DataFrame(traj_id, checkpoint, step, position, token_id, logprob)"""
    parts: list[dict] = []
    for idx in _batches(encs, batch_size):
        group = [encs[i] for i in idx]
        batch = None
        features = None
        for name in vs.names:
            with vs.activate(name) as model:
                batch = batch or collate(group, vs.processor, model, vs.series.device)
                if vs.shared_vision and features is None:
                    features = image_features(model, batch.pixel_values, batch.image_grid_thw)
                lps = token_logprobs(model, batch, features if vs.shared_vision else None)
            for e, lp in zip(group, lps, strict=True):
                parts.append({"traj_id": e.id, "checkpoint": name, "step": vs.series.steps[name],
                              "token_id": np.asarray(e.completion_ids), "logprob": lp.cpu().numpy()})
    return _frame(parts, vs.names)


def _frame(parts: list[dict], names: list[str]) -> pd.DataFrame:
    rank = {n: i for i, n in enumerate(names)}
    parts.sort(key=lambda p: rank[p["checkpoint"]])  # checkpoint-major, as core.drift.scoring's table
    n = [len(p["logprob"]) for p in parts]
    return pd.DataFrame({
        "traj_id": np.repeat([p["traj_id"] for p in parts], n),
        "checkpoint": np.repeat([p["checkpoint"] for p in parts], n),
        "step": np.repeat([p["step"] for p in parts], n).astype(np.int64),
        "position": np.concatenate([np.arange(k) for k in n]),
        "token_id": np.concatenate([p["token_id"] for p in parts]),
        "logprob": np.concatenate([p["logprob"] for p in parts]),
    })
