"""The Qwen2-VL row of the family matrix (``core.models.families.matrix``): a tiny random Qwen2-VL (its own vision
tower: one patch embedding, 2 blocks, the merger; the language model with 3-D rotary positions), saved as a user's
checkpoint folder with Qwen's tokenizer and a ``Qwen2VLImageProcessor`` config, a LoRA checkpoint on its language
model in TRL's layout, through the Qwen-VL backend: scoring equal to the model's direct forward, the probe equal to
re-encoding with the image, a left-padded batch decoded as each record alone, and a CPO step that trains the
language model's LoRA and leaves the vision tower as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.drift.probe import ProbeConfig, probe_at, tokens_of
from core.models.families import QWEN_VL_FAMILY, family_for
from core.models.families.qwen_vl.forward import naive_label_logprobs, token_logprobs
from core.models.families.qwen_vl.inputs import IMAGE_PAD, collate, encode_vl, load_vl_model
from core.models.forward import inner
from core.models.series import load_series
from tests.unit.models.families.qwen_vl.test_forward import direct
from tests.unit.models.families.qwen_vl.test_generation import _tokens
from tests.vl_world import make_records
from workbench.demo.tinyvl import make_tokenizer, preprocessor_config

LABELS = ["Pneumonia", "Cardiomegaly", "Edema", "No Finding"]


def write_qwen2_vl(out, seed: int = 0):
    """A Qwen2-VL checkpoint folder: config.json, model.safetensors, tokenizer files, preprocessor_config.json."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = make_tokenizer()
    ids = tok.convert_tokens_to_ids
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids(IMAGE_PAD),
                           video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                           vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(config).eval().save_pretrained(out)
    tok.save_pretrained(out)
    pre = {**preprocessor_config(), "processor_class": "Qwen2VLProcessor"}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_qwen2_vl(tmp_path_factory.mktemp("models") / "Qwen2-VL-tiny")


@pytest.fixture(scope="module")
def series(folder, tmp_path_factory):
    """The base and one LoRA checkpoint (random, non-zero) on the language model's linear layers, TRL's layout."""
    from peft import LoraConfig, get_peft_model

    run = tmp_path_factory.mktemp("qwen2-vl-run")
    torch.manual_seed(1)
    base = load_vl_model(folder)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=QWEN_VL_FAMILY.lora_targets(base), init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(run / "checkpoint-2")
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    return load_series(folder, run, device="cpu")


@pytest.fixture(scope="module")
def encoded(series, images):
    return encode_vl(series.processor, make_records(images))


def test_qwen2_vl_is_served_by_the_qwen_vl_backend(folder, series):
    assert family_for(folder) is QWEN_VL_FAMILY and series.family is QWEN_VL_FAMILY
    assert type(inner(series.model)).__name__ == "Qwen2VLForConditionalGeneration" and series.names == ["base", "checkpoint-2"]


@pytest.mark.parametrize("name", ["base", "checkpoint-2"])
def test_qwen2_vl_scoring_equals_a_direct_forward(series, encoded, name):
    pad = series.processor.token_id(IMAGE_PAD)
    with series.activate(name) as model:
        got = token_logprobs(model, collate(encoded, series.processor, model))
        for e, lp in zip(encoded, got, strict=True):
            torch.testing.assert_close(lp, direct(model, e, pad), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["base", "checkpoint-2"])
def test_qwen2_vl_probe_equals_naive_reencoding(series, encoded, name):
    cfg = ProbeConfig(labels=LABELS)
    tk = tokens_of(series.tokenizer, cfg, LABELS)
    positions = [list(range(e.start, len(e.input_ids), 3)) for e in encoded]  # along the whole CoT
    with series.activate(name) as model:
        fast = probe_at(series, model, encoded, positions, cfg, LABELS)
        for e, ch, got in zip(encoded, positions, fast, strict=True):
            np.testing.assert_allclose(got, naive_label_logprobs(model, series.processor, e, ch, tk), rtol=1e-4,
                                       atol=1e-4)


def test_qwen2_vl_batch_decodes_each_record_as_alone(series, encoded):
    proc = series.processor
    with series.activate(series.names[-1]) as model:
        together = _tokens(model, proc, encoded, 10)
        for row, e in zip(together, encoded, strict=True):
            assert row.tolist() == _tokens(model, proc, [e], 10)[0].tolist(), e.id


def test_qwen2_vl_cpo_step_trains_the_language_model_lora_and_not_the_vision_tower(folder, tmp_path):
    from core.cpo.config import TrainConfig
    from core.cpo.train import build_trainer
    from tests.vl_pairs import write_vl_pairs
    from tests.vl_world import make_vl_world

    root = make_vl_world(tmp_path / "world").parent
    pairs = write_vl_pairs(root, root / "pairs" / "train.jsonl")
    cfg = TrainConfig(base_model=str(folder), data=str(pairs), output_dir=str(tmp_path / "run"), lora_r=2,
                      lora_alpha=4, max_steps=1, batch_size=4, learning_rate=1e-2, save_steps=1)
    trainer = build_trainer(cfg)
    named = dict(trainer.model.named_parameters())
    visual = {n: p.detach().clone() for n, p in named.items() if ".visual." in n}
    lora = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
    assert visual and lora and all(".language_model." in n for n in lora)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in visual.items())  # bitwise: frozen
    moved = {n for n, v in lora.items() if not torch.equal(after[n], v)}
    assert moved == {n for n in lora if "lora_B" in n}  # a new LoRA (B = 0): one step moves every B, no A yet
