"""Fixtures of the watch's tests: three LoRA checkpoints on the quick world's base, recorded as the callback does."""

from __future__ import annotations

import json
import shutil

import pytest
import torch


@pytest.fixture(scope="session")
def three_steps(quick_world, adapters, tmp_path_factory):
    """A trainer folder with checkpoint-2, -4 (the engine tests' adapters) and -6 (another random adapter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("three") / "run"
    shutil.copytree(adapters, run)
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(quick_world / "model")
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(run / "checkpoint-6", save_embedding_layers=False)
    (run / "checkpoint-6" / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
    return run


@pytest.fixture
def recorded(three_steps, tmp_path):
    """A callback's watch folder holding the three checkpoints (keep="all")."""
    from core.watch import callback

    watch = callback.init_watch(tmp_path / "watch", keep="all", source="callback")
    for step in (2, 4, 6):
        callback.record(three_steps / f"checkpoint-{step}", watch, step)
    return watch
