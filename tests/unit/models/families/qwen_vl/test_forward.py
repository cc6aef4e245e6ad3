"""Qwen-VL forward passes (core.models.families.qwen_vl.forward): scoring equal to a direct forward, 3-D positions,
the probe's trees equal to re-encoding (also through ``core.drift.probe.probe_at``), image features shared."""

import numpy as np
import pytest
import torch

from core.drift.probe import ProbeConfig, probe_at, tokens_of
from core.errors import InputError
from core.models.families.qwen_vl.forward import (
    first_probe_position,
    image_features,
    naive_label_logprobs,
    score_table,
    token_logprobs,
    tree_label_logprobs,
)
from core.models.families.qwen_vl.inputs import IMAGE_PAD, collate, load_vl_model
from core.models.series import load_series

LABELS = ["Pneumonia", "Cardiomegaly", "Edema", "No Finding"]
PROBE = ProbeConfig(labels=LABELS)


@pytest.fixture(scope="module")
def tk(vl_series):
    return tokens_of(vl_series.tokenizer, PROBE, LABELS)


@torch.no_grad()
def direct(model, e, pad_id):
    """The reference: one record, the model's own full forward (it computes its 3-D positions itself)."""
    ids = torch.tensor([e.input_ids])
    kw = {}
    if e.pixel_values is not None:
        kw = dict(pixel_values=e.pixel_values, image_grid_thw=e.image_grid_thw, mm_token_type_ids=(ids == pad_id).int())
    logp = torch.log_softmax(model(input_ids=ids, **kw).logits[0].float(), -1)  # (T, V)
    return logp[e.start - 1: -1].gather(-1, ids[0, e.start:, None]).squeeze(-1)


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
    df = score_table(vl_series, vl_encoded, batch_size=2)
    n = sum(len(e.completion_ids) for e in vl_encoded)
    assert len(df) == 3 * n and list(df["checkpoint"].unique()) == vl_series.names
    pad = vl_series.processor.token_id(IMAGE_PAD)
    with vl_series.activate("checkpoint-2") as model:
        ref = direct(model, vl_encoded[1], pad).numpy()
    got = df[(df.checkpoint == "checkpoint-2") & (df.traj_id == vl_encoded[1].id)].sort_values("position")
    np.testing.assert_allclose(got["logprob"].to_numpy(), ref, rtol=1e-4, atol=1e-4)
    assert got["token_id"].tolist() == vl_encoded[1].completion_ids


@pytest.mark.parametrize("name", ["base", "checkpoint-2"])
def test_probe_equals_naive_reencoding(vl_series, vl_encoded, tk, name):
    positions = [[e.start, e.start + 2, e.think_end] for e in vl_encoded]
    with vl_series.activate(name) as model:
        fast = probe_at(vl_series, model, vl_encoded, positions, PROBE, LABELS)  # the probe's entry
        for e, ch, got in zip(vl_encoded, positions, fast, strict=True):
            ref = naive_label_logprobs(model, vl_series.processor, e, ch, tk)
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
            assert got.shape == (3, len(LABELS))


def test_probe_with_shared_image_features(vl_series, vl_encoded, tk):
    positions = [[e.think_end] for e in vl_encoded]
    with vl_series.activate("base") as model:
        batch = collate(vl_encoded, vl_series.processor, model)
        feats = image_features(model, batch.pixel_values, batch.image_grid_thw)
    with vl_series.activate("checkpoint-4") as model:
        shared = tree_label_logprobs(model, vl_series.processor, vl_encoded, positions, tk, feats)
        own = tree_label_logprobs(model, vl_series.processor, vl_encoded, positions, tk)
    for a, b in zip(shared, own, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_probe_refuses_to_cut_an_image(vl_series, vl_encoded, tk):
    e = vl_encoded[0]
    first = first_probe_position(e, vl_series.processor)
    assert e.input_ids[first - 1] == vl_series.processor.token_id("<|vision_end|>")
    with vl_series.activate("base") as model, pytest.raises(InputError, match="cuts an image"):
        tree_label_logprobs(model, vl_series.processor, [e], [[first - 2, e.think_end]], tk)


def test_full_vl_checkpoint_is_loaded_when_activated(tiny_vl, vl_encoded, tmp_path):
    """A merged (full) checkpoint, as ms-swift's ``-merged`` folders: loaded through the image-text-to-text
    class when activated; its vision tower may differ, so image features are not shared."""
    model = load_vl_model(tiny_vl)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    model.save_pretrained(tmp_path / "checkpoint-8-merged")
    vs = load_series(tiny_vl, [tmp_path / "checkpoint-8-merged"], device="cpu")  # fp32, as the direct forward
    assert not vs.shared_inputs and vs.names == ["base", "checkpoint-8-merged"]
    df = score_table(vs, vl_encoded[:1])
    base, merged = (df[df.checkpoint == n]["logprob"].to_numpy() for n in vs.names)
    pad = vs.processor.token_id(IMAGE_PAD)
    np.testing.assert_allclose(merged, direct(model, vl_encoded[0], pad).numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(base, merged)
