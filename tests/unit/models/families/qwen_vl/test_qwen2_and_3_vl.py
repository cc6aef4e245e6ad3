"""The Qwen2-VL and Qwen3-VL rows of the family matrix (``core.models.families.matrix``): a tiny random model of
each (its own vision tower: 2 blocks and the merger; Qwen3-VL's deepstack features from an inner block; the
language model with 3-D rotary positions), saved as a user's checkpoint folder with Qwen's tokenizer and a
``Qwen2VLImageProcessor`` config (Qwen3-VL's 16-pixel patches), a LoRA checkpoint on its language model in TRL's
layout, through the Qwen-VL backend: scoring equal to the model's direct forward, the probe equal to re-encoding
with the image, a left-padded batch decoded as each record alone, and a CPO step whose batch log-probs are the
model's own with each row's image, that trains the language model's LoRA and leaves the vision tower as it was.
Neither AutoProcessor loads here (their video processors need torchvision): the image processor + tokenizer
fallback is what runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.drift.probe import ProbeConfig, probe_at, tokens_of
from core.drift.scoring import ScoreConfig, score
from core.models.families import QWEN_VL_FAMILY, family_for
from core.models.families.qwen_vl.forward import naive_label_logprobs, token_logprobs
from core.models.families.qwen_vl.generation import greedy_vl
from core.models.families.qwen_vl.inputs import IMAGE_PAD, collate, encode_vl, load_vl_model
from core.models.forward import inner
from core.models.series import load_series
from tests.unit.models.families.qwen_vl.test_forward import direct
from tests.unit.models.families.qwen_vl.test_generation import _tokens
from tests.vl_world import make_records
from workbench.demo.tinyvl import make_tokenizer, preprocessor_config

LABELS = ["Pneumonia", "Cardiomegaly", "Edema", "No Finding"]


ARCHS = ("qwen2_vl", "qwen3_vl")


def write_tiny(arch: str, out, seed: int = 0):
    """A Qwen2-VL or Qwen3-VL checkpoint folder: config.json, model.safetensors, tokenizer files and
    preprocessor_config.json (Qwen3-VL: 16-pixel patches, a learned position embedding, deepstack features
    taken from the first vision block)."""
    import transformers

    tok = make_tokenizer()
    ids = tok.convert_tokens_to_ids
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, rope_parameters=rope,
                bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    if arch == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        names, patch = ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"), 14
    else:
        text["rope_parameters"] = {**rope, "mrope_interleaved": True}
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[0])
        names, patch = ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"), 16
    config = getattr(transformers, names[0])(
        text_config=text, vision_config=vision, image_token_id=ids(IMAGE_PAD), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(seed)
    getattr(transformers, names[1])(config).eval().save_pretrained(out)
    tok.save_pretrained(out)
    pre = {**preprocessor_config(), "patch_size": patch, "processor_class": names[2]}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    return out


@pytest.fixture(scope="module", params=ARCHS)
def folder(request, tmp_path_factory):
    return write_tiny(request.param, tmp_path_factory.mktemp("models") / f"{request.param}-tiny")


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


def test_served_by_the_qwen_vl_backend(folder, series):
    assert family_for(folder) is QWEN_VL_FAMILY and series.family is QWEN_VL_FAMILY
    assert inner(series.model).config.model_type == folder.name.removesuffix("-tiny")
    assert series.names == ["base", "checkpoint-2"]


@pytest.mark.parametrize("name", ["base", "checkpoint-2"])
def test_qwen_vl_scoring_equals_a_direct_forward(series, encoded, name):
    pad = series.processor.token_id(IMAGE_PAD)
    frame = score(series, encoded, ScoreConfig(top_k=0, batch_size=3))  # the series: image features shared
    with series.activate(name) as model:
        got = token_logprobs(model, collate(encoded, series.processor, model))
        for e, lp in zip(encoded, got, strict=True):
            ref = direct(model, e, pad)
            torch.testing.assert_close(lp, ref, rtol=1e-4, atol=1e-4)
            rows = frame[(frame.checkpoint == name) & (frame.traj_id == e.id)].sort_values("position")
            np.testing.assert_allclose(rows["logprob"].to_numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["base", "checkpoint-2"])
def test_qwen_vl_probe_equals_naive_reencoding(series, encoded, name):
    cfg = ProbeConfig(labels=LABELS)
    tk = tokens_of(series.tokenizer, cfg, LABELS)
    positions = [list(range(e.start, len(e.input_ids), 3)) for e in encoded]  # along the whole CoT
    with series.activate(name) as model:
        fast = probe_at(series, model, encoded, positions, cfg, LABELS)
        for e, ch, got in zip(encoded, positions, fast, strict=True):
            np.testing.assert_allclose(got, naive_label_logprobs(model, series.processor, e, ch, tk), rtol=1e-4,
                                       atol=1e-4)


def test_qwen_vl_batch_decodes_each_record_as_alone(series, encoded):
    proc = series.processor
    with series.activate(series.names[-1]) as model:
        together = _tokens(model, proc, encoded, 10)
        alone = [_tokens(model, proc, [e], 10)[0] for e in encoded]
        for row, ref, e in zip(together, alone, encoded, strict=True):
            assert row.tolist() == ref.tolist(), e.id
        texts = greedy_vl(model, proc, encoded, max_new_tokens=10, batch_size=2)  # what the evaluation decodes
    assert texts == [proc.tokenizer.decode(t, skip_special_tokens=True) for t in alone]


def test_qwen_vl_cpo_step_trains_the_language_model_lora_and_not_the_vision_tower(folder, tmp_path):
    from core.cpo.config import TrainConfig
    from core.cpo.train import build_trainer
    from tests.vl_pairs import write_vl_pairs
    from tests.vl_world import make_vl_world

    root = make_vl_world(tmp_path / "world").parent
    pairs = write_vl_pairs(root, root / "pairs" / "train.jsonl")
    cfg = TrainConfig(base_model=str(folder), data=str(pairs), output_dir=str(tmp_path / "run"), lora_r=2,
                      lora_alpha=4, max_steps=1, batch_size=4, learning_rate=1e-2, save_steps=1)
    trainer = build_trainer(cfg)
    assert_run_logps_are_the_models_own(trainer)
    named = dict(trainer.model.named_parameters())
    visual = {n: p.detach().clone() for n, p in named.items() if ".visual." in n}
    lora = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
    assert visual and lora and all(".language_model." in n for n in lora)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in visual.items())  # bitwise: frozen
    moved = {n for n, v in lora.items() if not torch.equal(after[n], v)}
    assert moved == {n for n in lora if "lora_B" in n}  # a new LoRA (B = 0): one step moves every B, no A yet


def assert_run_logps_are_the_models_own(trainer) -> None:
    """Each row's summed completion log-probs in a padded training batch (image features computed once per distinct
    image and handed to the model per row: Qwen3-VL's deepstack features too) equal a forward of that row alone
    with its own pixels."""
    from core.models.families.qwen_vl.pairs import image_inputs
    from tests.unit.cpo.test_vl import batch_of, row_pixels

    model = trainer.model.eval()
    batch = batch_of(trainer, [0, 1])  # a visual pair (rejected side: another image) and a text-swap pair
    mask = batch["completion_mask"][..., 1:].float()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        batched = (trainer._sequence_logps(model, batch, labels, mask.size(1), image_inputs(model, batch)) * mask).sum(1)
    pixels = row_pixels(batch)
    for row in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row: row + 1, :n]
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=pixels[row], image_grid_thw=batch["image_grid_thw"][row: row + 1],
                           mm_token_type_ids=batch["mm_token_type_ids"][row: row + 1, :n]).logits[0].float()
        targets = torch.nonzero(batch["completion_mask"][row, :n].bool()).squeeze(-1)
        alone = torch.log_softmax(logits, -1)[targets - 1, ids[0, targets]].sum()
        assert torch.allclose(batched[row], alone, atol=1e-4), (row, batched[row], alone)
    model.train()
