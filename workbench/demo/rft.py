"""On-policy reinforcement fine-tuning of the demo model on a non-stationary stream, saving LoRA checkpoints.

Each step samples ``group`` completions per prompt from the current policy, rewards 1 for the correct
diagnosis (by the stream's label, whose convention shifts over time; see ``generator.stream_batch``) and
takes a policy-gradient step with a group baseline (GRPO's advantage without the KL term):

    A_i = (r_i - mean_g r) / (std_g r + eps),   loss = - sum_i sum_t A_i log pi(y_it | x, y_i<t) / sum_i |y_i|

Every ``save_every`` steps the adapter is written as ``checkpoint-N/`` next to a ``trainer_state.json``
in the HF Trainer layout, so the checkpoint series looks like any trainer's output folder.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.demo import generator


@dataclass
class RFTConfig:
    steps: int = 240
    prompts_per_step: int = 16
    group: int = 4
    lr: float = 2e-3
    temperature: float = 1.0
    max_new_tokens: int = 72
    max_shift_share: float = 0.7
    save_every: int = 40
    seed: int = 0


def _completion_mask(completions: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 on completion tokens up to and including the first EOS, 0 after it.  (B, L) -> (B, L)"""
    is_eos = (completions == eos_id).long()
    after_eos = (is_eos.cumsum(-1) - is_eos) > 0
    return (~after_eos).long()


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """Per-token log-prob of the completion part (positions >= n_prompt) under ``model``.  -> (B, L)"""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding, as in generate()
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, n_prompt - 1: -1].float()  # (B, L, V): the distributions that predict completion tokens
    targets = input_ids[:, n_prompt:]  # (B, L)
    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class TextPrompts:
    """How the text world's prompts enter the policy: ``<s>`` + report, left-padded; 1-D positions."""

    def inputs(self, tokenizer, batch: list[dict], group: int) -> dict[str, torch.Tensor]:
        """Each prompt ``group`` times, as ``generate`` takes them (``input_ids``, ``attention_mask``, ...)."""
        prompts = [tokenizer.bos_token + r["prompt"] for r in batch for _ in range(group)]
        return dict(tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                              add_special_tokens=False))

    def logprobs(self, model, seq: torch.Tensor, attn: torch.Tensor, inputs: dict) -> torch.Tensor:
        """Per-token log-prob of the sampled completions (after the prompt).  -> (B, L)"""
        return sequence_logprobs(model, seq, attn, inputs["input_ids"].shape[1])


def rft_step(model, tokenizer, opt, batch: list[dict], cfg: RFTConfig, prompts=None) -> dict[str, float]:
    """One GRPO-style step on ``batch``; ``prompts`` (default ``TextPrompts``) turns records into the
    policy's inputs, so that the multimodal world (``workbench.demo.vlworld``) trains through this same step."""
    prompts = prompts or TextPrompts()
    labels = [r["label"] for r in batch for _ in range(cfg.group)]
    enc = prompts.inputs(tokenizer, batch, cfg.group)
    model.eval()
    with torch.no_grad():
        seq = model.generate(**enc, do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0,
                             max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             **getattr(prompts, "generate_kwargs", {}))  # (B*G, P+L)
    n_prompt = enc["input_ids"].shape[1]
    texts = tokenizer.batch_decode(seq[:, n_prompt:], skip_special_tokens=True)
    rewards = torch.tensor([float(generator.parse_answer(t) == y) for t, y in zip(texts, labels, strict=True)])
    grouped = rewards.view(-1, cfg.group)  # (B, G)
    adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    comp_mask = _completion_mask(seq[:, n_prompt:], tokenizer.eos_token_id)  # (B*G, L)
    attn = torch.cat([enc["attention_mask"], comp_mask], dim=1)
    model.train()
    logp = prompts.logprobs(model, seq, attn, enc)  # (B*G, L)
    loss = -(adv[:, None] * logp * comp_mask).sum() / comp_mask.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step(), opt.zero_grad()
    return {"loss": loss.item(), "reward": rewards.mean().item(),
            "completion_length": comp_mask.sum(1).float().mean().item()}


def run(model, tokenizer, out_dir: Path, cfg: RFTConfig,
        on_checkpoint: Callable[[int, Path], dict] | None = None,
        progress: Callable[[int, int, dict], None] | None = None,
        stream: Callable[..., list[dict]] | None = None, prompts=None) -> list[dict]:
    """Train the PEFT ``model`` on the stream; write ``out_dir/checkpoint-N``; return the log history.

    ``stream(rng, step, total, size, max_share)`` draws a batch (default ``generator.stream_batch``) and
    ``prompts`` turns it into model inputs (default ``TextPrompts``): the multimodal world passes its own."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    stream = stream or generator.stream_batch
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    history: list[dict] = []
    for step in range(1, cfg.steps + 1):
        batch = stream(rng, step - 1, cfg.steps, cfg.prompts_per_step, cfg.max_shift_share)
        logs = rft_step(model, tokenizer, opt, batch, cfg, prompts)
        logs.update(step=step, shift_share=generator.shift_share(step - 1, cfg.steps, cfg.max_shift_share))
        history.append(logs)
        if progress:
            progress(step, cfg.steps, logs)
        if step % cfg.save_every == 0:
            ckpt = out_dir / f"checkpoint-{step}"
            model.save_pretrained(ckpt, save_embedding_layers=False)  # LoRA only; never consult a hub
            extra = on_checkpoint(step, ckpt) if on_checkpoint else {}
            _write_trainer_state(ckpt, step, cfg, history, extra)
    return history


def _write_trainer_state(ckpt: Path, step: int, cfg: RFTConfig, history: list[dict], extra: dict) -> None:
    """The fields of HF Trainer's ``trainer_state.json`` that readers use, plus this run's evaluation."""
    window = history[-cfg.save_every:]
    state = {
        "global_step": step, "max_steps": cfg.steps, "epoch": step / cfg.steps,
        "logging_steps": 1, "save_steps": cfg.save_every, "train_batch_size": cfg.prompts_per_step,
        "log_history": [{k: round(v, 6) if isinstance(v, float) else v for k, v in h.items()} for h in history],
        "best_metric": None, "best_model_checkpoint": None, "is_world_process_zero": True,
        "mean_reward": sum(h["reward"] for h in window) / len(window),
        "eval": extra,
    }
    (ckpt / "trainer_state.json").write_text(json.dumps(state, indent=1))
