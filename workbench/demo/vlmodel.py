"""The multimodal world's model inputs: its prompt with an image, supervised fine-tuning, sampling for RFT.

Every study asks the same question about one 112 x 112 film, so every prompt is the same token sequence
(the chat template, ``<|vision_start|>``, 16 ``<|image_pad|>``, ``<|vision_end|>``): built once, exactly as
``core.models.families.qwen_vl.inputs.encode_vl`` builds it for the workbench, so that what the model is trained on is what the
workbench scores and probes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch

from core.models.families.qwen_vl.inputs import IMAGE_PAD, VISION_END, VISION_START, VLProcessor
from workbench.demo.vlspec import QUESTION


def prompt_ids(proc: VLProcessor, grid: torch.Tensor) -> list[int]:
    """The chat-templated question with its image (of ``grid``, (1, 3)) expanded into image tokens, as
    ``encode_vl`` does."""
    text = proc.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                              add_generation_prompt=True)
    return proc.text_ids(text, grid)


def image_inputs(proc: VLProcessor, images: list) -> dict[str, torch.Tensor]:
    pixels, grid = proc.pixels(images)
    return {"pixel_values": pixels, "image_grid_thw": grid}


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and mask, padded on the left (as generation wants)."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


class VLPrompts:
    """``workbench.demo.rft``'s prompt hook for the multimodal world: each record's film and the question; the
    model computes its own 3-D rotary positions from the image grid (``mm_token_type_ids`` marks images)."""

    def __init__(self, proc: VLProcessor):
        self.proc = proc
        self.image_pad = proc.token_id(IMAGE_PAD)
        # a sampled image token would need image features that do not exist: never generate vision tokens
        vision = [proc.token_id(t) for t in (VISION_START, IMAGE_PAD, VISION_END, "<|video_pad|>")]
        self.generate_kwargs = {"suppress_tokens": vision}

    def inputs(self, tokenizer, batch: list[dict], group: int) -> dict[str, torch.Tensor]:
        images = [r["image"] for r in batch for _ in range(group)]
        pixels = image_inputs(self.proc, images)
        rows = [prompt_ids(self.proc, g[None]) for g in pixels["image_grid_thw"]]
        ids, mask = left_padded(rows, tokenizer.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == self.image_pad).int(),
                **pixels}

    def logprobs(self, model, seq: torch.Tensor, attn: torch.Tensor, inputs: dict) -> torch.Tensor:
        """Per-token log-prob of the sampled completions under ``model``, images included.  -> (B, L)"""
        n_prompt = inputs["input_ids"].shape[1]
        types = torch.zeros_like(seq, dtype=torch.int)
        types[:, :n_prompt] = inputs["mm_token_type_ids"]
        logits = model(input_ids=seq, attention_mask=attn, mm_token_type_ids=types, use_cache=False,
                       pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]).logits
        logits = logits[:, n_prompt - 1: -1].float()  # (B, L, V): the distributions predicting completion tokens
        return torch.log_softmax(logits, -1).gather(-1, seq[:, n_prompt:].unsqueeze(-1)).squeeze(-1)


def sft_batch(proc: VLProcessor, images: list, completions: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded rows ``prompt + completion + <|im_end|>``; labels -100 on the prompt and padding."""
    tok = proc.tokenizer
    pixels = image_inputs(proc, images)
    rows, starts = [], []
    for grid, text in zip(pixels["image_grid_thw"], completions, strict=True):
        p = prompt_ids(proc, grid[None])
        rows.append(p + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        starts.append(len(p))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (r, s) in enumerate(zip(rows, starts, strict=True)):
        ids[b, : len(r)] = torch.tensor(r)
        labels[b, s: len(r)] = torch.tensor(r[s:])
        mask[b, : len(r)] = 1
    pad = proc.token_id(IMAGE_PAD)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "mm_token_type_ids": (ids == pad).int(),
            **pixels}


class FindingsHead(torch.nn.Module):
    """A training-only probe on the vision tower's merged image tokens: mean over an image's tokens, then one
    logit per finding. Its loss (multi-label BCE against the film's findings) gives the randomly initialised
    vision tower a direct signal, so that it learns to see small findings within the build's few hundred
    steps; the head is dropped after SFT (the saved model is the plain Qwen2.5-VL)."""

    def __init__(self, model, n_findings: int):
        super().__init__()
        self.tokens = None
        self.linear = torch.nn.Linear(model.config.text_config.hidden_size, n_findings)
        self.hook = model.model.visual.register_forward_hook(lambda mod, inp, out: setattr(self, "tokens", out.pooler_output))

    def loss(self, n_images: int, targets: torch.Tensor) -> torch.Tensor:
        pooled = self.tokens.view(n_images, -1, self.tokens.shape[-1]).mean(1)  # (n_images, H)
        return torch.nn.functional.binary_cross_entropy_with_logits(self.linear(pooled), targets)


def pretrain_vision(model, proc: VLProcessor, head: FindingsHead, images: list, targets: torch.Tensor, *,
                    epochs: int, batch_size: int, lr: float, seed: int,
                    progress: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Train the vision tower alone (with ``head``) to tell which findings a film shows, on films of every label
    alike: what a real VL model's pretrained vision encoder brings before its language model ever sees a CoT
    (so the classes rare in the SFT CoTs are visible to the tower, and RFT has something to bring out)."""
    rng = random.Random(seed)
    order = list(range(len(images)))
    steps = epochs * math.ceil(len(order) / batch_size)
    visual = model.model.visual
    opt = torch.optim.AdamW(list(visual.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    visual.train()
    losses: list[float] = []
    for _ in range(epochs):
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            idx = order[i: i + batch_size]
            pixels = image_inputs(proc, [images[k] for k in idx])
            visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"])  # the head's hook keeps the tokens
            loss = head.loss(len(idx), targets[idx])
            loss.backward()
            opt.step(), sched.step(), opt.zero_grad()
            losses.append(loss.item())
            if progress:
                progress(len(losses), steps, losses[-1])
    return losses


def sft(model, proc: VLProcessor, images: list, completions: list[str], *, epochs: int, batch_size: int, lr: float,
        seed: int, head: FindingsHead | None = None, targets: torch.Tensor | None = None, aux_weight: float = 1.0,
        progress: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Supervised fine-tuning of the whole model (vision tower included) on film -> CoT, AdamW with warm-up
    and a cosine schedule; with ``head`` and ``targets`` ((N, F) multi-hot findings per film) also the
    ``FindingsHead`` loss. Returns the CoT losses."""
    rng = random.Random(seed)
    order = list(range(len(images)))
    steps = epochs * math.ceil(len(order) / batch_size)
    params = list(model.parameters()) + (list(head.parameters()) if head else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    losses: list[float] = []
    try:
        for _ in range(epochs):
            rng.shuffle(order)
            for i in range(0, len(order), batch_size):
                idx = order[i: i + batch_size]
                losses.append(_sft_step(model, proc, opt, sched, head, [images[k] for k in idx],
                                        [completions[k] for k in idx],
                                        targets[idx] if head else None, aux_weight))
                if progress:
                    progress(len(losses), steps, losses[-1])
    finally:
        model.eval()
    return losses


def _sft_step(model, proc, opt, sched, head, images, completions, targets, aux_weight) -> float:
    loss = model(**sft_batch(proc, images, completions), use_cache=False).loss
    total = loss + aux_weight * head.loss(len(images), targets) if head else loss
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(), sched.step(), opt.zero_grad()
    return loss.item()


@torch.no_grad()
def greedy(model, proc: VLProcessor, images: list, max_new_tokens: int = 64, batch_size: int = 64) -> list[str]:
    """The greedy completion (special tokens dropped) of the question about each image."""
    tok = proc.tokenizer
    hook = VLPrompts(proc)
    model.eval()
    out: list[str] = []
    for i in range(0, len(images), batch_size):
        enc = hook.inputs(tok, [{"image": im} for im in images[i: i + batch_size]], 1)
        seq = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, **hook.generate_kwargs)
        out += tok.batch_decode(seq[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out
