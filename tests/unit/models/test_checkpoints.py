"""Checkpoint discovery: trainer layouts, ordering by step, metadata, and clear errors."""

import json

import pytest

from core.errors import InputError
from core.models import checkpoints


def _ckpt(path, step=None, kind="adapter", log=None):
    path.mkdir(parents=True)
    (path / ("adapter_config.json" if kind == "adapter" else "config.json")).write_text("{}")
    if step is not None:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": log or []}))
    return path


def test_orders_by_step_not_by_name_and_reads_logged_metrics(tmp_path):
    _ckpt(tmp_path / "checkpoint-100", 100, log=[{"step": 50, "reward": 0.1}, {"step": 100, "reward": 0.9}])
    _ckpt(tmp_path / "checkpoint-20", 20)
    _ckpt(tmp_path / "checkpoint-3", None, kind="full")
    found = checkpoints.discover(tmp_path)
    assert [c.step for c in found] == [3, 20, 100]
    assert [c.kind for c in found] == ["full", "adapter", "adapter"]
    assert found[-1].metrics["reward"] == 0.9


def test_finds_nested_ms_swift_layout(tmp_path):
    _ckpt(tmp_path / "v0-20250101-120000" / "checkpoint-8", 8)
    _ckpt(tmp_path / "v0-20250101-120000" / "checkpoint-4", 4)
    assert [c.step for c in checkpoints.discover(tmp_path)] == [4, 8]


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(InputError, match="nope.*not found"):
        checkpoints.discover(tmp_path / "nope")
    with pytest.raises(InputError, match="no checkpoint-N"):
        checkpoints.discover(tmp_path)


def test_folder_without_weights_config_is_not_a_checkpoint(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(InputError, match="checkpoint-5: not a checkpoint"):
        checkpoints.discover(tmp_path)


def test_broken_trainer_state_is_named(tmp_path):
    p = _ckpt(tmp_path / "checkpoint-5")
    (p / "trainer_state.json").write_text("{oops")
    with pytest.raises(InputError, match="trainer_state.json, line 1: not valid JSON"):
        checkpoints.discover(tmp_path)


def test_check_model_dir_names_what_is_missing(tmp_path, sample_world):
    from core.models.checkpoints import check_model_dir

    assert check_model_dir(sample_world / "model") == sample_world / "model"
    with pytest.raises(InputError, match="not found"):
        check_model_dir(tmp_path / "nowhere")
    with pytest.raises(InputError, match="looks like an adapter"):
        check_model_dir(sample_world / "rft" / "checkpoint-40")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no weights"):
        check_model_dir(tmp_path / "m")


def test_find_candidates_lists_models_and_trainer_folders(sample_world, tmp_path):
    from core.models.checkpoints import find_candidates

    models, series = find_candidates([sample_world, tmp_path / "missing"])
    mm = sample_world / "multimodal"  # the multimodal sample world sits inside the text one's folder
    assert models == [sample_world / "model", mm / "model"] and series == [sample_world / "rft", mm / "rft"]
