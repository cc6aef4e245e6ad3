"""The series spec: what a job loads (a base model and its checkpoints) and how (device, dtype, the image limits of a
vision-language base, the chat template), declared once and inherited by the configs that load a series.

    @dataclass
    class AnalysisConfig(SeriesSpec):      # base, checkpoints, base_names, device, dtype, trust_remote_code,
        data: str = field(...)             # chat_template, min_pixels, max_pixels; then its own fields

    cfg.vision                             # core.models.vision.VisionConfig of those settings

A training run names its base ``base_model`` and loads no series, so ``core.cpo.config.TrainConfig`` takes only the
pixel limits from here (``pixels_field``): the same help, bounds and check. Light to import (no torch).
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field

from core.config import ConfigBase
from core.io.paths import expand_fields
from core.models.vision import MIN_PIXELS, VisionConfig

DEVICES = ("cuda", "cpu", "mps")  # offered; any torch device string ("cuda:1") is accepted
DTYPES = ("float32", "bfloat16", "float16")

_PIXELS_HELP = {
    "min": "vision-language models: fewest pixels an image is resized to (ms-swift MIN_PIXELS); default: the "
           "checkpoint's preprocessor_config.json",
    "max": "vision-language models: most pixels an image is resized to (ms-swift MAX_PIXELS; the authors used "
           "1003520); default: the checkpoint's",
}


def pixels_field(which: str) -> Field:
    """The ``min_pixels`` (``which="min"``) or ``max_pixels`` field of a config: None means the checkpoint's own."""
    return field(default=None, metadata={"help": _PIXELS_HELP[which], "min": MIN_PIXELS,
                                         "label": f"{which.capitalize()} pixels per image"})


def check_pixel_order(cfg) -> None:
    """``min_pixels`` <= ``max_pixels`` when both are set (each one's bound is checked from its metadata)."""
    if cfg.min_pixels and cfg.max_pixels and cfg.min_pixels > cfg.max_pixels:
        raise ValueError(f"field 'min_pixels': {cfg.min_pixels} is larger than max_pixels ({cfg.max_pixels})")


@dataclass(kw_only=True)
class SeriesSpec(ConfigBase):
    """A base model, its checkpoint series and how to load them (the fields come first in a saved config)."""

    base: str = field(default="", metadata={"help": "the base model folder (config.json, weights, tokenizer)",
                                            "path": True})
    checkpoints: str | list[str] | None = field(default=None, metadata={
        "help": "a trainer output folder (checkpoint-N/, nested v0-*/checkpoint-N too), or checkpoint folders in "
                "order", "path": True})
    base_names: list[str] = field(default_factory=list, metadata={
        "help": "other names of the base model in adapter configs (base_model_name_or_path)", "flag": "--base-name"})
    device: str | None = field(default=None, metadata={"help": "the torch device (auto: the best available)",
                                                       "suggestions": DEVICES, "none": "auto", "label": "Device"})
    dtype: str | None = field(default=None, metadata={"help": "the weights' dtype (auto: bfloat16 on CUDA, float32 on CPU)",
                                                      "choices": DTYPES, "none": "auto", "label": "dtype"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "run Python code shipped in the model folder (off unless you trust its source)"})
    chat_template: bool = field(default=True, metadata={
        "help": "conversational records (messages) through the tokenizer's chat template, as the model was trained "
                "(when it has one); off: the prompt text alone", "label": "Chat template for conversations"})
    min_pixels: int | None = pixels_field("min")
    max_pixels: int | None = pixels_field("max")

    def __post_init__(self) -> None:
        super().__post_init__()
        expand_fields(self)  # "~/models/base" and "$DATA/x.jsonl" as a shell would read them
        if not self.base:
            raise ValueError("field 'base': expected the base model folder, got an empty path")
        check_pixel_order(self)

    @property
    def vision(self) -> VisionConfig:
        """The image settings of a vision-language series (``core.models.vision.VisionConfig``)."""
        return VisionConfig.of(self)
