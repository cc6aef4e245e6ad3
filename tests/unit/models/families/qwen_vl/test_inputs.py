"""Qwen-VL inputs (core.models.families.qwen_vl.inputs): model, processor (full or fallback), placeholder expansion."""

import importlib.util
import json

import pytest
import torch

from core.errors import InputError
from core.io.images import ImageRef, load_image
from core.models.families import QWEN_VL_FAMILY, TEXT_FAMILY, family_for
from core.models.families.qwen_vl.inputs import (
    IMAGE_PAD,
    VISION_END,
    VISION_START,
    encode_vl,
    load_processor,
    load_vl_model,
)
from core.models.vision import VisionConfig

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def reference_processor(proc):
    """transformers' own Qwen2_5_VLProcessor, built from the image processor and tokenizer; without
    torchvision its video processor cannot exist, so a subclass leaves that one part out."""
    from transformers import Qwen2_5_VLProcessor

    class ImageOnly(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kw):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kw)

    try:
        return Qwen2_5_VLProcessor(image_processor=proc.image_processor, tokenizer=proc.tokenizer)
    except Exception:  # noqa: BLE001 - no video processor on this machine
        return ImageOnly(image_processor=proc.image_processor, tokenizer=proc.tokenizer)


def test_fixture_is_a_checkpoint_folder(tiny_vl):
    names = {p.name for p in tiny_vl.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= names
    cfg = json.loads((tiny_vl / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_vl" and family_for(tiny_vl) is QWEN_VL_FAMILY
    tok = load_processor(tiny_vl).tokenizer
    for token, key in (("<|vision_start|>", "vision_start_token_id"), ("<|image_pad|>", "image_token_id"),
                       ("<|vision_end|>", "vision_end_token_id")):
        assert tok.convert_tokens_to_ids(token) == cfg[key]
    for token in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1  # whole tokens, never split


def test_model_loads_through_image_text_to_text(tiny_vl):
    model = load_vl_model(tiny_vl)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration" and not model.training


def test_processor_falls_back_where_the_full_one_cannot_load(tiny_vl):
    proc = load_processor(tiny_vl)
    assert (proc.full is None) == (not HAS_TORCHVISION)
    assert proc.merge_size == 2 and proc.tokenizer.convert_tokens_to_ids(IMAGE_PAD) is not None


def test_full_processor_branch_uses_its_parts(tiny_vl, monkeypatch):
    """Where AutoProcessor loads (torchvision present), its image processor and tokenizer are used."""
    from transformers import AutoProcessor

    built = reference_processor(load_processor(tiny_vl))
    monkeypatch.setattr(AutoProcessor, "from_pretrained", classmethod(lambda cls, *a, **k: built))
    proc = load_processor(tiny_vl, VisionConfig(max_pixels=56 * 56 * 2))
    assert proc.full is built and proc.image_processor is built.image_processor
    assert proc.image_processor.size["longest_edge"] == 56 * 56 * 2


@pytest.mark.parametrize("names", [["d1"], ["d2", "d4"], ["d3", "d1"]])
def test_expansion_equals_the_processor(tiny_vl, images, names):
    proc = load_processor(tiny_vl)
    ref = reference_processor(proc)
    pics = [load_image(ImageRef(images[n], n)) for n in names]
    text = "A <image> then" + " and <image>" * (len(names) - 1) + " end."
    expected = ref(images=pics, text=[text.replace("<image>", VISION_START + IMAGE_PAD + VISION_END)],
                   return_tensors="pt")
    pixels, grids = proc.pixels(pics)
    ids = proc.text_ids(text, grids)
    assert ids == expected["input_ids"][0].tolist()
    assert torch.equal(pixels, expected["pixel_values"]) and torch.equal(grids, expected["image_grid_thw"])
    types = (torch.tensor(ids) == proc.token_id(IMAGE_PAD)).int()
    assert torch.equal(types, expected["mm_token_type_ids"][0].int())
    n = [int(g.prod()) // 4 for g in grids]
    assert ids.count(proc.token_id(IMAGE_PAD)) == sum(n) and ids.count(proc.token_id(VISION_END)) == len(names)


def test_pixel_limits_are_settings(tiny_vl, images):
    big = load_image(ImageRef(images["d4"], "d4"))  # 150 x 300
    small = load_processor(tiny_vl, VisionConfig(max_pixels=56 * 56)).pixels([big])[1][0]
    default = load_processor(tiny_vl).pixels([big])[1][0]
    large = load_processor(tiny_vl, VisionConfig(min_pixels=200 * 200, max_pixels=400 * 400)).pixels([big])[1][0]
    counts = [int(g.prod()) * 14 * 14 for g in (small, default, large)]  # pixels after resizing
    assert counts[0] <= 56 * 56 < counts[1] <= 112 * 112 < counts[2] and counts[2] >= 200 * 200
    with pytest.raises(ValueError, match="min_pixels"):
        VisionConfig(min_pixels=100_000, max_pixels=50_000)


def test_encode_marks_the_completion_after_the_images(tiny_vl, vl_records):
    proc = load_processor(tiny_vl)
    encs = encode_vl(proc, vl_records)
    pad = proc.token_id(IMAGE_PAD)
    for e in encs:
        assert pad not in e.completion_ids and e.tokens[e.start - 1] == "\n"  # after "<|im_start|>assistant\n"
        assert (e.images_key != "") == (e.pixel_values is not None)
    assert encs[1].image_grid_thw.shape == (2, 3)


def test_a_text_model_folder_is_not_read_as_vision_language(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert family_for(tmp_path) is TEXT_FAMILY and not TEXT_FAMILY.reads_images  # the VL loader is never asked
    with pytest.raises(InputError, match="cannot load vision-language model"):
        load_vl_model(tmp_path)


def test_cache_key_covers_image_bytes_and_pixel_settings(tiny_vl, vl_records):
    small = load_processor(tiny_vl, VisionConfig(max_pixels=56 * 56))
    default = load_processor(tiny_vl)
    a, b = encode_vl(default, vl_records[:1]), encode_vl(default, vl_records[:1])
    assert a[0].images_key == b[0].images_key and a[0] == b[0]  # tensors are not compared, keys are
    assert encode_vl(small, vl_records[:1])[0].images_key != a[0].images_key
    swapped = dict(vl_records[0], image_refs=vl_records[1]["image_refs"][:1])
    assert encode_vl(default, [swapped])[0].images_key != a[0].images_key
