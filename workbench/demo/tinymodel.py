"""Tokenizer and tiny Llama-architecture model of the demo world, and its supervised fine-tuning.

The tokenizer is a BPE trained on the world's own text (SentencePiece-style ``▁`` word marks,
punctuation split off, ``<think>``/``</think>`` as whole tokens). The model is a real
``LlamaForCausalLM`` (grouped-query attention, RoPE, RMSNorm, SwiGLU), small enough to train on a laptop.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
THINK_TOKENS = ["<think>", "</think>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on ``texts`` and wrap it for transformers."""
    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(behavior="isolated")])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.add_tokens([AddedToken(t, normalized=False) for t in THINK_TOKENS])
    return fast


def make_model(vocab_size: int, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


def encode_pair(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """Token ids of ``<s> prompt completion </s>`` and the index where the completion starts."""
    p = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(" " + completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p + c, len(p)


def collate_sft(encoded: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 on the prompt and padding (loss on the completion only)."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id)  # (B, T)
    labels = torch.full((len(encoded), width), -100)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, start) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, start: len(ids)] = torch.tensor(ids[start:])
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def sft(model, tokenizer, records: list[dict], *, epochs: int, batch_size: int, lr: float, seed: int,
        progress: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Supervised fine-tuning on prompt -> completion with AdamW and a cosine schedule; returns losses."""
    rng = random.Random(seed)
    encoded = [encode_pair(tokenizer, r["prompt"], r["completion"]) for r in records]
    steps = epochs * math.ceil(len(encoded) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    losses, step = [], 0
    for _ in range(epochs):
        rng.shuffle(encoded)
        for i in range(0, len(encoded), batch_size):
            loss = model(**collate_sft(encoded[i: i + batch_size], tokenizer.pad_token_id)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            losses.append(loss.item())
            step += 1
            if progress:
                progress(step, steps, losses[-1])
    model.eval()
    return losses
