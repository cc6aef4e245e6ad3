"""Batched greedy decoding of completions from prompts (left-padded), shared by evaluation and perturbation tests.

Text models only: a vision-language model decodes with its images through ``core.models.vl_generation``.
"""

from __future__ import annotations

import torch

from core.io.trajectories import prompt_ids


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int = 96, batch_size: int = 64,
                       device: str = "cpu", chats: list[list[dict] | None] | None = None) -> list[str]:
    """The greedy completion text of each prompt (special tokens dropped); a prompt with its conversation in
    ``chats`` goes through the tokenizer's chat template."""
    chats = chats or [None] * len(prompts)
    model.eval()
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = [prompt_ids(tokenizer, p, bool(c), c) for p, c in zip(prompts[i: i + batch_size], chats[i: i + batch_size], strict=True)]
        width = max(map(len, enc))
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)  # (B, T), left-padded
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
        gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out
