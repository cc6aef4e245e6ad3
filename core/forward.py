"""The pieces of a causal LM's forward pass that scoring and the probe call separately: the decoder's
last hidden states, and the LM head applied to chosen rows only (the head costs tokens x vocabulary).

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
    """The LM head on selected hidden states.  (N, H) -> (N, V)"""
    return inner(model).get_output_embeddings()(hidden)
