"""Fixtures for engine tests: random-initialised LoRA checkpoints on the quick world's base, and their series."""

import json

import pytest
import torch

from core.series import load_series


@pytest.fixture(scope="session")
def adapters(quick_world, tmp_path_factory):
    """Two LoRA checkpoints with random (non-zero) weights on the quick world's base, in a trainer layout."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("run")
    for seed, step in ((1, 2), (2, 4)):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(quick_world / "model")
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        peft.peft_config["default"].base_model_name_or_path = "cxr-demo-tiny-llama"
        peft.save_pretrained(run / f"checkpoint-{step}", save_embedding_layers=False)
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return run


@pytest.fixture(scope="session")
def series(quick_world, adapters):
    return load_series(quick_world / "model", adapters, base_names=["cxr-demo-tiny-llama"])


