"""Teacher-forced scoring and the answer probe for vision-language trajectories (Qwen2.5-VL).

Scoring: one forward pass per batch (vision tower + language model), the LM head on the completion rows
only; image tokens are prompt tokens and never scored rows. For a series whose adapters leave the vision
tower untouched (LoRA on the language model, ms-swift ``--freeze_vit``), the image features are computed
once per batch and reused under every checkpoint (``image_features`` / ``mm_encoder_outputs``).

    batch = collate(encs, proc, model)
    lp = completion_logprobs(model, batch)          # (sum of completion lengths, V) log-distributions
    per_token = token_logprobs(model, batch)        # [(L_b,)] log p(t_j | image, prompt, t_<j)

The probe (see core/drift/probe.py for the text version) packs a trajectory's prefix and, per probe position j,
a copy of the answer template and label prefixes into one forward pass whose 4-D mask lets each copy see
only ``x[:j]``: the prefix, images included, is encoded once and shared by every probe (its KV cache, in
effect). Positions are Qwen's 3-D rotary ones: the prefix's from ``get_rope_index``; a probe block after j
continues as text does, at ``max(positions[:, :j]) + 1 + r`` on all three axes (``next_text_position``),
which equals what the model computes when it re-encodes ``x[:j] + template + label`` (``probe_vl_naive``,
the reference the tests compare with).
"""

from __future__ import annotations

import numpy as np
import torch

from core.drift.probe import ProbeConfig, _Batch, _tokens, build_tree
from core.errors import InputError
from core.models.vision import (
    IMAGE_PAD,
    VISION_END,
    VLBatch,
    VLEncoded,
    VLProcessor,
    as_vl,
    rope_positions,
    vl_core,
)


def _head(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_output_embeddings()


def vision_untouched(model) -> bool:
    """True when no adapter layer sits in the vision tower, so image features are the same under every
    adapter of the series (and may be computed once)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    visual = vl_core(model).visual
    return not any(isinstance(m, BaseTunerLayer) for m in visual.modules())


@torch.no_grad()
def image_features(model, pixel_values: torch.Tensor | None, grid: torch.Tensor | None) -> dict | None:
    """The vision tower's output for a batch's images, in the form the model takes back as
    ``mm_encoder_outputs`` (so a series can reuse it across adapter checkpoints)."""
    if pixel_values is None:
        return None
    return {"image": vl_core(model).get_image_features(pixel_values, grid, return_dict=True)}


def _trunk(model, ids, mask, pos, pixel_values, grid, features) -> torch.Tensor:
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
    hidden = _trunk(model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.pixel_values,
                    batch.image_grid_thw, features)  # (B, T, H)
    rows = _rows(batch.spans, hidden.shape[1], hidden.device)
    return hidden.reshape(-1, hidden.shape[-1])[rows]


def series_hidden(series, model, encs: list[VLEncoded]) -> torch.Tensor:
    """``completion_hidden`` of one batch under a VL series' active checkpoint, its inputs and image features
    built once per batch (``VLSeries.inputs``); ``core.drift.scoring`` computes every statistic from these rows as
    for text. No shared-prefix KV reuse: image tokens make the rows differ.  -> (sum of L_b, H)"""
    batch, features = series.inputs([as_vl(e) for e in encs], model)
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


def _tree_positions(pos3: torch.Tensor, positions: list[int], flat: list[int]) -> torch.Tensor:
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
def probe_vl(model, proc: VLProcessor, encs: list[VLEncoded], positions: list[list[int]], cfg: ProbeConfig,
             labels: list[str], features: dict | None = None) -> list[np.ndarray]:
    """log P(label | x[:j]) for each trajectory's probe positions, all trees in one forward pass.
    -> [(P_b, K)]  (``features``: this batch's image features, reused across adapter checkpoints)"""
    tk = _tokens(proc.tokenizer, cfg, labels)
    trees, pos3s = [], []
    for e, ch in zip(encs, positions, strict=True):
        _check_positions(e, ch, proc)
        ids, flat, allow, reads = build_tree(e.input_ids[: ch[-1]], ch, tk)
        prefix = torch.tensor([e.input_ids[: ch[-1]]])
        types = (prefix == proc.token_id(IMAGE_PAD)).int()
        p3 = rope_positions(model, prefix, types, e.image_grid_thw, torch.ones_like(prefix))[:, 0]  # (3, T)
        trees.append((ids, flat, allow, reads))
        pos3s.append(_tree_positions(p3, ch, flat))
    dev = next(model.parameters()).device
    batch = _Batch.make(trees, len(labels), dev, next(model.parameters()).dtype)
    pos = torch.zeros((3,) + tuple(batch.ids.shape), dtype=torch.long)
    for b, p3 in enumerate(pos3s):
        pos[:, b, : p3.shape[1]] = p3
    pixels = [e.pixel_values for e in encs if e.pixel_values is not None]
    grids = [e.image_grid_thw for e in encs if e.image_grid_thw is not None]
    hidden = _trunk(model, batch.ids, batch.allow, pos.to(dev), torch.cat(pixels).to(dev) if pixels else None,
                    torch.cat(grids).to(dev) if grids else None, features)  # (B, L, H)
    flat = _head(model)(hidden.reshape(-1, hidden.shape[-1])[batch.rows]).float()  # (R, V) only rows read
    picked = torch.log_softmax(flat, -1).gather(-1, batch.toks[:, None]).squeeze(-1).cpu().numpy()
    sums = np.add.reduceat(picked, np.cumsum([0] + batch.lengths[:-1]))
    out, k = [], 0
    for p, n in batch.shapes:
        out.append(sums[k: k + p * n].reshape(p, n))
        k += p * n
    return out


@torch.no_grad()
def probe_vl_naive(model, proc: VLProcessor, enc: VLEncoded, positions: list[int], cfg: ProbeConfig,
                   labels: list[str]) -> np.ndarray:
    """Reference: re-encode images + ``x[:j]`` + template + label for every position and label with the
    model's own forward (which computes its 3-D positions itself).  -> (P, K) log-probs"""
    tk = _tokens(proc.tokenizer, cfg, labels)
    pad = proc.token_id(IMAGE_PAD)
    dev = next(model.parameters()).device
    out = np.zeros((len(positions), len(labels)))
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


# ---- the probe over a series (core.drift.probe.probe's vision-language path) ------------------------------------

def _chunks(positions: list[int], per_position: int, budget: int) -> list[list[int]]:
    """Probe positions split so that each tree (prefix up to its last position + its blocks) stays within
    ``budget`` tokens; each chunk encodes its prefix (images included) once."""
    out, current = [], []
    for j in positions:
        if current and j + per_position * (len(current) + 1) > budget:
            out.append(current)
            current = []
        current.append(j)
    return out + ([current] if current else [])


def _jobs(series, encoded: list[VLEncoded], cfg: ProbeConfig, tk) -> list[tuple[VLEncoded, list[int]]]:
    """(trajectory, probe positions) trees: the text probe's positions from after the last image on (a prefix
    that cuts an image cannot be encoded), chunked to ``cfg.max_tree_tokens``."""
    from core.drift.probe import probe_positions

    vocab = series.tokenizer.get_vocab()
    sentence_ids = {i for t, i in vocab.items() if t.strip("▁Ġ ").endswith((".", "?", "!"))}
    per_position = len(tk.template) + sum(len(lab) - 1 for lab in tk.labels)
    jobs = []
    for e in encoded:
        first = first_probe_position(e, series.processor)
        positions = [j for j in probe_positions(e, cfg.positions, tk.template[0], sentence_ids, cfg.include_prompt)
                     if j >= first]
        jobs += [(e, ch) for ch in _chunks(positions, per_position, cfg.max_tree_tokens)]
    return jobs


def probe_series(series, encoded: list[VLEncoded], cfg: ProbeConfig | None = None, progress=None,
                 should_cancel=None):
    """``core.drift.probe.probe`` for a ``core.models.vl_series.VLSeries``: the same table (one row per trajectory x
    checkpoint x probe position, ``p:<label>`` columns, ``gold_prob``, ``answer``, ``label_mass``), each
    belief from ``probe_vl`` (equal to naive re-encoding with the images); the image features of a group
    computed once for every checkpoint when the vision tower is shared."""
    import pandas as pd

    from core.drift.probe import _belief_frame, _group_by_budget, labels_of
    from core.progress import Cancelled

    cfg = cfg or ProbeConfig()
    series.forget_inputs()  # scoring's last batch is not needed here: its device memory goes back
    encoded = [as_vl(e) for e in encoded]
    labels = labels_of(encoded, cfg)
    tk = _tokens(series.tokenizer, cfg, labels)
    per_position = len(tk.template) + sum(len(lab) - 1 for lab in tk.labels)
    groups = _group_by_budget(_jobs(series, encoded, cfg, tk), per_position, cfg.max_tree_tokens)
    results: dict[str, list] = {name: [] for name in series.names}
    features: dict[int, dict | None] = {}
    total, done = len(groups) * len(series.names), 0

    def run(name: str, g: int, model) -> None:
        nonlocal done
        if should_cancel and should_cancel():
            raise Cancelled("probe cancelled")
        encs, chunks = [e for e, _ in groups[g]], [ch for _, ch in groups[g]]
        if series.shared_vision and g not in features:
            features.clear()  # one group's features kept at a time
            pixels = [e.pixel_values for e in encs if e.pixel_values is not None]
            grids = [e.image_grid_thw for e in encs if e.image_grid_thw is not None]
            dev = next(model.parameters()).device
            features[g] = image_features(model, torch.cat(pixels).to(dev), torch.cat(grids).to(dev)) if pixels else None
        results[name] += probe_vl(model, series.processor, encs, chunks, cfg, labels, features.get(g))
        done += 1
        if progress:
            progress(done, total, f"{name}: group {done % len(groups) or len(groups)}/{len(groups)}")

    if all(c.kind == "adapter" for c in series.checkpoints):  # switching is free: group-outer
        for g in range(len(groups)):
            for name in series.names:
                with series.activate(name) as model:
                    run(name, g, model)
    else:  # full checkpoints: each loaded once
        for name in series.names:
            with series.activate(name) as model:
                for g in range(len(groups)):
                    run(name, g, model)
    frames = []
    for name in series.names:
        per_traj: dict[str, list] = {e.id: [e, [], []] for e in encoded}
        for (e, ch), lp in zip([job for group in groups for job in group], results[name], strict=True):
            per_traj[e.id][1] += ch
            per_traj[e.id][2].append(lp)
        frames += [_belief_frame(e, name, series.steps[name], pos, np.concatenate(lps), labels)
                   for e, pos, lps in per_traj.values()]
    return pd.concat(frames, ignore_index=True)
