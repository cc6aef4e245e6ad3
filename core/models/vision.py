"""The image settings of a vision-language series: one ``VisionConfig``, and the smallest image a model reads.

Light to import (no torch): the configs of analyses, runs and visual tests build it from their own
``min_pixels`` / ``max_pixels`` fields (``VisionConfig.of(cfg)``), and a family that reads images
(``core.models.families``) applies it when it loads its processor. A text family ignores it.

    vision = VisionConfig(max_pixels=1003520)           # the authors' MAX_PIXELS
    vision = VisionConfig.of(analysis_config)           # the pixel limits an analysis was scored with
    vision.limits                                       # core.io.images.ImageLimits: input files, before decoding

Two kinds of limits, named apart: ``min_pixels`` / ``max_pixels`` are what the image processor resizes an
image to (ms-swift's MIN_PIXELS / MAX_PIXELS); ``max_file_bytes`` / ``max_file_pixels`` are what an input file
may be before it is decoded (``core.io.images.ImageLimits``: decompression bombs, huge files).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.io.images import ImageLimits

MIN_PIXELS = 28 * 28  # one merged 2x2 group of 14x14 patches: the smallest image Qwen2-VL's processor makes


def check_pixels(name: str, value: object) -> int | None:
    """``value`` as a pixel limit (None: the checkpoint's own), else a ``ValueError`` naming ``name``."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < MIN_PIXELS:
        raise ValueError(f"{name}: expected null or an integer >= {MIN_PIXELS} (one merged 28x28 patch), "
                         f"got {value!r}")
    return value


@dataclass(frozen=True)
class VisionConfig:
    """Pixel limits of the image processor (as ms-swift's MIN_PIXELS / MAX_PIXELS) and input-file limits."""
    min_pixels: int | None = field(default=None, metadata={"help": "fewest pixels an image is resized to; "
                                                                   "None: the checkpoint's preprocessor_config"})
    max_pixels: int | None = field(default=None, metadata={"help": "most pixels an image is resized to (the "
                                                                   "authors: 1003520); None: the checkpoint's"})
    max_file_bytes: int = field(default=64 << 20, metadata={"help": "larger image files are refused"})
    max_file_pixels: int = field(default=50_000_000, metadata={"help": "larger images are refused before decoding"})

    def __post_init__(self):
        for name in ("min_pixels", "max_pixels"):
            check_pixels(name, getattr(self, name))
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels})")

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(self.max_file_bytes, self.max_file_pixels)

    @classmethod
    def of(cls, settings: object) -> VisionConfig:
        """The pixel limits of any config that carries ``min_pixels`` / ``max_pixels`` (an analysis, a CPO
        run, a visual test); the file limits keep their defaults."""
        return cls(min_pixels=getattr(settings, "min_pixels", None), max_pixels=getattr(settings, "max_pixels", None))
