"""Batched greedy decoding with images: a Qwen-VL model writes its completion from each prompt and its
images, the way ``core.models.families.text.greedy_completions`` does for text (left-padded batches).

    encs = encode_vl(proc, records)                      # .inputs: prompt (images expanded) + completion
    texts = greedy_vl(model, proc, encs, max_new_tokens=96)   # decodes from each prompt (input_ids[:start])

or, from workbench trajectory records (``"images"``: absolute paths, as ``core.io.trajectories`` keeps them):

    texts = greedy_records(model, proc, records)

Each batch is the prompts left-padded to one width, with the rows' image patches and grids concatenated in
row order and ``mm_token_type_ids`` marking the image tokens (zeros on padding), as ``model.generate``
expects them; the model computes its 3-D rotary positions from the attention mask, so a row decodes the same
tokens in a batch as alone (tested token for token).
"""

from __future__ import annotations

import dataclasses

import torch

from core.models.families.qwen_vl.inputs import (
    IMAGE_PAD,
    VISION_END,
    VISION_START,
    VLEncoded,
    VLProcessor,
    encode_records,
)


@dataclasses.dataclass
class PromptBatch:
    """Left-padded prompts with their images, as ``generate`` takes them.  Shapes: B rows, T tokens."""
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) 0 on the left padding
    mm_token_type_ids: torch.Tensor  # (B, T) 1 on image tokens
    pixel_values: torch.Tensor | None  # (patches of all rows' images, D), in row order
    image_grid_thw: torch.Tensor | None  # (images of all rows, 3), in row order

    def kwargs(self) -> dict:
        kw = dict(input_ids=self.input_ids, attention_mask=self.attention_mask,
                  mm_token_type_ids=self.mm_token_type_ids)
        if self.pixel_values is not None:
            kw.update(pixel_values=self.pixel_values, image_grid_thw=self.image_grid_thw)
        return kw


def prompt_batch(encs: list[VLEncoded], proc: VLProcessor, device: str | torch.device = "cpu") -> PromptBatch:
    """The prompts of ``encs`` (each ``input_ids[:start]``, images included) left-padded into one batch."""
    pad = _pad_id(proc)
    image_id = proc.token_id(IMAGE_PAD)
    prompts = [e.input_ids[: e.start] for e in encs]
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    types = ((ids == image_id) & (mask == 1)).int()
    pixels = [e.pixel_values for e in encs if e.pixel_values is not None]
    grids = [e.image_grid_thw for e in encs if e.image_grid_thw is not None]
    return PromptBatch(ids.to(device), mask.to(device), types.to(device),
                       torch.cat(pixels).to(device) if pixels else None,
                       torch.cat(grids).to(device) if grids else None)


def vision_tokens(proc: VLProcessor) -> list[int]:
    """Ids of the vision tokens: never generated (a generated image token would have no image features
    behind it; a trained model does not write them, an under-trained one might)."""
    vocab = proc.tokenizer.get_vocab()
    return [vocab[t] for t in (VISION_START, IMAGE_PAD, VISION_END, "<|video_pad|>") if t in vocab]


def _pad_id(proc: VLProcessor) -> int:
    tok = proc.tokenizer
    return next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)


@torch.no_grad()
def greedy_vl(model, proc: VLProcessor, encs: list[VLEncoded], max_new_tokens: int = 96,
              batch_size: int = 16) -> list[str]:
    """The greedy completion text (special tokens dropped) of each encoded trajectory's prompt with its
    images; the completion in ``encs`` (if any) is ignored. On the model's device."""
    model.eval()
    device = next(model.parameters()).device
    tok = proc.tokenizer
    out: list[str] = []
    for i in range(0, len(encs), batch_size):
        batch = prompt_batch(encs[i: i + batch_size], proc, device)
        gen = model.generate(**batch.kwargs(), do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=_pad_id(proc), eos_token_id=tok.eos_token_id,
                             suppress_tokens=vision_tokens(proc))
        out += tok.batch_decode(gen[:, batch.input_ids.shape[1]:], skip_special_tokens=True)
    return out


def greedy_records(model, proc: VLProcessor, records: list[dict], max_new_tokens: int = 96, batch_size: int = 16,
                   chat_template: bool = True) -> list[str]:
    """``greedy_vl`` of workbench trajectory records (prompt, chat, images)."""
    return greedy_vl(model, proc, encode_records(proc, records, chat_template), max_new_tokens, batch_size)
