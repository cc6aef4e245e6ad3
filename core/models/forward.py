"""The pieces of a causal LM's forward pass that scoring and the probe call separately: the decoder's
last hidden states, and the LM head applied to chosen rows only (the head costs tokens x vocabulary), with
what the model's own forward does to its logits after the head (``finish_logits``: Granite's logit scaling,
Gemma 2's final soft-capping), so a row's log-probs are the model's.

    hidden = hidden_states(model, ids, pos, mask)          # (B, T, H)
    logits = head(model, hidden[0, rows])                   # (N, V)
    lp = token_logprobs(model, hidden, tokens, rows)        # (R,) each distinct row through the head once
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


CHUNK_BYTES = 128 << 20  # CPU: each (rows, V) float32 temporary stays below this. The LM head costs per row
# about twice as much in 55-row chunks (32 MB at vocabulary 151,936) as in 220-row ones: each call streams the
# whole head weight (151,936 x hidden) through the cache for few rows (issue 27: scoring 2.2x the bare forwards'
# CPU time at 32 MB, 1.8x at 64 MB, 1.4x at 128 MB)
CUDA_CHUNK_BYTES = 256 << 20  # GPU: few, large chunks (small ones would cost a kernel launch per few rows)


def chunk_rows(vocab: int, device: torch.device | str) -> int:
    """Rows per chunk of (rows, V) float32 work, sized for the device."""
    budget = CHUNK_BYTES if torch.device(device).type == "cpu" else CUDA_CHUNK_BYTES
    return max(1, budget // (4 * vocab))


ROW_ALIGN = 8  # rows per head call rounded up to this: CPU BLAS computes a row's logits bit-identically whatever
# rows are beside it only at row counts that are multiples of 4 (measured: 1-3, 5-7 and 9-11 rows take another
# kernel, whose last bits differ), so a row read alone and the same row read among others agree


def aligned_head(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on ``hidden``, zero rows padded to a multiple of ``ROW_ALIGN`` and cut off again.  (n, H) -> (n, V)"""
    pad = -hidden.shape[0] % ROW_ALIGN
    if pad:
        hidden = torch.cat([hidden, hidden.new_zeros(pad, hidden.shape[1])])
    return head(model, hidden)[: hidden.shape[0] - pad]


def token_logprobs(model, hidden: torch.Tensor, tokens: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """log p(token) of each read: read r takes row ``rows[r]`` of ``hidden`` (row r when ``rows`` is None) and
    its token ``tokens[r]``. The LM head and the full-vocabulary logsumexp run once per distinct row, in row
    chunks (no (R, V) log-softmax is ever whole), and every read of that row takes its token from it: the
    probe reads all labels' first tokens from one row (the template's last), which was 14 head passes for
    14 labels. The same numbers, bit for bit, as each read through its own row (``rows=None`` on
    ``hidden[rows]``) on CPU.  hidden (N, H), tokens (R,), rows (R,) -> (R,) float32"""
    if rows is None:
        distinct, which = hidden, torch.arange(tokens.shape[0], device=hidden.device)
    else:
        index, which = torch.unique(rows, return_inverse=True)  # which[r]: the distinct row read r reads
        distinct = hidden[index]
    out = torch.empty(tokens.shape[0], dtype=torch.float32, device=hidden.device)
    size = chunk_rows(inner(model).get_output_embeddings().weight.shape[0], hidden.device)
    size = max(ROW_ALIGN, size - size % ROW_ALIGN)
    for a in range(0, distinct.shape[0], size):
        logits = aligned_head(model, distinct[a: a + size]).float()  # (n, V)
        lse = logits.logsumexp(-1)  # (n,)
        reads = ((which >= a) & (which < a + size)).nonzero().squeeze(1)
        r = which[reads] - a
        out[reads] = logits[r, tokens[reads]] - lse[r]
    return out
