"""CPO on a Qwen-VL base: each preference pair's ids with its images expanded, and the batches the trainer
takes (``core.cpo.train`` asks the family for both; the objectives, callbacks and resume are the text runs').

- the prompt is rendered through the tokenizer's chat template (the format VL models are tuned on) and each
  ``<image>`` is expanded into its image tokens by ``VLProcessor`` (with or without torchvision's full
  processor, token for token the same); a completion is its text + EOS, without a leading space;
- each side of a pair has its own prompt ids: a visual pair's rejected side (``rejected_images``) is expanded
  for its own images, whose grid may differ in size;
- the dataset keeps ids and image paths only; ``VLPreferenceCollator`` turns each batch's images into
  ``pixel_values`` / ``image_grid_thw`` (chosen rows' images, then rejected rows'), so a run over thousands of
  megapixel X-rays never holds their pixels all at once.

    encoded = encode_pairs(proc, pairs)       # [{prompt_ids, rejected_prompt_ids, chosen_ids, rejected_ids, ...}]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import InputError
from core.io.images import ImageRef, check_image, load_image
from core.models.families.qwen_vl.inputs import IMAGE_PAD, VLProcessor, vl_core


def prompt_text(proc: VLProcessor, pair: dict) -> str:
    """The prompt as the model reads it: its turns (or the one user turn) through the chat template."""
    tok = proc.tokenizer
    if not getattr(tok, "chat_template", None):
        return pair["prompt"]
    turns = pair.get("chat") or [{"role": "user", "content": pair["prompt"]}]
    return tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def image_grids(proc: VLProcessor, paths: list[str], memo: dict[str, torch.Tensor]) -> torch.Tensor:
    """The (t, h, w) patch grid of each image, as the image processor resizes it.  -> (n_images, 3)"""
    for p in paths:
        if p not in memo:
            memo[p] = image_grid(proc, ImageRef(Path(p), f"pair image {p}"))
    return torch.cat([memo[p] for p in paths]) if paths else torch.zeros((0, 3), dtype=torch.long)


def image_grid(proc: VLProcessor, ref: ImageRef) -> torch.Tensor:
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


@dataclass
class VLPreferenceCollator:
    """Pairs with images (``encode_pairs`` rows) into TRL's ``[chosen; rejected]`` batch layout,
    right-padded, with the model's image inputs:

    - ``image_grid_thw``: the grid of every row's images, chosen rows first, then rejected rows (a visual
      pair's rejected side has its own image, and so its own grid and image-token count);
    - ``pixel_values`` / ``distinct_grid_thw``: the patches and grids of the batch's *distinct* images, and
      ``image_index``: which distinct image each row image is. A same-image pair's two rows share one image,
      so the (frozen) vision tower encodes it once (``CPOTrainer``), not twice as TRL's vision collator does;
    - ``mm_token_type_ids`` (1 on image tokens), from which Qwen2.5-VL computes its 3-D rotary positions.

    Only completions are cut at ``max_length``: a cut prompt would cut an image (pre-flight refuses those)."""

    processor: VLProcessor
    pad_token_id: int = 0
    max_length: int | None = None

    def __call__(self, examples: list[dict]) -> dict:
        rows = [(e["prompt_ids"], e["chosen_ids"]) for e in examples]
        rows += [(e["rejected_prompt_ids"], e["rejected_ids"]) for e in examples]
        ids, mask, comp = self._pad(rows)
        out = {"input_ids": ids, "attention_mask": mask, "completion_mask": comp,
               "mm_token_type_ids": (ids == self.processor.token_id(IMAGE_PAD)).long(),  # (2B, T)
               "weight": torch.tensor([float(e.get("weight", 1.0)) for e in examples]),  # (B,)
               "source_idx": torch.tensor([int(e.get("source_idx", 0)) for e in examples])}  # (B,)
        paths = [p for e in examples for p in e["image_paths"]]
        paths += [p for e in examples for p in e["rejected_image_paths"]]
        if paths:
            distinct = list(dict.fromkeys(paths))
            out["pixel_values"], out["distinct_grid_thw"] = self._pixels(distinct)
            out["image_index"] = torch.tensor([distinct.index(p) for p in paths])  # (row images,)
            out["image_grid_thw"] = out["distinct_grid_thw"][out["image_index"]]  # (row images, 3)
        return out

    def _pad(self, rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cut = [(p, c[: max(0, self.max_length - len(p))] if self.max_length else c) for p, c in rows]
        width = max(len(p) + len(c) for p, c in cut)
        ids = torch.full((len(cut), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(cut), width), dtype=torch.long)
        comp = torch.zeros((len(cut), width), dtype=torch.long)
        for b, (p, c) in enumerate(cut):
            ids[b, : len(p) + len(c)] = torch.tensor(p + c)
            mask[b, : len(p) + len(c)] = 1
            comp[b, len(p): len(p) + len(c)] = 1
        return ids, mask, comp

    def _pixels(self, paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches and grids of the given images, in order.  -> (patches, D), (n_images, 3)"""
        proc = self.processor
        return proc.pixels([load_image(ImageRef(Path(p), f"pair image {p}"), proc.cfg.limits) for p in paths])


def image_inputs(model, inputs: dict) -> dict:
    """The image part of a VL batch as the model takes it: each row image's features (the vision tower run
    once over the distinct images, without gradients: it is frozen, and LoRA sits on the language model only),
    the grids and image-token types its 3-D positions come from. ``{}`` for a text batch."""
    if "image_index" not in inputs:
        return {k: inputs[k] for k in ("mm_token_type_ids",) if k in inputs}
    with torch.no_grad():
        out = vl_core(model).get_image_features(inputs["pixel_values"], inputs["distinct_grid_thw"],
                                                return_dict=True)  # per distinct image
    index = inputs["image_index"].tolist()
    per_row = type(out)(pooler_output=tuple(out.pooler_output[i] for i in index))
    if getattr(out, "deepstack_features", None) is not None:  # Qwen3-VL: features of inner vision layers too,
        per_row.deepstack_features = [tuple(layer[i] for i in index) for layer in out.deepstack_features]  # per layer
    return {"mm_encoder_outputs": {"image": per_row},
            "image_grid_thw": inputs["image_grid_thw"], "mm_token_type_ids": inputs["mm_token_type_ids"]}
