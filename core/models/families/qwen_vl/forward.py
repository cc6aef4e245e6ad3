"""Qwen-VL forward passes: the scored rows' hidden states and the probe's trees, images included.

Scoring: one forward pass per batch (vision tower + language model), the LM head left to the scorer; image
tokens are prompt tokens and never scored rows. For a series whose adapters leave the vision tower untouched
(LoRA on the language model, ms-swift ``--freeze_vit``), the image features of a batch are computed once and
reused under every checkpoint (``image_features`` / ``mm_encoder_outputs``).

    batch = collate(encs, proc, model)
    per_token = token_logprobs(model, batch)        # [(L_b,)] log p(t_j | image, prompt, t_<j)

The probe (``core.drift.probe`` runs it for every family) packs a trajectory's prefix and, per probe position
j, a copy of the answer template and label prefixes into one forward pass whose 4-D mask lets each copy see
only ``x[:j]`` (``core.models.prefix_trees``): the prefix, images included, is encoded once. Positions are
Qwen's 3-D rotary ones: the prefix's from ``get_rope_index``; a probe block after j continues as text does,
at ``max(positions[:, :j]) + 1 + r`` on all three axes (``next_text_position``), which equals what the model
computes when it re-encodes ``x[:j] + template + label`` (``naive_label_logprobs``, the tests' reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from core.errors import InputError
from core.models.families.qwen_vl.inputs import (
    IMAGE_PAD,
    VISION_END,
    VLBatch,
    VLEncoded,
    VLProcessor,
    as_vl,
    collate,
    rope_positions,
    vl_core,
)
from core.models.forward import inner
from core.models.prefix_trees import LabelTokens, TreeBatch, build_tree


def _head(model):
    return inner(model).get_output_embeddings()


@torch.no_grad()
def image_features(model, pixel_values: torch.Tensor | None, grid: torch.Tensor | None) -> dict | None:
    """The vision tower's output for a batch's images, in the form the model takes back as
    ``mm_encoder_outputs`` (so a series can reuse it across adapter checkpoints)."""
    if pixel_values is None:
        return None
    return {"image": vl_core(model).get_image_features(pixel_values, grid, return_dict=True)}


def group_features(model, encs: list[VLEncoded]) -> dict | None:
    """``image_features`` of every image of ``encs``, in order, on the model's device (None: no images)."""
    pixels = [e.pixel_values for e in encs if e.pixel_values is not None]
    grids = [e.image_grid_thw for e in encs if e.image_grid_thw is not None]
    if not pixels:
        return None
    dev = next(model.parameters()).device
    return image_features(model, torch.cat(pixels).to(dev), torch.cat(grids).to(dev))


def trunk(model, ids, mask, pos, pixel_values, grid, features) -> torch.Tensor:
    """Last hidden states (no LM head).  -> (B, T, H)"""
    kw = {"mm_encoder_outputs": dict(features)} if features else {"pixel_values": pixel_values, "image_grid_thw": grid}
    return vl_core(model)(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **kw).last_hidden_state


def _rows(spans: list[tuple[int, int]], width: int, device) -> torch.Tensor:
    """Flat indices of the rows that predict each completion token: row s-1 .. e-2 of batch row b."""
    return torch.cat([torch.arange(s - 1, e - 1) + b * width for b, (s, e) in enumerate(spans)]).to(device)


@torch.no_grad()
def completion_hidden(model, batch: VLBatch, features: dict | None = None) -> torch.Tensor:
    """Last hidden states of the rows predicting each completion token, rows in batch order (image tokens
    are prompt: never among them).  -> (sum of L_b, H)"""
    hidden = trunk(model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.pixel_values,
                   batch.image_grid_thw, features)  # (B, T, H)
    rows = _rows(batch.spans, hidden.shape[1], hidden.device)
    return hidden.reshape(-1, hidden.shape[-1])[rows]


def series_hidden(series, model, encs: list) -> torch.Tensor:
    """``completion_hidden`` of one batch under a series' active checkpoint, its inputs and image features
    built once per batch (``ModelSeries.keep``: the vision tower's output is shared by every adapter that
    leaves it untouched). No shared-prefix KV reuse: image tokens make the rows differ.  -> (sum of L_b, H)"""
    encs = [as_vl(e) for e in encs]

    def make():
        batch = collate(encs, series.processor, model, series.device)
        shared = image_features(model, batch.pixel_values, batch.image_grid_thw) if series.shared_inputs else None
        return batch, shared

    batch, features = series.keep(tuple((e.id, e.images_key, len(e.input_ids)) for e in encs), make)
    return completion_hidden(model, batch, features)


@torch.no_grad()
def completion_logprobs(model, batch: VLBatch, features: dict | None = None) -> torch.Tensor:
    """Log-distributions predicting each completion token, rows in batch order.  -> (sum of L_b, V) float32"""
    return torch.log_softmax(_head(model)(completion_hidden(model, batch, features)).float(), -1)


def token_logprobs(model, batch: VLBatch, features: dict | None = None) -> list[torch.Tensor]:
    """log p(t_j | images, prompt, t_<j) of every completion token, per row.  -> [(L_b,)]"""
    lp = completion_logprobs(model, batch, features)  # (N, V)
    targets = batch.input_ids[batch.completion_mask]  # (N,) completion tokens in row order
    picked = lp.gather(-1, targets[:, None]).squeeze(-1)
    return list(picked.split([e - s for s, e in batch.spans]))


@torch.no_grad()
def score_table(series, encs: list[VLEncoded], batch_size: int = 8) -> pd.DataFrame:
    """A plain reference scorer: log p of every completion token under every checkpoint, batch-outer and
    checkpoint-inner, each row through the whole log-softmax (``core.drift.scoring`` computes every statistic
    with less memory; tests compare the two).  -> DataFrame(traj_id, checkpoint, step, position, token_id, logprob)"""
    parts: list[dict] = []
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].input_ids))
    for a in range(0, len(order), batch_size):
        group = [encs[i] for i in order[a: a + batch_size]]
        batch = features = None
        for name in series.names:
            with series.activate(name) as model:
                batch = batch or collate(group, series.processor, model, series.device)
                if series.shared_inputs and features is None:
                    features = image_features(model, batch.pixel_values, batch.image_grid_thw)
                lps = token_logprobs(model, batch, features if series.shared_inputs else None)
            parts += [{"traj_id": e.id, "checkpoint": name, "step": series.steps[name],
                       "token_id": np.asarray(e.completion_ids), "logprob": lp.cpu().numpy()}
                      for e, lp in zip(group, lps, strict=True)]
    rank = {n: i for i, n in enumerate(series.names)}
    parts.sort(key=lambda p: rank[p["checkpoint"]])  # checkpoint-major, as core.drift.scoring's table
    n = [len(p["logprob"]) for p in parts]
    return pd.DataFrame({
        "traj_id": np.repeat([p["traj_id"] for p in parts], n),
        "checkpoint": np.repeat([p["checkpoint"] for p in parts], n),
        "step": np.repeat([p["step"] for p in parts], n).astype(np.int64),
        "position": np.concatenate([np.arange(k) for k in n]),
        "token_id": np.concatenate([p["token_id"] for p in parts]),
        "logprob": np.concatenate([p["logprob"] for p in parts]),
    })


# ---- the answer probe -------------------------------------------------------------------------------

def first_probe_position(enc: VLEncoded, proc: VLProcessor) -> int:
    """The smallest prefix length that holds every image whole (a cut image cannot be encoded)."""
    end = proc.token_id(VISION_END)
    ends = [i for i, t in enumerate(enc.input_ids[: enc.start]) if t == end]
    return ends[-1] + 1 if ends else 1


def next_text_position(pos3: torch.Tensor, j: int) -> int:
    """Rotary position of a text token placed right after ``x[:j]``: one past the largest position any
    axis has used so far (after an image that is its start + max(h, w) / merge, as get_rope_index does)."""
    return int(pos3[:, :j].max()) + 1


def tree_positions(pos3: torch.Tensor, positions: list[int], flat: list[int]) -> torch.Tensor:
    """3-D positions of a probe tree: the prefix's own, then each block shifted from its 1-D positions
    ``j + r`` to ``next_text_position(j) + r``.  pos3 (3, T), flat (L,) -> (3, L)"""
    T = pos3.shape[1]
    out = torch.empty((3, len(flat)), dtype=torch.long)
    out[:, :T] = pos3
    per_block = (len(flat) - T) // max(1, len(positions))
    for p, j in enumerate(positions):
        a, b = T + p * per_block, T + (p + 1) * per_block
        out[:, a:b] = torch.tensor(flat[a:b]) - j + next_text_position(pos3, j)
    return out


def _check_positions(enc: VLEncoded, positions: list[int], proc: VLProcessor) -> None:
    first = first_probe_position(enc, proc)
    if positions and min(positions) < first:
        raise InputError(f"probe, trajectory {enc.id}: position {min(positions)} cuts an image "
                         f"(probes start at {first}, after the last image)")


@torch.no_grad()
def tree_label_logprobs(model, proc: VLProcessor, encs: list[VLEncoded], positions: list[list[int]],
                        tk: LabelTokens, features: dict | None = None) -> list[np.ndarray]:
    """log P(label | x[:j]) for each trajectory's probe positions, all trees in one forward pass.
    -> [(P_b, K)]  (``features``: this batch's image features, reused across adapter checkpoints)"""
    trees, pos3s = [], []
    for e, ch in zip(encs, positions, strict=True):
        _check_positions(e, ch, proc)
        ids, flat, allow, reads = build_tree(e.input_ids[: ch[-1]], ch, tk)
        prefix = torch.tensor([e.input_ids[: ch[-1]]])
        types = (prefix == proc.token_id(IMAGE_PAD)).int()
        p3 = rope_positions(model, prefix, types, e.image_grid_thw, torch.ones_like(prefix))[:, 0]  # (3, T)
        trees.append((ids, flat, allow, reads))
        pos3s.append(tree_positions(p3, ch, flat))
    dev = next(model.parameters()).device
    batch = TreeBatch.make(trees, len(tk.labels), dev, next(model.parameters()).dtype)
    pos = torch.zeros((3,) + tuple(batch.ids.shape), dtype=torch.long)
    for b, p3 in enumerate(pos3s):
        pos[:, b, : p3.shape[1]] = p3
    pixels = [e.pixel_values for e in encs if e.pixel_values is not None]
    grids = [e.image_grid_thw for e in encs if e.image_grid_thw is not None]
    hidden = trunk(model, batch.ids, batch.allow, pos.to(dev), torch.cat(pixels).to(dev) if pixels else None,
                   torch.cat(grids).to(dev) if grids else None, features)  # (B, L, H)
    flat = _head(model)(hidden.reshape(-1, hidden.shape[-1])[batch.rows]).float()  # (R, V) only rows read
    return batch.split(torch.log_softmax(flat, -1).gather(-1, batch.toks[:, None]).squeeze(-1).cpu().numpy())


@torch.no_grad()
def naive_label_logprobs(model, proc: VLProcessor, enc: VLEncoded, positions: list[int],
                         tk: LabelTokens) -> np.ndarray:
    """Reference: re-encode images + ``x[:j]`` + template + label for every position and label with the
    model's own forward (which computes its 3-D positions itself).  -> (P, K) log-probs"""
    pad = proc.token_id(IMAGE_PAD)
    dev = next(model.parameters()).device
    out = np.zeros((len(positions), len(tk.labels)))
    for p, j in enumerate(positions):
        for k, lab in enumerate(tk.labels):
            ids = torch.tensor([enc.input_ids[:j] + tk.template + lab], device=dev)
            kw = {}
            if enc.pixel_values is not None:
                kw = dict(pixel_values=enc.pixel_values.to(dev), image_grid_thw=enc.image_grid_thw.to(dev),
                          mm_token_type_ids=(ids == pad).int())
            logp = torch.log_softmax(model(input_ids=ids, **kw).logits[0].float(), -1)
            start = j + len(tk.template)
            out[p, k] = sum(logp[start + q - 1, t].item() for q, t in enumerate(lab))
    return out


@dataclass
class VLTrees:
    """Probe trees of one group of trajectories with their images (``tree_label_logprobs``); the group's
    image features computed under the first checkpoint that asks and kept for the others when the series'
    vision tower is shared (one group's features kept at a time: the batch object's)."""
    processor: VLProcessor
    encs: list[VLEncoded]
    positions: list[list[int]]
    tokens: LabelTokens
    shared: bool
    features: dict | None = field(default=None, repr=False)
    _computed: bool = field(default=False, repr=False)

    def label_logprobs(self, model) -> list[np.ndarray]:
        if self.shared and not self._computed:
            self.features, self._computed = group_features(model, self.encs), True
        return tree_label_logprobs(model, self.processor, self.encs, self.positions, self.tokens, self.features)
