"""Fixtures for engine tests: random-initialised LoRA checkpoints on the quick world's base, and their series;
for the vision-language engine, a tiny Qwen2.5-VL checkpoint folder (random init, its own tokenizer with Qwen's
special tokens, a Qwen2VLImageProcessor config), synthetic X-ray-like images in MIMIC-CXR's nested layout, and
two LoRA checkpoints on its language model in a trainer layout."""

import json

import pytest
import torch

from core.models.series import load_series
from tests.vl_world import make_records
from workbench.demo.tinyvl import synthetic_xray as xray
from workbench.demo.tinyvl import write_tiny_vl


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


SIZES = {"d1": (90, 70), "d2": (200, 120), "d3": (64, 64), "d4": (150, 300)}  # (height, width)


@pytest.fixture(scope="session")
def tiny_vl(tmp_path_factory):
    """A user's checkpoint folder: config.json, model.safetensors, tokenizer files, preprocessor_config.json."""
    return write_tiny_vl(tmp_path_factory.mktemp("models") / "Qwen2.5-VL-tiny", seed=0)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    """MIMIC-CXR-like layout: root/mimic-cxr-00N/images/<dicom_id>.jpg (JPEG) and one PNG."""
    root = tmp_path_factory.mktemp("MIMIC-CXR")
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        folder = root / f"mimic-cxr-00{i % 2 + 1}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        xray(h, w, i).save(folder / f"{name}.{'png' if name == 'd4' else 'jpg'}")
    return root


@pytest.fixture(scope="session")
def images(image_root):
    return {p.stem: p for p in image_root.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def vl_adapters(tiny_vl, tmp_path_factory):
    """Two LoRA checkpoints (random, non-zero) on the language model's linear layers only."""
    from peft import LoraConfig, get_peft_model

    from core.models.families.qwen_vl.inputs import load_vl_model
    from core.models.families.qwen_vl.adapters import lm_lora_targets

    run = tmp_path_factory.mktemp("vl-run")
    for seed, step in ((1, 2), (2, 4)):
        torch.manual_seed(seed)
        base = load_vl_model(tiny_vl)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=lm_lora_targets(base), init_lora_weights=False)
        peft = get_peft_model(base, cfg)
        peft.save_pretrained(run / f"checkpoint-{step}")
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return run


@pytest.fixture(scope="session")
def vl_series(tiny_vl, vl_adapters):
    from core.models.series import load_series

    return load_series(tiny_vl, vl_adapters, device="cpu")


@pytest.fixture(scope="session")
def vl_encoded(vl_series, images):
    from core.models.families.qwen_vl.inputs import encode_vl

    return encode_vl(vl_series.processor, make_records(images))


@pytest.fixture(scope="session")
def vl_records(images):
    return make_records(images)
