"""LoRA on the language model only, scoring equal to a direct forward, the probe equal to re-encoding."""

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core.drift.probe import ProbeConfig
from core.drift.vl_scoring import (
    first_probe_position,
    image_features,
    probe_vl,
    probe_vl_naive,
    token_logprobs,
    vision_untouched,
)
from core.errors import InputError
from core.models.vision import IMAGE_PAD, collate
from core.models.vl_series import lm_lora_targets, load_vl_series, score_vl_series

LABELS = ["Pneumonia", "Cardiomegaly", "Edema", "No Finding"]
PROBE = ProbeConfig(labels=LABELS)


@torch.no_grad()
def direct(model, e, pad_id):
    """The reference: one record, the model's own full forward (it computes its 3-D positions itself)."""
    ids = torch.tensor([e.input_ids])
    kw = {}
    if e.pixel_values is not None:
        kw = dict(pixel_values=e.pixel_values, image_grid_thw=e.image_grid_thw, mm_token_type_ids=(ids == pad_id).int())
    logp = torch.log_softmax(model(input_ids=ids, **kw).logits[0].float(), -1)  # (T, V)
    return logp[e.start - 1: -1].gather(-1, ids[0, e.start:, None]).squeeze(-1)


def test_lora_targets_the_language_model_only(vl_series):
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = vl_series.series.model
    adapted = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    assert adapted and all(".language_model." in n for n in adapted)
    assert len(adapted) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert vision_untouched(model) and vl_series.shared_vision
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

    from core.models.vision import load_vl_model

    peft = get_peft_model(load_vl_model(tiny_vl), LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(tmp_path / "checkpoint-1")
    vs = load_vl_series(tiny_vl, [tmp_path / "checkpoint-1"])
    assert not vision_untouched(vs.series.model) and not vs.shared_vision


@pytest.mark.parametrize("name", ["base", "checkpoint-4"])
def test_scoring_equals_a_direct_forward(vl_series, vl_encoded, name):
    pad = vl_series.processor.token_id(IMAGE_PAD)
    with vl_series.activate(name) as model:
        batch = collate(vl_encoded, vl_series.processor, model)  # padded: rows of different lengths
        assert batch.attention_mask.sum(1).tolist() != [batch.input_ids.shape[1]] * len(vl_encoded)
        got = token_logprobs(model, batch)
        for e, lp in zip(vl_encoded, got, strict=True):
            torch.testing.assert_close(lp, direct(model, e, pad), rtol=1e-4, atol=1e-4)
        # image tokens are never scored rows: the completion mask holds completion tokens only
        assert not (batch.completion_mask & (batch.input_ids == pad)).any()
        assert batch.completion_mask.sum() == sum(len(e.completion_ids) for e in vl_encoded)


def test_three_d_positions_matter(vl_series, vl_encoded):
    """The check above could not tell 3-D positions from 1-D ones unless they change the result."""
    with vl_series.activate("base") as model:
        batch = collate(vl_encoded[:1], vl_series.processor, model)
        right = token_logprobs(model, batch)[0]
        batch.position_ids = (batch.attention_mask.cumsum(-1) - 1)[None].expand(3, -1, -1)
        wrong = token_logprobs(model, batch)[0]
    assert (right - wrong).abs().max() > 1e-3


def test_series_scoring_table(vl_series, vl_encoded):
    df = score_vl_series(vl_series, vl_encoded, batch_size=2)
    n = sum(len(e.completion_ids) for e in vl_encoded)
    assert len(df) == 3 * n and list(df["checkpoint"].unique()) == vl_series.names
    pad = vl_series.processor.token_id(IMAGE_PAD)
    with vl_series.activate("checkpoint-2") as model:
        ref = direct(model, vl_encoded[1], pad).numpy()
    got = df[(df.checkpoint == "checkpoint-2") & (df.traj_id == vl_encoded[1].id)].sort_values("position")
    np.testing.assert_allclose(got["logprob"].to_numpy(), ref, rtol=1e-4, atol=1e-4)
    assert got["token_id"].tolist() == vl_encoded[1].completion_ids


@pytest.mark.parametrize("name", ["base", "checkpoint-2"])
def test_probe_equals_naive_reencoding(vl_series, vl_encoded, name):
    positions = [[e.start, e.start + 2, e.think_end] for e in vl_encoded]
    with vl_series.activate(name) as model:
        fast = probe_vl(model, vl_series.processor, vl_encoded, positions, PROBE, LABELS)
        for e, ch, got in zip(vl_encoded, positions, fast, strict=True):
            ref = probe_vl_naive(model, vl_series.processor, e, ch, PROBE, LABELS)
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
            assert got.shape == (3, len(LABELS))


def test_probe_with_shared_image_features(vl_series, vl_encoded):
    positions = [[e.think_end] for e in vl_encoded]
    with vl_series.activate("base") as model:
        batch = collate(vl_encoded, vl_series.processor, model)
        feats = image_features(model, batch.pixel_values, batch.image_grid_thw)
    with vl_series.activate("checkpoint-4") as model:
        shared = probe_vl(model, vl_series.processor, vl_encoded, positions, PROBE, LABELS, feats)
        own = probe_vl(model, vl_series.processor, vl_encoded, positions, PROBE, LABELS)
    for a, b in zip(shared, own, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_probe_refuses_to_cut_an_image(vl_series, vl_encoded):
    e = vl_encoded[0]
    first = first_probe_position(e, vl_series.processor)
    assert e.input_ids[first - 1] == vl_series.processor.token_id("<|vision_end|>")
    with vl_series.activate("base") as model, pytest.raises(InputError, match="cuts an image"):
        probe_vl(model, vl_series.processor, [e], [[first - 2, e.think_end]], PROBE, LABELS)


def test_full_vl_checkpoint_is_loaded_when_activated(tiny_vl, vl_encoded, tmp_path):
    """A merged (full) checkpoint, as ms-swift's ``-merged`` folders: loaded through the image-text-to-text
    class when activated; its vision tower may differ, so image features are not shared."""
    from core.models.vision import load_vl_model

    model = load_vl_model(tiny_vl)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    model.save_pretrained(tmp_path / "checkpoint-8-merged")
    vs = load_vl_series(tiny_vl, [tmp_path / "checkpoint-8-merged"], device="cpu")  # fp32, as the direct forward
    assert not vs.shared_vision and vs.names == ["base", "checkpoint-8-merged"]
    df = score_vl_series(vs, vl_encoded[:1])
    base, merged = (df[df.checkpoint == n]["logprob"].to_numpy() for n in vs.names)
    pad = vs.processor.token_id(IMAGE_PAD)
    np.testing.assert_allclose(merged, direct(model, vl_encoded[0], pad).numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(base, merged)


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
        vs = load_vl_series(tiny_vl, [folder])
        with vs.activate("checkpoint-2") as model:
            out[str(folder)] = torch.cat(token_logprobs(model, collate(vl_encoded, vs.processor, model)))
    a, b = out.values()
    torch.testing.assert_close(a, b)


def test_adapter_whose_weights_find_no_layer_is_named(tiny_vl, vl_adapters, tmp_path):
    broken = _rekeyed(vl_adapters / "checkpoint-4", tmp_path / "checkpoint-4", "self_attn.q_proj", "self_attn.qq_proj")
    with pytest.raises(InputError, match=f"{broken}: adapter weights do not match"):
        load_vl_series(tiny_vl, [broken])
