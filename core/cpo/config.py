"""The config of a CPO run (``TrainConfig``), saved as ``config.json`` in its run folder.

Light to import (no torch, no TRL): the pages, the command line and the job registry read it; the objectives
themselves live in ``core.cpo.trainer`` and the run in ``core.cpo.train``. Loading, flags and the runs page's
form come from ``core.config.ConfigBase``; the pixel limits from ``core.models.spec``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.config import ConfigBase
from core.io.pairs import is_weight
from core.io.paths import expand_fields
from core.models.spec import check_pixel_order, pixels_field

# implemented in core.cpo.trainer (torch + TRL), named here with what each does so that configs and pages import light
OBJECTIVES = {"cpo": "CPO: contrastive preference loss + NLL on chosen (reference-free; the authors' script)",
              "cpo++": "CPO++: sigmoid DPO against the frozen SFT model, pairs weighted per source",
              "sft": "SFT baseline: NLL on the chosen side only"}
NEGATIVES = {"counterfactual": "the pair's counterfactual chain of thought",
             "random": "another study's chain of thought with a different answer (the paper's 'DPO with random "
                       "negatives' baseline, built from the same pairs, seeded)"}
SOURCE_WEIGHTS = "an object of source name -> positive finite number"


def _positive(help_: str, default: int, **meta) -> int:
    return field(default=default, metadata={"help": help_, "min": 1, **meta})


@dataclass
class TrainConfig(ConfigBase):
    """One CPO run. Defaults: the authors' script (LoRA all-linear r=8 alpha=32, bf16 on CUDA)."""

    what: ClassVar[str] = "CPO run config"

    base_model: str = field(metadata={"help": "the base model folder (a local path)", "path": True})
    data: str = field(metadata={"help": "TRL preference JSONL: prompt, chosen, rejected, optional source, weight",
                                "path": True})
    output_dir: str = field(metadata={"help": "the run folder (metrics.jsonl, checkpoint-N/, adapter/)",
                                      "path": True})
    init_adapter: str | None = field(default=None, metadata={
        "help": "continue this LoRA checkpoint (e.g. a drifted RFT checkpoint); default: a new adapter on the base",
        "path": True})
    objective: str = field(default="cpo", metadata={"help": "the loss (core.cpo.trainer)", "choices": OBJECTIVES})
    negatives: str = field(default="counterfactual", metadata={"help": "the rejected side", "choices": NEGATIVES,
                                                               "label": "Rejected side"})
    max_steps: int = _positive("optimizer steps", 60)
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate", "gt": 0})
    beta: float = field(default=0.1, metadata={"help": "preference loss temperature (DPO / CPO beta)", "gt": 0,
                                               "label": "beta"})
    cpo_alpha: float = field(default=1.0, metadata={"help": "cpo: weight of the NLL term on the chosen side "
                                                            "(TRL's cpo_alpha; 0: the preference loss alone)",
                                                    "min": 0, "label": "NLL weight (cpo_alpha)"})
    batch_size: int = _positive("pairs per device per step", 8)
    gradient_accumulation_steps: int = _positive("batches accumulated per optimizer step", 1)
    max_length: int = _positive("tokens of prompt + completion kept (longer pairs are cut)", 256,
                                label="Max length (tokens)")
    lora_r: int = _positive("LoRA rank (a continued adapter keeps its own)", 8, label="LoRA r")
    lora_alpha: int = _positive("LoRA scaling alpha", 32, label="LoRA alpha")
    bf16: bool | None = field(default=None, metadata={"help": "train in bfloat16; default: on CUDA, fp32 on CPU",
                                                      "none": "auto"})
    seed: int = field(default=0, metadata={"help": "seeds the data order, LoRA init and random negatives",
                                           "min": 0})
    save_steps: int = _positive("steps between checkpoint-N saves (resume points)", 20)
    logging_steps: int = _positive("steps between metrics.jsonl lines", 1)
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint-N in output_dir"})
    base_names: list[str] = field(default_factory=list, metadata={
        "help": "other names of the base model in adapter configs", "flag": "--base-name"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "trade compute for memory on large models"})
    source_weights: dict[str, float] = field(default_factory=dict, metadata={
        "help": "per-source pair weight (cpo++), replacing the pairs file's weight of that source, e.g. "
                '{"image_swap": 0.5} for the visual pairs', "expected": SOURCE_WEIGHTS})
    image_roots: list[str] | None = field(default=None, metadata={
        "help": "the folders the data file and its pairs' images must lie in (the runs page sets its data roots); "
                "default: unchecked (your own command line)", "path": True})
    min_pixels: int | None = pixels_field("min")
    max_pixels: int | None = pixels_field("max")

    def __post_init__(self) -> None:
        super().__post_init__()
        expand_fields(self)  # "~" and "$VAR" as a shell reads them
        for name in ("base_model", "data", "output_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"field {name!r}: expected a non-empty path, got {getattr(self, name)!r}")
        if not isinstance(self.source_weights, dict) or not all(
                isinstance(k, str) and is_weight(w) for k, w in self.source_weights.items()):
            raise ValueError(f"field 'source_weights': expected {SOURCE_WEIGHTS}, got {self.source_weights!r}")
        check_pixel_order(self)


@dataclass
class TrainOptions(ConfigBase):
    """What a training job does after the run (flags beside its ``TrainConfig``; ``--resume`` is a config field)."""

    what: ClassVar[str] = "training options"

    evaluate: str | None = field(default=None, metadata={
        "help": "afterwards, answer this world's held-out sets with the new adapter (evaluation.json)", "path": True})
    evaluate_limit: int | None = field(default=None, metadata={"help": "with --evaluate: the first N held-out "
                                                                       "studies only (the start is evaluated on the "
                                                                       "same N, to compare)", "min": 1})
    evaluate_cache: str | None = field(default=None, metadata={
        "help": "with --evaluate-limit: a folder caching the start's figures per start, N and data", "path": True})

    def __post_init__(self) -> None:
        super().__post_init__()
        expand_fields(self)
