"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL inputs: load the model and its processor, and turn records with images into ids.

The pieces that are Qwen's (the image tokens, 3-D rotary positions) are named here; a later family (LLaVA-style
models) brings its own. Local folders only; ``trust_remote_code`` off unless asked for.

    proc = load_processor(folder, VisionConfig(max_pixels=1003520))   # full processor, or the fallback
    model = load_vl_model(folder)                                      # AutoModelForImageTextToText
    encs = encode_vl(proc, [{"prompt": "... <image> ...", "completion": "<think> ...", "image_refs": [ref]}])
    batch = collate(encs, proc, model)                                 # VLBatch: ids, mask, pixels, 3-D positions

Where transformers' full ``AutoProcessor`` cannot load (Qwen2.5-VL's video processor needs torchvision),
the image processor and tokenizer are loaded on their own and each ``<image>`` placeholder is expanded
here into ``<|vision_start|>`` + n x ``<|image_pad|>`` + ``<|vision_end|>``, n = prod(image_grid_thw) //
merge_size**2, exactly as ``Qwen2_5_VLProcessor`` does (tests compare token for token). The same code runs
when the full processor loads: only its image processor and tokenizer are used.

Every record goes through the tokenizer's chat template when ``chat_template`` is on (the format VL models are
tuned on): a conversation's turns, else the prompt as one user turn.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.errors import InputError
from core.io.images import (
    ImageRef,
    images_key,
    load_image,
    split_placeholders,
)
from core.io.trajectories import Encoded, completion_tokens, token_text
from core.models.forward import inner
from core.models.loading import load_model
from core.models.vision import VisionConfig

VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"


@dataclass
class VLProcessor:
    """The image processor and tokenizer of a VL checkpoint; ``full`` is transformers' processor when it loaded."""
    image_processor: object
    tokenizer: object
    full: object | None
    cfg: VisionConfig

    @property
    def merge_size(self) -> int:
        return int(getattr(self.image_processor, "merge_size", 2))

    def settings_key(self) -> str:
        """What decides the pixels the model sees besides the files: resize limits, patching, normalisation."""
        ip = self.image_processor
        keys = ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std",
                "rescale_factor", "do_resize", "do_normalize")
        text = json.dumps({k: str(getattr(ip, k, None)) for k in keys}, sort_keys=True)
        return hashlib.sha256(f"{type(ip).__name__}:{text}".encode()).hexdigest()[:16]

    def token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise InputError(f"tokenizer has no {token} token; expected a Qwen2-VL, Qwen2.5-VL or Qwen3-VL tokenizer")
        return tid

    def pixels(self, images: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches of every image, flattened, and their grids.  -> (sum of t*h*w, C*tp*p*p), (n_images, 3)"""
        out = self.image_processor(images=images, return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    def n_tokens(self, grid: torch.Tensor) -> int:
        """Image tokens the language model sees for one image: prod(t, h, w) // merge_size**2."""
        return int(grid.prod()) // self.merge_size ** 2

    def text_ids(self, text: str, grids: torch.Tensor) -> list[int]:
        """Token ids of ``text`` with its i-th ``<image>`` expanded for the i-th grid; the pieces between
        placeholders are tokenized on their own, as the processor's added-token split does."""
        pieces = split_placeholders(text)
        if len(pieces) - 1 != len(grids):
            raise InputError(f"{len(pieces) - 1} <image> placeholder(s) for {len(grids)} image(s)")
        start, pad, end = self.token_id(VISION_START), self.token_id(IMAGE_PAD), self.token_id(VISION_END)
        ids = self.tokenizer(pieces[0], add_special_tokens=False)["input_ids"]
        for grid, piece in zip(grids, pieces[1:], strict=True):
            ids += [start] + [pad] * self.n_tokens(grid) + [end]
            ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids


def load_processor(path: str | Path, cfg: VisionConfig | None = None, trust_remote_code: bool = False) -> VLProcessor:
    """transformers' AutoProcessor when it loads, else AutoImageProcessor + AutoTokenizer (see module docstring)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    cfg = cfg or VisionConfig()
    kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        full = AutoProcessor.from_pretrained(path, **kw)
        image_processor, tokenizer = full.image_processor, full.tokenizer
    except Exception:  # noqa: BLE001 - ImportError (no torchvision) and the like: fall back to the two parts
        full = None
        try:
            image_processor = AutoImageProcessor.from_pretrained(path, **kw)
            tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        except Exception as e:  # noqa: BLE001 - named by folder
            raise InputError(f"{path}: cannot load the image processor and tokenizer "
                             f"({str(e).splitlines()[0]}); expected preprocessor_config.json and a tokenizer") from None
    _set_pixels(image_processor, cfg)
    return VLProcessor(image_processor, tokenizer, full, cfg)


def _set_pixels(image_processor, cfg: VisionConfig) -> None:
    """Apply the min/max pixel settings: ``size`` holds them as shortest_edge / longest_edge (in pixels)."""
    size = dict(getattr(image_processor, "size", {}) or {})
    size = {k: v for k, v in size.items() if v is not None}
    if cfg.min_pixels is not None:
        size["shortest_edge"] = cfg.min_pixels
    if cfg.max_pixels is not None:
        size["longest_edge"] = cfg.max_pixels
    if cfg.min_pixels is not None or cfg.max_pixels is not None:
        image_processor.size = type(image_processor.size)(**size) if not isinstance(image_processor.size, dict) else size
        for name, v in (("min_pixels", cfg.min_pixels), ("max_pixels", cfg.max_pixels)):
            if v is not None and hasattr(image_processor, name):
                setattr(image_processor, name, v)


def load_vl_model(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                  trust_remote_code: bool = False):
    """A vision-language model from a local folder through transformers' image-text-to-text auto class."""
    from transformers import AutoModelForImageTextToText

    return load_model(path, device, dtype, trust_remote_code, AutoModelForImageTextToText, "vision-language model")


@dataclass(frozen=True)
class VLEncoded(Encoded):
    """A trajectory with its images: ``input_ids`` already hold the expanded image tokens (prompt tokens)."""
    pixel_values: torch.Tensor | None = field(default=None, compare=False)  # (patches, C*tp*p*p)
    image_grid_thw: torch.Tensor | None = field(default=None, compare=False)  # (n_images, 3)
    images_key: str = ""  # content hash of the images, in order, and of the pixel settings (a cache key part)


def as_vl(enc: Encoded) -> VLEncoded:
    """A text trajectory (``core.io.trajectories.Encoded``) as a VL one without images, so that a caller that
    encoded text only (no images in its records) still runs on a vision-language series."""
    return enc if isinstance(enc, VLEncoded) else VLEncoded(enc.id, enc.input_ids, enc.start, enc.think_end,
                                                            enc.label, enc.tokens)


def encode_vl(proc: VLProcessor, records: list[dict], image_field: str = "image_refs",
              chat_template: bool = True) -> list[VLEncoded]:
    """Encode records ``{id, prompt, completion, label?, chat?, image_refs: [ImageRef]}``: the prompt (a
    conversation's ``chat`` turns, else the prompt as one user turn, in the chat template when
    ``chat_template``) with its images expanded, then the completion's tokens."""
    think = proc.tokenizer.get_vocab().get("</think>")
    out = []
    for rec in records:
        refs: list[ImageRef] = rec.get(image_field) or []
        images = [load_image(r, proc.cfg.limits) for r in refs]
        pixels, grids = proc.pixels(images) if images else (None, torch.zeros((0, 3), dtype=torch.long))
        prompt = rec["prompt"]
        if chat_template:
            turns = rec.get("chat") or [{"role": "user", "content": prompt}]  # a system turn too, as trained
            prompt = proc.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        try:
            p = proc.text_ids(prompt, grids)
        except InputError as e:
            raise InputError(f"trajectory {rec.get('id')}: {e}") from None
        text = rec["completion"] if chat_template else " " + rec["completion"]
        c, at = completion_tokens(proc.tokenizer, text, think)  # "</think>" in pieces too (Qwen2.5-VL has no token)
        ids = p + c
        out.append(VLEncoded(str(rec["id"]), ids, len(p), len(ids) if at is None else len(p) + at, rec.get("label"),
                             [token_text(proc.tokenizer, t) for t in ids], pixels,
                             grids if images else None, _key(refs, proc) if refs else ""))
    return out


def _key(refs: list[ImageRef], proc: VLProcessor) -> str:
    return hashlib.sha256(f"{images_key(refs)}:{proc.settings_key()}".encode()).hexdigest()[:16]


@dataclass
class VLBatch:
    """Right-padded rows with their images, ready for the model.  Shapes: B rows, T tokens."""
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    mm_token_type_ids: torch.Tensor  # (B, T) 1 on image tokens
    position_ids: torch.Tensor  # (3, B, T) Qwen's 3-D rotary positions (temporal, height, width)
    pixel_values: torch.Tensor | None  # (patches of all rows' images, D)
    image_grid_thw: torch.Tensor | None  # (images of all rows, 3), in row order
    completion_mask: torch.Tensor  # (B, T) True on completion tokens (the scored ones; never image tokens)
    spans: list[tuple[int, int]]  # (start, end) of each row's completion


def collate(encs: list[VLEncoded], proc: VLProcessor, model, device: str | torch.device | None = None) -> VLBatch:
    """Pad ``encs`` on the right into one batch and compute its 3-D positions with the model's
    ``get_rope_index`` (the positions the model itself would use); on ``device``, by default the model's."""
    device = device or next(model.parameters()).device
    pad = proc.tokenizer.pad_token_id if proc.tokenizer.pad_token_id is not None else 0
    image_id = proc.token_id(IMAGE_PAD)
    width = max(len(e.input_ids) for e in encs)
    ids = torch.full((len(encs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encs), width), dtype=torch.long)
    comp = torch.zeros((len(encs), width), dtype=torch.bool)
    for b, e in enumerate(encs):
        ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[b, : len(e.input_ids)] = 1
        comp[b, e.start: len(e.input_ids)] = True
    types = (ids == image_id).int()
    pixels = [e.pixel_values for e in encs if e.pixel_values is not None]
    grids = [e.image_grid_thw for e in encs if e.image_grid_thw is not None]
    grid = torch.cat(grids) if grids else None
    pos = rope_positions(model, ids, types, grid, mask)
    return VLBatch(ids.to(device), mask.to(device), types.to(device), pos.to(device),
                   torch.cat(pixels).to(device) if pixels else None, grid.to(device) if grid is not None else None,
                   comp.to(device), [(e.start, len(e.input_ids)) for e in encs])


def vl_core(model):
    """The multimodal trunk (vision tower + language model, no LM head) under any PEFT wrapping."""
    return inner(model).model


def rope_positions(model, ids: torch.Tensor, types: torch.Tensor, grid: torch.Tensor | None,
                   mask: torch.Tensor) -> torch.Tensor:
    """3-D rotary positions of a padded batch.  -> (3, B, T); text-only rows get t = h = w = index."""
    if grid is None:
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        return pos[None].expand(3, -1, -1).clone()
    pos, _ = vl_core(model).get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=grid, attention_mask=mask)
    return pos


def encode_records(proc: VLProcessor, records: list[dict], chat_template: bool = True, where: str = "") -> list[VLEncoded]:
    """Workbench trajectory records (``images``: absolute path strings, as ``core.io.trajectories`` keeps them)
    encoded with their images; an unreadable image names ``where`` (the data file), the trajectory and the path."""
    from core.io.images import refs

    return encode_vl(proc, [{**r, "image_refs": refs(r, f"{where}, trajectory {r['id']}" if where else "")}
                            for r in records], chat_template=chat_template)
