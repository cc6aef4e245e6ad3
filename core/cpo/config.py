"""The config of a CPO run (``TrainConfig``), saved as ``config.json`` in its run folder.

Light to import (no torch, no TRL): the pages, the command line and the job registry read it; the objectives
themselves live in ``core.cpo.trainer`` and the run in ``core.cpo.train``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from core.errors import InputError
from core.io import jsonsafe
from core.io.paths import expand_optional
from core.models.vision import MIN_PIXELS

OBJECTIVES = ("cpo", "cpo++", "sft")  # implemented in core.cpo.trainer (torch + TRL), named here so configs import light
NEGATIVES = ("counterfactual", "random")


@dataclass
class TrainConfig:
    """One CPO run. Defaults: the authors' script (LoRA all-linear r=8 alpha=32, bf16 on CUDA)."""

    base_model: str  # base model folder (local path)
    data: str  # TRL preference JSONL: prompt, chosen, rejected, optional source, weight
    output_dir: str
    init_adapter: str | None = None  # continue this LoRA checkpoint (e.g. the drifted sample_data/rft/checkpoint-160)
    objective: str = "cpo"  # "cpo" | "cpo++" | "sft" (see core.cpo.trainer)
    negatives: str = "counterfactual"  # "random": rejected = another pair's chosen of another label (seeded)
    max_steps: int = 60
    learning_rate: float = 2e-5
    beta: float = 0.1
    cpo_alpha: float = 1.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 256
    lora_r: int = 8
    lora_alpha: int = 32
    bf16: bool | None = None  # None: bf16 on CUDA, fp32 on CPU
    seed: int = 0
    save_steps: int = 20
    logging_steps: int = 1
    resume: bool = False  # continue from the last checkpoint-N in output_dir
    base_names: list[str] = field(default_factory=list)  # names of the base in adapter configs
    gradient_checkpointing: bool = False  # trade compute for memory on large models
    source_weights: dict[str, float] = field(default_factory=dict)  # per-source pair weight (cpo++), replacing
    # the pairs file's ``weight`` of that source, e.g. {"image_swap": 0.5} for the visual pairs
    min_pixels: int | None = None  # vision-language bases: the image processor's limits (None: the checkpoint's)
    max_pixels: int | None = None  # (the authors: MAX_PIXELS=1003520)

    def __post_init__(self) -> None:
        checks = [("objective", self.objective in OBJECTIVES, f"one of {', '.join(OBJECTIVES)}"),
                  ("negatives", self.negatives in NEGATIVES, f"one of {', '.join(NEGATIVES)}")]
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "max_length", "lora_r",
                     "lora_alpha", "save_steps", "logging_steps"):
            value = getattr(self, name)
            checks.append((name, isinstance(value, int) and not isinstance(value, bool) and value > 0,
                           "a positive integer"))
        for name in ("learning_rate", "beta"):
            checks.append((name, isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0,
                           "a positive number"))
        checks.append(("cpo_alpha", isinstance(self.cpo_alpha, (int, float)) and self.cpo_alpha >= 0,
                       "a number >= 0"))
        for name in ("base_model", "data", "output_dir", "init_adapter"):  # "~" and "$VAR" as a shell reads them
            if isinstance(getattr(self, name), str):
                setattr(self, name, expand_optional(getattr(self, name)))
        for name in ("base_model", "data", "output_dir"):
            checks.append((name, isinstance(getattr(self, name), str) and getattr(self, name).strip() != "",
                           "a non-empty path"))
        checks.append(("source_weights", isinstance(self.source_weights, dict) and all(
            isinstance(k, str) and isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0
            for k, w in self.source_weights.items()), "an object of source name -> positive number"))
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            checks.append((name, value is None or (isinstance(value, int) and not isinstance(value, bool)
                                                   and value >= MIN_PIXELS), f"null or an integer >= {MIN_PIXELS}"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"field {name!r}: expected {expected}, got {getattr(self, name)!r}")

    def save(self, path: str | Path) -> None:
        from core.io.cache import atomic_write_text

        atomic_write_text(Path(path), json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read a config JSON; unknown or bad fields raise InputError naming the file and the field."""
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not a readable JSON config ({e})") from None
        data = jsonsafe.loads(text, str(path))
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object of TrainConfig fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{path}: unknown field {unknown[0]!r} (expected some of {', '.join(sorted(known))})")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise InputError(f"{path}: {e}") from None


