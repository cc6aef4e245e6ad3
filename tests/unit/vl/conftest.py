"""Fixtures for the vision-language engine: a tiny Qwen2.5-VL checkpoint folder (random init, its own
tokenizer with Qwen's special tokens, a Qwen2VLImageProcessor config), synthetic X-ray-like images in
MIMIC-CXR's nested layout, and two LoRA checkpoints on the language model in a trainer layout."""

import json

import pytest
import torch

from core.sample.tinyvl import synthetic_xray as xray
from core.sample.tinyvl import write_tiny_vl

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

    from core.vision import load_vl_model
    from core.vl_series import lm_lora_targets

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
    from core.vl_series import load_vl_series

    return load_vl_series(tiny_vl, vl_adapters, device="cpu")


def make_records(images: dict) -> list[dict]:
    """Trajectories with one image, two images and none (a text-only row in the same batch)."""
    from core.images import ImageRef

    def refs(*names):
        return [ImageRef(images[n], f"test, {n}") for n in names]

    return [
        {"id": "one", "prompt": "This is a patient's chest DR image <image>. Please help me determine the disease.",
         "completion": "<think> There is an opacity in the left lower lobe. </think> The disease of this patient is "
                       "Pneumonia.", "label": "Pneumonia", "image_refs": refs("d1")},
        {"id": "two", "prompt": "Prior <image> and current <image>. Disease?",
         "completion": "<think> No effusion. Heart is enlarged. </think> The disease of this patient is Cardiomegaly.",
         "label": "Cardiomegaly", "image_refs": refs("d2", "d4")},
        {"id": "none", "prompt": "No image here. Disease?",
         "completion": "<think> Edema. </think> The disease of this patient is Edema.", "label": "Edema",
         "image_refs": []},
    ]


@pytest.fixture(scope="session")
def vl_encoded(vl_series, images):
    from core.vision import encode_vl

    return encode_vl(vl_series.processor, make_records(images))


@pytest.fixture(scope="session")
def vl_records(images):
    return make_records(images)
