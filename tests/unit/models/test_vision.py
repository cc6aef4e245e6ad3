"""One VisionConfig (core.models.vision): pixel limits checked against one minimum, read from any config that
carries them (no positional tuples), file limits under their own names, and saved configs with max_pixels
still loading into the same limits."""

import json

import pytest

from core.cpo.config import TrainConfig
from core.drift.analysis import AnalysisConfig
from core.io.images import ImageLimits
from core.models.vision import MIN_PIXELS, VisionConfig
from core.perturb.visual import VisualConfig


def test_the_limits_are_checked_against_one_minimum():
    assert MIN_PIXELS == 28 * 28
    VisionConfig(min_pixels=MIN_PIXELS, max_pixels=MIN_PIXELS)
    for bad in (MIN_PIXELS - 1, 0, True, 1.5e6):
        with pytest.raises(ValueError, match=f"max_pixels: expected null or an integer >= {MIN_PIXELS}"):
            VisionConfig(max_pixels=bad)
    with pytest.raises(ValueError, match="min_pixels .* is larger than max_pixels"):
        VisionConfig(min_pixels=200_000, max_pixels=100_000)
    with pytest.raises(ValueError, match=f"'max_pixels': expected null or an integer >= {MIN_PIXELS}"):
        TrainConfig(base_model="m", data="d", output_dir="o", max_pixels=MIN_PIXELS - 1)


def test_every_config_with_pixel_limits_gives_the_same_vision_config(tmp_path):
    want = VisionConfig(min_pixels=56 * 56, max_pixels=1003520)
    analysis = AnalysisConfig(base="b", data="d.jsonl", min_pixels=56 * 56, max_pixels=1003520)
    train = TrainConfig(base_model="m", data="d", output_dir="o", min_pixels=56 * 56, max_pixels=1003520)
    visual = VisualConfig(base="b", data="d.jsonl", min_pixels=56 * 56, max_pixels=1003520)
    assert analysis.vision == VisionConfig.of(train) == VisionConfig.of(visual) == want
    assert VisionConfig.of(object()) == VisionConfig()  # a config without limits: the checkpoint's own
    with pytest.raises(ValueError, match="max_pixels"):
        AnalysisConfig(base="b", data="d.jsonl", max_pixels=100)


def test_saved_configs_with_max_pixels_load_into_the_same_limits(tmp_path):
    """An analysis folder's config.json and a run's config.json written before the one VisionConfig."""
    folder = tmp_path / "analysis"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"base": "/m", "data": "/d.jsonl", "max_pixels": 1003520,
                                                    "min_pixels": None, "chat_template": True}))
    assert AnalysisConfig.load(folder).vision == VisionConfig(max_pixels=1003520)
    run = TrainConfig(base_model="/m", data="/d.jsonl", output_dir=str(tmp_path / "run"), max_pixels=1003520)
    run.save(tmp_path / "run.json")
    assert VisionConfig.of(TrainConfig.load(tmp_path / "run.json")) == VisionConfig(max_pixels=1003520)


def test_file_limits_are_another_setting_under_their_own_names():
    vision = VisionConfig(max_pixels=MIN_PIXELS, max_file_bytes=1 << 20, max_file_pixels=4_000_000)
    assert vision.limits == ImageLimits(max_file_bytes=1 << 20, max_file_pixels=4_000_000)
    with pytest.raises(ValueError, match="ImageLimits: expected positive limits"):
        ImageLimits(max_file_pixels=0)
