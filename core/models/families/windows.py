"""Sliding-window attention under the probe's own masks (Mistral, Phi-3, Gemma 2 / 3, Qwen2 / Qwen3 with
``use_sliding_window``): what each layer would have seen had the prefix been re-encoded.

The probe passes a ready 4-D mask (its trees, or a chunk of blocks over a cached prefix). transformers takes a
4-D mask as it is, for every layer, so a sliding layer would see the whole prefix, not its window: beliefs off
from re-encoding as soon as a CoT is longer than the window. Here the mask is narrowed for the sliding layers
by position ids (a query at position p sees a key at position k only when p - k < window, the rule of
``transformers.masking_utils.sliding_window_overlay``), one mask per layer type where the model mixes them
(``config.layer_types``; its decoder takes a dict of masks by layer type), the narrowed one alone where every
layer slides (a ``sliding_window`` and no ``layer_types``).

The prefix's KV cache must keep every past state for that (a sliding layer's default cache keeps only the last
window and cannot be cropped back): ``full_cache()`` is a cache whose layers all keep everything.

    masks = layer_masks(model, additive, pos, pos)     # a tensor, or {"full_attention": .., "sliding_attention": ..}
    cache = full_cache()                                # then dec(..., past_key_values=cache, use_cache=True)
"""

from __future__ import annotations

import torch

from core.models.forward import inner

SLIDING = "sliding_attention"


def text_config(model):
    """The language model's config (a vision-language config's text part)."""
    config = inner(model).config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def sliding_window(model) -> int | None:
    """The window of the model's sliding layers, in tokens; None when no layer slides."""
    config = text_config(model)
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window or (types is not None and SLIDING not in types):
        return None
    return int(window)


def layer_masks(model, additive: torch.Tensor, pos_q: torch.Tensor, pos_k: torch.Tensor):
    """The probe's additive mask (B, 1, Q, K) as the model's layers need it: as it is when no layer slides;
    else narrowed for sliding layers to keys within the window of each query's position (pos_q (B, Q), pos_k
    (B, K) position ids): that tensor alone when every layer slides, else a dict by layer type."""
    window = sliding_window(model)
    if window is None:
        return additive
    far = (pos_q[:, None, :, None] - pos_k[:, None, None, :]) >= window  # (B, 1, Q, K)
    narrowed = additive.masked_fill(far.to(additive.device), torch.finfo(additive.dtype).min)
    types = getattr(text_config(model), "layer_types", None)
    if types is None:
        return narrowed
    return {t: narrowed if t == SLIDING else additive for t in set(types)}


def full_cache():
    """A KV cache whose layers keep every past state (cropped back after each probe chunk)."""
    from transformers import DynamicCache

    return DynamicCache()
