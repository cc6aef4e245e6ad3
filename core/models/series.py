"""Load a base model and its checkpoint series once; switch between checkpoints without reloading.

    series = load_series("sample_data/model", "sample_data/rft")
    for name in series.names:                 # "base", "checkpoint-40", ...
        with series.activate(name) as model:  # adapters: set_adapter under the series' lock
            logits = model(input_ids).logits

One base model lives in memory; every PEFT adapter is loaded into it once (``load_adapter``) and selected
with ``set_adapter``; the base itself is scored with the adapters disabled. Full-model checkpoints are
loaded one at a time when activated and released afterwards. Local paths only (``local_files_only``);
``trust_remote_code`` stays off unless the caller asks; safetensors are preferred by transformers.

The model family (``core.models.families``) is chosen once, from the base's ``config.json``, and kept as
``series.family``: it loads the model, its processor and adapters, and is what the scorer, the probe and
greedy decoding call (``series.encode(records)``, ``series.family.completion_hidden(...)``, ...).
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.errors import InputError
from core.io.paths import expand
from core.models import checkpoints as ckpts
from core.models.adapter_checks import check_finite_model, check_full_vocab
from core.models.branches import branch_of, series_parents
from core.models.device import detect
from core.models.families import TEXT_FAMILY, Family, family_for
from core.models.loading import load_tokenizer

BASE = "base"


@dataclass
class ModelSeries:
    base_dir: Path
    checkpoints: list[ckpts.CheckpointInfo]
    model: torch.nn.Module  # a PeftModel when any adapter is loaded
    tokenizer: object
    device: str
    dtype: torch.dtype
    trust_remote_code: bool = False
    warnings: list[str] = field(default_factory=list)  # e.g. adapters naming their base by another name
    family: Family = TEXT_FAMILY  # chosen once from the base's config.json (core.models.families)
    processor: object = None  # the family's: the tokenizer of a text series, a VLProcessor for Qwen-VL
    shared_inputs: bool = True  # no checkpoint touches the family's frozen modules (a vision tower): what they
    # compute for a batch (image features) is the same under every checkpoint and computed once (``keep``)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _layers: list = field(default_factory=list, repr=False)  # PEFT tuner layers, found once
    _slow: bool = field(default=False, repr=False)  # route with PEFT's set_adapter (see _route)
    _kept: tuple | None = field(default=None, repr=False)  # (key, inputs) of the last batch (see ``keep``)

    def __post_init__(self):
        if self.processor is None:
            self.processor = self.tokenizer  # a series built by hand from a model and its tokenizer

    @property
    def names(self) -> list[str]:
        return [BASE] + [adapter_name(c) for c in self.checkpoints]

    @property
    def steps(self) -> dict[str, int]:
        return {BASE: 0, **{adapter_name(c): c.step for c in self.checkpoints}}

    @property
    def parents(self) -> dict[str, str]:
        """What each checkpoint's ``kl_prev`` / ``js_prev`` compare it with (``core.models.branches.series_parents``):
        a CPO run's adapter its start, any other checkpoint the previous one that is not a CPO run."""
        return series_parents(self.names, branch_starts(self.checkpoints))

    @contextmanager
    def activate(self, name: str) -> Iterator[torch.nn.Module]:
        """The model in the state of checkpoint ``name``, held under the series' lock."""
        with self.lock:
            if name == BASE:
                self._route(None)
                yield self.model
                return
            info = {adapter_name(c): c for c in self.checkpoints}.get(name)
            if info is None:
                raise KeyError(f"unknown checkpoint {name!r}; known: {self.names}")
            if info.kind == "adapter":
                self._route(name)
                yield self.model
                return
            full = self.family.load_model(info.path, self.device, self.dtype, self.trust_remote_code)
            check_finite_model(full, info.path)
            try:
                yield full
            finally:
                del full
                gc.collect()
                if self.device == "cuda":
                    torch.cuda.empty_cache()

    def _route(self, adapter: str | None) -> None:
        """Send every LoRA layer through ``adapter`` (None: adapters off, i.e. the base model).

        PEFT's ``set_adapter`` / ``disable_adapter`` walk the whole module tree on every switch and redo
        requires_grad bookkeeping; a series is frozen (loaded with is_trainable=False), so setting the two
        routing attributes on the tuner layers, found once, is equivalent and costs O(layers), not O(modules).
        """
        if not hasattr(self.model, "peft_config"):
            return
        if not self._layers:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
            # adapters that also train whole modules (modules_to_save, trainable tokens) keep per-adapter
            # copies in wrappers that are not tuner layers: those need PEFT's own switching
            self._slow = any(type(m).__name__ in ("ModulesToSaveWrapper", "TrainableTokensWrapper")
                             for m in self.model.modules())
            if not self._slow:
                from core.models.lean_lora import (
                    lean_lora_forward,  # imports PEFT: only once a series has adapters
                )

                for layer in self._layers:
                    lean_lora_forward(layer)
        if self._slow:
            if adapter is None:
                self.model.base_model.disable_adapter_layers()
            else:
                self.model.base_model.enable_adapter_layers()
                self.model.set_adapter(adapter)
            return
        for layer in self._layers:
            layer._disable_adapters = adapter is None
            if adapter is not None:
                layer._active_adapter = [adapter]
        if adapter is not None:
            self.model.base_model.active_adapter = adapter

    def fingerprint(self) -> str:
        return series_fingerprint(self.base_dir, self.checkpoints, self.dtype)

    def encode(self, records: list[dict], chat_template: bool = True, where: str = "") -> list:
        """``records`` as this series reads them (its family's ``encode``): a text series through its
        tokenizer, a vision-language one with each record's images (``where``: the data file, for errors)."""
        return self.family.encode(self.processor, records, chat_template, where)

    def keep(self, key, make):
        """One batch's model inputs, built by ``make()`` the first time ``key`` is asked and kept for the next
        checkpoints (scoring is batch-outer): a family's padded batch and shared image features."""
        if self._kept is None or self._kept[0] != key:
            self._kept = None  # the previous batch's tensors are freed before this one's are built
            self._kept = (key, make())
        return self._kept[1]

    def forget_inputs(self) -> None:
        """Free the kept batch (e.g. before the probe builds its own)."""
        self._kept = None


def series_fingerprint(base_dir: Path, infos: list[ckpts.CheckpointInfo], dtype: torch.dtype | str) -> str:
    """Changes whenever the base, any checkpoint's weights or configs, or the dtype change (no loading)."""
    h = hashlib.sha256(f"{dtype}".encode())
    for root in [Path(base_dir)] + [c.path for c in infos]:
        for f in sorted(root.glob("*")):
            if f.suffix in (".safetensors", ".bin", ".json"):
                st = f.stat()
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def plan_series(base: str | Path, checkpoints=None, device: str | None = None, dtype: str | None = None):
    """What ``load_series`` would load, without loading it: (base dir, checkpoint infos, device, dtype)."""
    base = expand(base).resolve()
    dev = device or detect().device
    return base, _resolve_checkpoints(checkpoints), dev, _dtype(dtype, dev)


GENERIC_NAMES = {"adapter", "final", "final_adapter", "output", "model"}  # named after their run folder instead


def adapter_name(info: ckpts.CheckpointInfo) -> str:
    """A name PEFT accepts (no dots), unique within a series: the folder name, or the run folder's name for a
    generic one (a CPO run's ``<run>/adapter`` is called ``<run>``), or parent_folder when names repeat."""
    if info.name in GENERIC_NAMES:
        return re.sub(r"[^A-Za-z0-9_-]", "_", info.path.parent.name)
    return re.sub(r"[^A-Za-z0-9_-]", "_", info.name if not info.metrics.get("_dup") else
                  f"{info.path.parent.name}_{info.name}")


def branch_starts(infos: list[ckpts.CheckpointInfo]) -> dict[str, str]:
    """The CPO runs among a series' checkpoints (``core.models.branches.branch_of``): series name -> start's name."""
    return {adapter_name(c): b.start for c in infos if (b := branch_of(c.path)) is not None}


def _dtype(name: str | None, device: str) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise InputError(f"dtype: expected float32, bfloat16 or float16, got {name!r}") from None


def _check_tokenizer(info: ckpts.CheckpointInfo, base_vocab: dict, trust_remote_code: bool) -> None:
    if not any((info.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return  # adapters usually ship no tokenizer: they use the base's
    vocab = load_tokenizer(info.path, trust_remote_code).get_vocab()
    if vocab != base_vocab:
        diff = len(set(vocab.items()) ^ set(base_vocab.items()))
        raise InputError(f"{info.path}: tokenizer differs from the base model's ({len(vocab)} vs {len(base_vocab)} "
                         f"tokens, {diff} entries differ); expected the same tokenizer across the series")


def base_name_warning(info: ckpts.CheckpointInfo, accepted: set[str]) -> str | None:
    """A message when an adapter names its base differently from the base folder given (a hub id, a path on the
    training cluster): a hint, not proof, so never a refusal; the shapes and the tokenizer are the real checks."""
    cfg_path = info.path / "adapter_config.json"
    try:
        declared = json.loads(cfg_path.read_text(encoding="utf-8-sig")).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{cfg_path}: not valid JSON ({e})") from None
    known = {Path(n.rstrip("/")).name.lower() for n in accepted if n}
    if not declared or Path(str(declared).rstrip("/")).name.lower() in known:
        return None
    return (f"{cfg_path}: base_model_name_or_path {declared!r} is not the name of the base model given "
            f"({sorted(known)}); loaded anyway, since its shapes and tokenizer fit")


def base_name_warnings(base: str | Path, infos: list[ckpts.CheckpointInfo], base_names: Sequence[str] = ()) -> list[str]:
    """``base_name_warning`` of a series' adapters, without loading anything (for the page and ``world create``):
    one message per base name they declare, naming the adapters, not the same message once per checkpoint."""
    base = Path(base).expanduser()
    accepted = {base.name, *base_names, _config_name(base)}
    by_name: dict[str, list[tuple[ckpts.CheckpointInfo, str]]] = {}
    for c in infos:
        if c.kind == "adapter" and (w := base_name_warning(c, accepted)):
            declared = json.loads((c.path / "adapter_config.json").read_text(encoding="utf-8-sig"))
            by_name.setdefault(str(declared.get("base_model_name_or_path")), []).append((c, w))
    known = sorted({Path(n.rstrip("/")).name.lower() for n in accepted if n})
    return [found[0][1] if len(found) == 1 else
            (f"{len(found)} adapters ({', '.join(c.name for c, _ in found)}): base_model_name_or_path {declared!r} "
             f"in their adapter_config.json is not the name of the base model given ({known}); loaded anyway, "
             "since their shapes and tokenizer fit")
            for declared, found in by_name.items()]


def _config_name(base: Path) -> str:
    try:
        return str(json.loads((base / "config.json").read_text(encoding="utf-8-sig")).get("_name_or_path") or "")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return ""


def _resolve_checkpoints(checkpoints: str | Path | Sequence[str | Path] | None) -> list[ckpts.CheckpointInfo]:
    if checkpoints is None:
        return []
    infos = ckpts.resolve(checkpoints)  # a folder, or an explicit list kept in the caller's order
    seen: dict[str, int] = {}
    for c in infos:
        seen[c.name] = seen.get(c.name, 0) + 1
    for c in infos:
        if seen[c.name] > 1:
            c.metrics["_dup"] = True
    return infos


def load_series(base: str | Path, checkpoints: str | Path | Sequence[str | Path] | None = None, *,
                device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False,
                base_names: Sequence[str] = (), vision=None) -> ModelSeries:
    """Load the base model and its processor through the base's family (``core.models.families.family_for``:
    an unsupported ``model_type`` is refused by name), then every adapter checkpoint into it (see module
    docstring). ``vision``: a ``core.models.vision.VisionConfig``, the pixel limits of a family that reads images."""
    base = expand(base).resolve()
    if not base.is_dir():
        raise InputError(f"{base}: base model folder not found")
    if not (base / "config.json").is_file():
        raise InputError(f"{base}: not a model folder (expected config.json)")
    family = family_for(base)
    infos = _resolve_checkpoints(checkpoints)
    dev = device or detect().device
    dt = _dtype(dtype, dev)
    processor = family.load_processor(base, vision, trust_remote_code)
    tokenizer = family.tokenizer(processor)
    model = family.load_model(base, dev, dt, trust_remote_code)
    check_finite_model(model, base)
    base_vocab = tokenizer.get_vocab()
    for info in infos:
        _check_tokenizer(info, base_vocab, trust_remote_code)
        if info.kind == "full":
            check_full_vocab(info.path, model.config)  # another vocabulary: refused now, not an einsum error later
        if info.kind == "adapter":
            model = family.attach_adapter(model, info.path, adapter_name(info))
    shared = all(c.kind == "adapter" for c in infos) and (not hasattr(model, "peft_config")
                                                          or family.frozen_untouched(model))
    notes = base_name_warnings(base, infos, base_names)
    for note in notes:  # printed by the command line; the page shows ModelSeries.warnings
        warnings.warn(note, stacklevel=2)
    return ModelSeries(base, infos, model.eval(), tokenizer, dev, dt, trust_remote_code, warnings=notes,
                       family=family, processor=processor, shared_inputs=shared)
