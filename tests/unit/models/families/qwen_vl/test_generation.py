"""Greedy decoding with images (core.models.families.qwen_vl.generation): a batch (left-padded, rows with one, two and no images)
decodes each row's tokens exactly as decoding that row alone, under the base and under a LoRA checkpoint."""

import torch

from core.models.families.qwen_vl.inputs import encode_vl
from core.models.families.qwen_vl.generation import greedy_vl, prompt_batch, vision_tokens
from tests.vl_world import make_records


def _tokens(model, proc, encs, n):
    batch = prompt_batch(encs, proc)
    with torch.no_grad():
        gen = model.generate(**batch.kwargs(), do_sample=False, max_new_tokens=n, pad_token_id=0,
                             eos_token_id=None, suppress_tokens=vision_tokens(proc))
    return gen[:, batch.input_ids.shape[1]:]


def test_a_batch_decodes_each_row_as_alone(vl_series, images):
    proc = vl_series.processor
    encs = encode_vl(proc, make_records(images))
    assert len({e.start for e in encs}) == 3  # prompts of different lengths: rows are left-padded
    for name in ("base", vl_series.names[-1]):
        with vl_series.activate(name) as model:
            together = _tokens(model, proc, encs, 12)
            alone = [_tokens(model, proc, [e], 12)[0] for e in encs]
            for row, ref in zip(together, alone, strict=True):
                assert row.tolist() == ref.tolist(), name
            texts = greedy_vl(model, proc, encs, max_new_tokens=12, batch_size=2)
        assert texts == [proc.tokenizer.decode(t, skip_special_tokens=True) for t in alone]
        assert not set(vision_tokens(proc)) & {t for row in together.tolist() for t in row}


def test_the_image_is_seen(vl_series, images, tmp_path):
    """The same prompt with another image of the same size (the same tokens) decodes differently: the
    pixels reach the model."""
    from PIL import Image, ImageOps

    from core.io.images import ImageRef

    proc = vl_series.processor
    rec = make_records(images)[0]
    flipped = tmp_path / "flipped.png"
    ImageOps.invert(Image.open(rec["image_refs"][0].path).convert("RGB")).save(flipped)
    other = {**rec, "id": "other", "image_refs": [ImageRef(flipped, "test, flipped")]}
    ea, eb = encode_vl(proc, [rec])[0], encode_vl(proc, [other])[0]
    assert ea.input_ids == eb.input_ids
    with vl_series.activate("base") as model:
        a, b = (_tokens(model, proc, [e], 16)[0].tolist() for e in (ea, eb))
    assert a != b
