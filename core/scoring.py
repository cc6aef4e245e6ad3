"""Teacher-forced scoring of trajectories under every checkpoint of a series.

For each completion token t_j of each trajectory and each checkpoint i, with p_i = pi_i(. | prompt, t_<j):

    logprob = log p_i(t_j)            rank = 1 + #{v : p_i(v) > p_i(t_j)}     entropy = -sum_v p_i(v) log p_i(v)
    kl_base = KL(p_i || p_base)       js_base = JS(p_i, p_base)   (and kl_prev / js_prev to checkpoint i-1)
    JS(p, q) = (KL(p || m) + KL(q || m)) / 2,  m = (p + q) / 2       (natural log; JS <= ln 2)

Computed through entropies, which each checkpoint's pass already has: KL(p || q) = -H(p) - sum p log q and
JS(p, q) = H(m) - (H(p) + H(q)) / 2, with the sums as row-wise dot products (einsum), so each statistic
costs one or two passes over the (tokens x vocabulary) matrix instead of four to six.

Batches are padded on the right and sorted by length; the loop runs batch-outer, checkpoint-inner, so
only the current batch's distributions under the base and the previous checkpoint are kept, and
adapters are switched (never reloaded) between forward passes. A prompt prefix common to a whole batch
(a system prompt, an instruction) of at least MIN_SHARED tokens is encoded once per checkpoint and its
KV cache shared by the batch's rows.

    df = score(series, encoded, ScoreConfig(top_k=5))   # one row per trajectory x checkpoint x token
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from core.forward import decoder, head, hidden_states
from core.memory import pin_mmap_threshold
from core.progress import Cancelled, Progress  # noqa: F401 - re-exported for older callers
from core.series import ModelSeries
from core.trajectories import Encoded, vocab_texts



@dataclass
class ScoreConfig:
    top_k: int = 5  # alternatives kept per token
    batch_size: int = 8  # trajectories per forward pass
    group_bytes: int = 2 << 30  # series with full-model checkpoints: distributions kept per load (see _groups)
    share_prefix: bool = True  # encode a batch's common prompt prefix once (see shared_prefix)

    def __post_init__(self):
        if not 0 <= self.top_k <= 50:
            raise ValueError(f"top_k: expected 0..50, got {self.top_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product without materialising a * b.  (N, V), (N, V) -> (N,)"""
    return torch.einsum("nv,nv->n", a, b)


def entropy(logp: torch.Tensor, p: torch.Tensor | None = None) -> torch.Tensor:
    """H(p) = -sum_v p log p.  (N, V) -> (N,)"""
    return -_dot(logp.exp() if p is None else p, logp)


def kl(logp: torch.Tensor, logq: torch.Tensor, p: torch.Tensor | None = None, h_p: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p || q) = -H(p) - sum p log q, from log-probabilities (p and H(p) reused if given).  (N, V) -> (N,)"""
    p = logp.exp() if p is None else p
    h_p = entropy(logp, p) if h_p is None else h_p
    return (-h_p - _dot(p, logq)).clamp_min(0.0)


def js(logp: torch.Tensor, logq: torch.Tensor, p: torch.Tensor | None = None, q: torch.Tensor | None = None,
       h_p: torch.Tensor | None = None, h_q: torch.Tensor | None = None) -> torch.Tensor:
    """JS(p, q) = H(m) - (H(p) + H(q)) / 2, m = (p + q) / 2.  (N, V) -> (N,)"""
    p = logp.exp() if p is None else p
    q = logq.exp() if q is None else q
    h_p = entropy(logp, p) if h_p is None else h_p
    h_q = entropy(logq, q) if h_q is None else h_q
    m = (p + q).mul_(0.5)
    h_m = -_dot(m, torch.log(m))
    return (h_m - 0.5 * (h_p + h_q)).clamp_min(0.0)


def token_stats(logp: torch.Tensor, targets: torch.Tensor, top_k: int, p: torch.Tensor | None = None,
                h: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-position statistics of the actual token.  logp (N, V), targets (N,) -> dict of (N,) / (N, k)"""
    lp = logp.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    out = {"logprob": lp, "rank": (logp > lp[:, None]).sum(-1) + 1,
           "entropy": entropy(logp, p) if h is None else h}
    if top_k:
        top = logp.topk(top_k, dim=-1)
        out["top_ids"], out["top_probs"] = top.indices, top.values.exp()  # (N, k)
    return out


def _batches(encoded: list[Encoded], size: int) -> list[list[int]]:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    return [order[i: i + size] for i in range(0, len(order), size)]


def _pad(encoded: list[Encoded], idx: list[int], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(encoded[i].input_ids) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(encoded[i].input_ids)
        ids[row, :n] = torch.tensor(encoded[i].input_ids)
        mask[row, :n] = 1
    return ids.to(device), mask.to(device)


MIN_SHARED = 32  # tokens: a shorter common prefix saves less than the extra forward call costs


def shared_prefix(ids: torch.Tensor, spans: list[tuple[int, int]]) -> int:
    """How many leading tokens every row of the padded batch ``ids`` (B, T) has in common, up to the
    position that predicts the first completion token (whose hidden state must be computed per row)."""
    limit = min(s for s, _ in spans) - 1
    if ids.shape[0] < 2 or limit <= 0:
        return 0
    same = (ids[:, :limit] == ids[:1, :limit]).all(0).int()  # (limit,)
    return int(same.cumprod(0).sum())


def _after_shared_prefix(decoder, ids: torch.Tensor, mask: torch.Tensor, shared: int) -> torch.Tensor | None:
    """Hidden states of the positions after the shared prefix, the prefix encoded once.  -> (B, T - shared, H)
    None for architectures whose cache cannot be repeated over a batch (some hybrid or recurrent layers):
    the caller then encodes every row in full."""
    try:
        cache = decoder(input_ids=ids[:1, :shared], use_cache=True).past_key_values
        cache.batch_repeat_interleave(ids.shape[0])
    except (AttributeError, NotImplementedError, TypeError):
        return None
    pos = torch.arange(shared, ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    return decoder(input_ids=ids[:, shared:], attention_mask=mask, position_ids=pos, past_key_values=cache,
                   use_cache=True).last_hidden_state


def completion_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, spans: list[tuple[int, int]],
                        shared: int = 0) -> tuple[torch.Tensor, int]:
    """Log-distributions predicting each completion token, rows in batch order, and the shared prefix length
    actually used (0 when the architecture cannot share).  -> (sum of L_b, V) float32, int
    The LM head runs on the completion rows only (the prompt's rows would cost T x V for nothing). With
    ``shared`` (see ``shared_prefix``) of at least MIN_SHARED tokens, the common prefix (a system prompt,
    an instruction) is encoded once and its KV cache repeated over the batch, so it costs one row, not B."""
    hidden = _after_shared_prefix(decoder(model), ids, mask, shared) if shared >= MIN_SHARED else None
    if hidden is None:
        shared, hidden = 0, hidden_states(model, ids, None, mask)  # (B, T, H)
    width = ids.shape[1] - shared
    rows = torch.cat([torch.arange(s - 1 - shared, e - 1 - shared) + b * width
                      for b, (s, e) in enumerate(spans)]).to(ids.device)
    return torch.log_softmax(head(model, hidden.reshape(-1, hidden.shape[-1])[rows]).float(), -1), shared


@torch.no_grad()
def score(series: ModelSeries, encoded: list[Encoded], cfg: ScoreConfig | None = None,
          progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None) -> pd.DataFrame:
    """Score every trajectory under every checkpoint; one row per trajectory x checkpoint x completion token."""
    cfg = cfg or ScoreConfig()
    pin_mmap_threshold()  # large (N, V) buffers by mmap: flat peak memory over many checkpoints (core/memory.py)
    pad = series.tokenizer.pad_token_id if series.tokenizer.pad_token_id is not None else 0
    names, steps = series.names, series.steps
    batches = _batches(encoded, cfg.batch_size)
    groups = _groups(series, encoded, batches, cfg.group_bytes)
    meta = [_meta([encoded[i] for i in idx]) for idx in batches]  # per batch, the same under every checkpoint
    stats: dict[str, list[dict]] = {name: [] for name in names}  # per checkpoint, one dict per batch, in order
    total, done, first = len(batches) * len(names), 0, 0
    can_share = cfg.share_prefix  # turned off for the rest of the call if the architecture cannot share
    for group in groups:
        prepared = []
        for b, idx in enumerate(group):
            ids, mask = _pad(encoded, idx, pad, series.device)
            spans = [(encoded[i].start, len(encoded[i].input_ids)) for i in idx]
            shared = shared_prefix(ids, spans) if can_share else 0
            prepared.append((ids, mask, spans, shared, torch.as_tensor(meta[first + b]["token_id"]).to(series.device)))
        base: dict[int, tuple] = {}
        prev: dict[int, tuple] = {}
        for name in names:  # checkpoint-outer within a group: a full checkpoint loads once per group
            if should_cancel and should_cancel():
                raise Cancelled("scoring cancelled")
            with series.activate(name) as model:
                for b, (ids, mask, spans, shared, targets) in enumerate(prepared):
                    lp, used = completion_logprobs(model, ids, mask, spans, shared if can_share else 0)  # (N, V)
                    if can_share and shared >= MIN_SHARED and not used:
                        can_share = False  # the architecture's cache cannot be repeated: do not try again
                    p = lp.exp()
                    cur = (lp, p, entropy(lp, p))  # (N, V), (N, V), (N,)
                    stats[name].append(_stats(cur, targets, cfg.top_k, base.get(b, cur), prev.get(b, cur)))
                    base.setdefault(b, cur)
                    prev[b] = cur
                    done += 1
                    if progress:
                        progress(done, total, f"{name}: batch {first + b + 1}/{len(batches)}")
            del model  # a full checkpoint is freed before the next one loads (one in memory at a time)
        first += len(group)
    return _frame(meta, stats, series.tokenizer, cfg.top_k, steps)


def _groups(series: ModelSeries, encoded: list[Encoded], batches: list[list[int]], budget: int) -> list[list[list[int]]]:
    """One batch per group for adapter series (switching is free); for series with full-model checkpoints,
    as many batches as keep the base's and the previous checkpoint's (N, V) distributions within
    ``budget`` bytes, so that each full checkpoint is loaded once per group, not once per batch."""
    if all(c.kind == "adapter" for c in series.checkpoints):
        return [[b] for b in batches]
    vocab = series.model.get_output_embeddings().weight.shape[0]
    groups, current, size = [], [], 0
    for b in batches:
        rows = sum(len(encoded[i].completion_ids) for i in b)
        cost = 2 * 2 * rows * vocab * 4  # (log-probs + probs) x (base + previous), float32
        if current and size + cost > budget:
            groups.append(current)
            current, size = [], 0
        current.append(b)
        size += cost
    return groups + ([current] if current else [])


CHUNK_BYTES = 4 << 20  # CPU: statistics run over row chunks whose (rows, V) temporaries stay below this
CUDA_CHUNK_BYTES = 512 << 20  # GPU: few, large chunks (small ones would cost a kernel launch per few rows)
STAT_COLUMNS = ("logprob", "rank", "entropy", "kl_base", "js_base", "kl_prev", "js_prev")


def _meta(encs: list[Encoded]) -> dict[str, np.ndarray]:
    """The columns of a batch that do not depend on the checkpoint (built once, shared by all of them)."""
    lengths = [len(e.completion_ids) for e in encs]
    return {
        "traj_id": np.repeat(np.array([e.id for e in encs], dtype=object), lengths),
        "position": np.concatenate([np.arange(n) for n in lengths]),
        "token_id": np.concatenate([np.asarray(e.completion_ids, dtype=np.int64) for e in encs]),
        "token": np.array([t for e in encs for t in e.completion_tokens], dtype=object),
        "in_think": np.concatenate([np.arange(e.start, e.start + n) < e.think_end for e, n in zip(encs, lengths)]),
    }


def _stats(cur: tuple, targets: torch.Tensor, top_k: int, base: tuple, prev: tuple) -> dict[str, np.ndarray]:
    """One batch's statistics under one checkpoint; ``cur``, ``base``, ``prev`` are (log-probs, probs,
    entropy) triples.

    The statistics run over row chunks so that their (rows, V) temporaries stay small and are reused
    from the heap (see core/memory.py) instead of each being a fresh, page-faulting allocation."""
    n, vocab = cur[0].shape
    size = max(1, (CHUNK_BYTES if cur[0].device.type == "cpu" else CUDA_CHUNK_BYTES) // (4 * vocab))
    parts: dict[str, list] = {}
    for a in range(0, n, size):
        sl = slice(a, a + size)
        lp, p, h = (t[sl] for t in cur)
        bl, bp, bh = (t[sl] for t in base)
        pl, pp, ph = (t[sl] for t in prev)
        st = token_stats(lp, targets[sl], top_k, p, h)
        if base is cur:  # the base against itself: exactly zero, no passes over the vocabulary
            st.update(kl_base=torch.zeros_like(h), js_base=torch.zeros_like(h))
        else:
            st.update(kl_base=kl(lp, bl, p, h), js_base=js(lp, bl, p, bp, h, bh))
        if prev is base:  # the first checkpoint after the base: the same two numbers
            st.update(kl_prev=st["kl_base"], js_prev=st["js_base"])
        else:
            st.update(kl_prev=kl(lp, pl, p, h), js_prev=js(lp, pl, p, pp, h, ph))
        for k, v in st.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}


def _frame(meta: list[dict], stats: dict[str, list[dict]], tokenizer, top_k: int, steps: dict[str, int]) -> pd.DataFrame:
    """The tidy table, checkpoint-major in series order: no Python work per row but the top-k lists' views."""
    k = len(stats)
    cols: dict[str, np.ndarray] = {c: np.concatenate([m[c] for m in meta] * k) for c in meta[0]}
    n = len(cols["position"]) // k if k else 0
    df = pd.DataFrame({
        "traj_id": cols["traj_id"],
        "checkpoint": np.repeat(np.array(list(stats), dtype=object), n),
        "step": np.repeat(np.array([steps[name] for name in stats], dtype=np.int64), n),
        "position": cols["position"], "token_id": cols["token_id"], "token": cols["token"], "in_think": cols["in_think"],
        **{c: np.concatenate([b[c] for parts in stats.values() for b in parts]) for c in STAT_COLUMNS},
    })
    df["prob"] = np.exp(df["logprob"])
    if top_k:
        ids = np.concatenate([b["top_ids"] for parts in stats.values() for b in parts])  # (rows, k)
        probs = np.concatenate([b["top_probs"] for parts in stats.values() for b in parts]).round(5)
        texts = np.array(vocab_texts(tokenizer) + [""], dtype=object)  # padded vocabularies: ids past the
        df["top_tokens"] = list(texts[np.minimum(ids, len(texts) - 1)])  # tokenizer have no text
        df["top_probs"] = list(probs)
    return df
