"""The pieces of a causal LM's forward pass that scoring and the probe call separately: the decoder's
last hidden states, and the LM head applied to chosen rows only (the head costs tokens x vocabulary), with
what the model's own forward does to its logits after the head (``finish_logits``: Granite's logit scaling,
Gemma 2's final soft-capping), so a row's log-probs are the model's.

    hidden = hidden_states(model, ids, pos, mask)          # (B, T, H)
    logits = head(model, hidden[0, rows])                   # (N, V)
"""

from __future__ import annotations

import torch


def inner(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder(model):
    """The decoder stack without the LM head."""
    return inner(model).get_decoder()


def hidden_states(model, ids: torch.Tensor, pos: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """Last hidden states without the LM head (which would cost L x V per row).  -> (B, L, H)"""
    return decoder(model)(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).last_hidden_state


def head(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on selected hidden states, logits as the model's forward returns them.  (N, H) -> (N, V)"""
    return finish_logits(model, inner(model).get_output_embeddings()(hidden))


def logit_transform(model) -> tuple[float, float | None]:
    """(scale, soft cap) the model's forward applies to the LM head's output (1.0, None: none). The
    config fields are TRL's (``trl.trainer.utils.add_fused_lm_head``), so training and scoring agree:
    ``logit_scale`` / ``output_multiplier`` / ``lm_head_multiplier`` multiply, ``logits_scaling`` divides
    (Granite), then ``final_logit_softcapping`` caps (Gemma 2, Gemma 3): cap * tanh(logits / cap)."""
    config = inner(model).config
    config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    scale = next((getattr(config, k) for k in ("logit_scale", "output_multiplier", "lm_head_multiplier")
                  if getattr(config, k, None) is not None), None)
    if scale is None and getattr(config, "logits_scaling", None) is not None:
        scale = 1 / config.logits_scaling
    return (1.0 if scale is None else float(scale)), getattr(config, "final_logit_softcapping", None) or None


def finish_logits(model, logits: torch.Tensor) -> torch.Tensor:
    """The LM head's output as the model's forward finishes it (``logit_transform``).  (N, V) -> (N, V)"""
    scale, cap = logit_transform(model)
    if scale != 1.0:
        logits = logits * scale
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


CHUNK_BYTES = 32 << 20  # CPU: each (rows, V) float32 temporary stays below this
CUDA_CHUNK_BYTES = 256 << 20  # GPU: few, large chunks (small ones would cost a kernel launch per few rows)


def chunk_rows(vocab: int, device: torch.device | str) -> int:
    """Rows per chunk of (rows, V) float32 work, sized for the device."""
    budget = CHUNK_BYTES if torch.device(device).type == "cpu" else CUDA_CHUNK_BYTES
    return max(1, budget // (4 * vocab))


def token_logprobs(model, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) of each row, through the LM head in row chunks with a logsumexp per chunk: no (R, V)
    log-softmax is ever whole.  hidden (R, H), tokens (R,) -> (R,) float32"""
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    size = chunk_rows(inner(model).get_output_embeddings().weight.shape[0], hidden.device)
    for a in range(0, hidden.shape[0], size):
        logits = head(model, hidden[a: a + size]).float()  # (n, V)
        out[a: a + size] = logits.gather(-1, tokens[a: a + size, None]).squeeze(-1) - logits.logsumexp(-1)
    return out
