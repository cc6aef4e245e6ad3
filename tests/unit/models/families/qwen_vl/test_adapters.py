"""Qwen-VL adapters (core.models.families.qwen_vl.adapters): LoRA on the language model only, the vision tower
untouched and its features shared, adapters of the pre-4.52 key layout, and adapters that do not fit."""

import re

import pytest
import torch
from safetensors.torch import load_file

from core.errors import InputError
from core.models.families import QWEN_VL_FAMILY
from core.models.families.qwen_vl.adapters import lm_lora_targets
from core.models.families.qwen_vl.forward import image_features, token_logprobs
from core.models.families.qwen_vl.inputs import collate, load_vl_model
from core.models.series import load_series


def test_lora_targets_the_language_model_only(vl_series):
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = vl_series.model
    adapted = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    assert adapted and all(".language_model." in n for n in adapted)
    assert len(adapted) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert QWEN_VL_FAMILY.frozen_untouched(model) and vl_series.shared_inputs
    assert QWEN_VL_FAMILY.frozen_modules(model) == ["model.visual"]  # the vision tower and its merger
    pattern = lm_lora_targets(model)  # PEFT full-matches target_modules regexes against module names
    assert re.fullmatch(pattern, "model.language_model.layers.0.mlp.gate_proj")
    assert not re.fullmatch(pattern, "model.visual.blocks.0.mlp.gate_proj")  # same leaf name, vision tower
    assert not re.fullmatch(pattern, "lm_head") and not re.fullmatch(pattern, "model.visual.merger.mlp.0")


def test_vision_tower_untouched_and_lm_lora_changes_logits(vl_series, tiny_vl, vl_encoded):
    saved = {k: v for k, v in load_file(tiny_vl / "model.safetensors").items() if ".visual." in k or "visual." in k}
    assert saved
    batch = None
    out = {}
    for name in vl_series.names:
        with vl_series.activate(name) as model:
            visual = dict(model.get_base_model().model.visual.named_parameters())
            for key, value in saved.items():
                assert torch.equal(visual[key.split("visual.", 1)[1]], value), (name, key)
            batch = batch or collate(vl_encoded, vl_series.processor, model)
            out[name] = torch.cat(token_logprobs(model, batch))
            feats = image_features(model, batch.pixel_values, batch.image_grid_thw)["image"].pooler_output
            out[name + ":img"] = torch.cat(feats)
    assert vl_series.names == ["base", "checkpoint-2", "checkpoint-4"]
    assert not torch.allclose(out["base"], out["checkpoint-2"]) and not torch.allclose(out["checkpoint-2"], out["checkpoint-4"])
    assert torch.equal(out["base:img"], out["checkpoint-2:img"]) and torch.equal(out["base:img"], out["checkpoint-4:img"])


def test_all_linear_adapter_is_seen_touching_the_vision_tower(tiny_vl, tmp_path):
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(load_vl_model(tiny_vl), LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(tmp_path / "checkpoint-1")
    vs = load_series(tiny_vl, [tmp_path / "checkpoint-1"])
    assert not QWEN_VL_FAMILY.frozen_untouched(vs.model) and not vs.shared_inputs


def _rekeyed(src, dst, old: str, new: str):
    """A copy of an adapter folder with its weight names rewritten (another layout of the same adapter)."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "adapter_model.safetensors")
    save_file({k.replace(old, new): v for k, v in weights.items()}, dst / "adapter_model.safetensors")
    return dst


def test_adapter_in_the_pre_4_52_layout_loads_like_the_new_one(tiny_vl, vl_adapters, vl_encoded, tmp_path):
    """ms-swift adapters from older transformers name the language model ``model.layers``."""
    legacy = _rekeyed(vl_adapters / "checkpoint-2", tmp_path / "checkpoint-2", "model.language_model.", "model.")
    assert not any("language_model" in k for k in load_file(legacy / "adapter_model.safetensors"))
    out = {}
    for folder in (vl_adapters / "checkpoint-2", legacy):
        vs = load_series(tiny_vl, [folder])
        with vs.activate("checkpoint-2") as model:
            out[str(folder)] = torch.cat(token_logprobs(model, collate(vl_encoded, vs.processor, model)))
    a, b = out.values()
    torch.testing.assert_close(a, b)


def test_adapter_whose_weights_find_no_layer_is_named(tiny_vl, vl_adapters, tmp_path):
    broken = _rekeyed(vl_adapters / "checkpoint-4", tmp_path / "checkpoint-4", "self_attn.q_proj", "self_attn.qq_proj")
    with pytest.raises(InputError, match=f"{broken}: adapter weights do not match"):
        load_series(tiny_vl, [broken])
