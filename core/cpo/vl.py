"""CPO runs on a vision-language base (Qwen2.5-VL): the pairs' images, their tokens, the model and its LoRA.

``core.cpo.train`` routes here when ``core.models.vision.is_vl_folder(cfg.base_model)``; the objectives, callbacks, resume
and checkpoints are the text runs' own. What differs:

- the prompt is rendered through the tokenizer's chat template (the format VL models are tuned on) and each
  ``<image>`` is expanded into its image tokens by ``core.models.vision.VLProcessor`` (with or without torchvision's
  full processor, token for token the same); a completion is its text + EOS, without a leading space;
- each side of a pair has its own prompt ids: a visual pair's rejected side (``rejected_images``) is expanded
  for its own images, whose grid may differ in size;
- the dataset keeps ids and image paths only; ``core.cpo.trainer.VLPreferenceCollator`` turns each batch's
  images into ``pixel_values`` / ``image_grid_thw`` (chosen rows' images, then rejected rows'), so a run over
  thousands of megapixel X-rays never holds their pixels all at once;
- LoRA targets every linear layer of the language model only (``core.models.vl_series.lm_lora_targets``), the vision
  tower stays frozen (the authors' ``--freeze_vit true``).

    proc = load_processor(cfg.base_model, vision_config(cfg))
    encoded = encode_pairs(proc, pairs)       # [{prompt_ids, rejected_prompt_ids, chosen_ids, rejected_ids, ...}]
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import InputError
from core.io.images import ImageRef, check_image, load_image
from core.models.vision import VisionConfig, VLProcessor, load_processor


def vision_config(cfg) -> VisionConfig:
    """The run's pixel limits (``TrainConfig.min_pixels`` / ``max_pixels``; None: the checkpoint's own)."""
    return VisionConfig(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)


def processor(cfg) -> VLProcessor:
    return load_processor(cfg.base_model, vision_config(cfg))


def prompt_text(proc: VLProcessor, pair: dict) -> str:
    """The prompt as the model reads it: its turns (or the one user turn) through the chat template."""
    tok = proc.tokenizer
    if not getattr(tok, "chat_template", None) or not proc.cfg.chat_template:
        return pair["prompt"]
    turns = pair.get("chat") or [{"role": "user", "content": pair["prompt"]}]
    return tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def image_grids(proc: VLProcessor, paths: list[str], memo: dict[str, torch.Tensor]) -> torch.Tensor:
    """The (t, h, w) patch grid of each image, as the image processor resizes it.  -> (n_images, 3)"""
    for p in paths:
        if p not in memo:
            memo[p] = _grid(proc, ImageRef(Path(p), f"pair image {p}"))
    return torch.cat([memo[p] for p in paths]) if paths else torch.zeros((0, 3), dtype=torch.long)


def _grid(proc: VLProcessor, ref: ImageRef) -> torch.Tensor:
    """One image's grid from its size alone (the header; pre-flight over thousands of X-rays decodes none),
    by the resize rule of Qwen's image processor (``smart_resize``, as its ``get_number_of_image_patches``
    does); an image processor without that rule processes the image.  -> (1, 3)"""
    import sys

    ip = proc.image_processor
    resize = getattr(sys.modules.get(type(ip).__module__), "smart_resize", None)
    least, most = (_edge(getattr(ip, "size", None), k) for k in ("shortest_edge", "longest_edge"))
    if resize is None or not getattr(ip, "do_resize", True) or least is None or most is None:
        return proc.pixels([load_image(ref, proc.cfg.limits)])[1]
    width, height = check_image(ref, proc.cfg.limits)
    patch = ip.patch_size
    h, w = resize(height, width, patch * ip.merge_size, min_pixels=least, max_pixels=most)
    return torch.tensor([[1, h // patch, w // patch]])


def _edge(size, key: str) -> int | None:
    """``size[key]`` of an image processor's size (a dict or transformers' SizeDict), None when unset."""
    try:
        value = size[key]
    except (KeyError, TypeError, AttributeError):
        return None
    return int(value) if value is not None else None


def encode_pairs(proc: VLProcessor, pairs: list[dict]) -> list[dict]:
    """Token ids of each pair's two sides, images expanded per side; image paths kept for the collator."""
    tok, memo = proc.tokenizer, {}
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    out = []
    for i, pair in enumerate(pairs):
        text = prompt_text(proc, pair)
        try:
            chosen_prompt = proc.text_ids(text, image_grids(proc, pair["images"], memo))
            rejected_prompt = proc.text_ids(text, image_grids(proc, pair["rejected_images"], memo))
        except InputError as e:
            raise InputError(f"pair {i + 1}: {e}") from None
        out.append({"prompt_ids": chosen_prompt, "rejected_prompt_ids": rejected_prompt,
                    "chosen_ids": tok(pair["chosen"], add_special_tokens=False)["input_ids"] + eos,
                    "rejected_ids": tok(pair["rejected"], add_special_tokens=False)["input_ids"] + eos,
                    "image_paths": list(pair["images"]), "rejected_image_paths": list(pair["rejected_images"])})
    return out


def lengths(e: dict) -> tuple[int, int]:
    """(longest prompt of the two sides, longest whole row of the two sides) in tokens."""
    prompt = max(len(e["prompt_ids"]), len(e["rejected_prompt_ids"]))
    row = max(len(e["prompt_ids"]) + len(e["chosen_ids"]), len(e["rejected_prompt_ids"]) + len(e["rejected_ids"]))
    return prompt, row


def prompt_errors(encoded: list[dict], max_length: int) -> list[str]:
    """Pairs whose prompt (image tokens included) leaves no room for the completion under ``max_length``:
    cutting there would cut an image, which the model cannot encode."""
    long = [i for i, e in enumerate(encoded) if lengths(e)[0] >= max_length]
    if not long:
        return []
    worst = max(lengths(encoded[i])[0] for i in long)
    return [f"{len(long)} pair(s) have a prompt of {worst} tokens or fewer, image tokens included, that reaches "
            f"max_length {max_length} (first: pair {long[0] + 1}); raise max_length or lower max_pixels"]


def load_base(cfg, cuda: bool):
    """The VL base on the CPU (the Trainer places it), bf16 on CUDA, fp32 on the CPU."""
    from core.models.checkpoints import check_model_dir
    from core.models.vision import load_vl_model

    dtype = torch.bfloat16 if (cuda if cfg.bf16 is None else cfg.bf16) else torch.float32
    return load_vl_model(check_model_dir(cfg.base_model), "cpu", dtype)


def lora_config(cfg, model):
    """LoRA on every linear layer of the language model, none in the vision tower or its merger."""
    from peft import LoraConfig

    from core.models.vl_series import lm_lora_targets

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=lm_lora_targets(model),
                      lora_dropout=0.0, task_type="CAUSAL_LM")


# Adapters saved before transformers 4.52 (ms-swift on older stacks) name the language model ``model.layers``
# and the vision tower ``visual``; the same rule as core.models.vl_series.LEGACY_KEYS, on PEFT's saved key names.
_LEGACY = (("base_model.model.visual.", "base_model.model.model.visual."),
           ("base_model.model.model.layers.", "base_model.model.model.language_model.layers."),
           ("base_model.model.model.norm.", "base_model.model.model.language_model.norm."),
           ("base_model.model.model.embed_tokens.", "base_model.model.model.language_model.embed_tokens."))


def modern_keys(state: dict) -> dict:
    """An init adapter's weights under today's module names (old ms-swift layouts mapped, others unchanged)."""
    out = {}
    for key, value in state.items():
        for old, new in _LEGACY:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out

