"""A tiny Qwen2.5-VL-architecture checkpoint, laid out as a user's checkpoint folder is.

Random init from a small ``Qwen2_5_VLConfig`` (a 2-block vision tower with window and full attention,
a 2-layer language model with 3-D rotary positions), its own byte-level BPE tokenizer carrying Qwen's
special tokens, and a ``preprocessor_config.json`` for ``Qwen2VLImageProcessor`` with small pixel limits.
Built in well under a second; tests use it, and the multimodal sample world starts from it.

    folder = write_tiny_vl(Path("tiny-vl"), seed=0)   # config.json, model.safetensors, tokenizer, preprocessor
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
THINK = ["<think>", "</think>"]
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112  # 4..16 merged image tokens per image
CORPUS = ["This is a patient's chest DR image. Please help me determine the patient's disease.",
          "<think> There is an opacity in the left lower lobe, no effusion. </think> "
          "The disease of this patient is Pneumonia.", "Edema Cardiomegaly Atelectasis Pneumothorax No Finding"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer(texts: Iterable[str] = CORPUS, vocab_size: int = 320):
    """Byte-level BPE (as Qwen's) with Qwen's special tokens first, then ``<think>`` / ``</think>``."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_tokens([AddedToken(t, normalized=False) for t in THINK])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_config(tokenizer, hidden: int = 64, layers: int = 2, vision_hidden: int = 32, vision_depth: int = 2):
    """The tests' tiny model by default; the multimodal sample world asks for a few more layers and width."""
    from transformers import Qwen2_5_VLConfig

    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                # head_dim 16 -> 8 frequencies, split over (temporal, height, width) as [2, 3, 3]
                rope_parameters={"rope_type": "default", "mrope_section": _mrope_section(hidden // 4),
                                 "rope_theta": 10000.0},
                bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    vision = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
                  out_hidden_size=hidden, fullatt_block_indexes=[vision_depth - 1], window_size=56, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                            video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                            vision_end_token_id=ids("<|vision_end|>"))


def _mrope_section(head_dim: int) -> list[int]:
    """The rotary frequencies of a head split over (temporal, height, width): [2, 3, 3] for 8 of them."""
    n = head_dim // 2
    hw = 3 * n // 8
    return [n - 2 * hw, hw, hw]


def preprocessor_config(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> dict:
    """As Qwen2.5-VL checkpoints ship it (CLIP mean/std, 14-pixel patches merged 2 x 2)."""
    return {"image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
            "min_pixels": min_pixels, "max_pixels": max_pixels, "patch_size": 14, "temporal_patch_size": 2,
            "merge_size": 2, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "do_convert_rgb": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711]}


def make_model(tokenizer, seed: int = 0, **config):
    """Random init, seeded; ``config``: ``make_config``'s sizes."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(make_config(tokenizer, **config)).eval()


def write_tiny_vl(out: Path, seed: int = 0, model=None, tokenizer=None) -> Path:
    """Save model, tokenizer and image-processor config into ``out`` (a checkpoint folder)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or make_tokenizer()
    model = model or make_model(tokenizer, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=1))
    return out


def synthetic_xray(h: int, w: int, seed: int, findings: list[str] | None = None):
    """A grey chest-film-like picture (dark lungs, bright mediastinum, one opacity blob) as an RGB PIL image.

    With ``findings`` (names of ``workbench.demo.xray.DRAW``: "opacity", "meniscus sign", "enlarged cardiac
    silhouette", "pleural line", ...), a film that shows them (``workbench.demo.xray.draw_study``), h x w."""
    if findings is not None:
        from workbench.demo.xray import draw_study

        img = draw_study(findings, seed)
        return img if img.size == (w, h) else img.resize((w, h))
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = 60 + 120 * np.exp(-((x - 0.5) / 0.12) ** 2) + 20 * rng.standard_normal((h, w))
    cy, cx = rng.uniform(0.3, 0.7, 2)
    img += 80 * np.exp(-(((y - cy) / 0.1) ** 2 + ((x - cx) / 0.1) ** 2))
    return Image.fromarray(np.clip(img, 0, 255).astype("uint8")).convert("RGB")
