"""Teacher-forced scoring of trajectories under every checkpoint of a series.

For each completion token t_j of each trajectory and each checkpoint i, with p_i = pi_i(. | prompt, t_<j):

    logprob = log p_i(t_j)            rank = 1 + #{v : p_i(v) > p_i(t_j)}     entropy = -sum_v p_i(v) log p_i(v)
    kl_base = KL(p_i || p_base)       js_base = JS(p_i, p_base)   (and kl_prev / js_prev to checkpoint i-1)
    JS(p, q) = (KL(p || m) + KL(q || m)) / 2,  m = (p + q) / 2       (natural log; JS <= ln 2)

Computed through entropies, which each checkpoint's pass already has: KL(p || q) = -H(p) - sum p log q and
JS(p, q) = H(m) - (H(p) + H(q)) / 2, with the sums as row-wise products summed pairwise (``_dot``), so each
statistic costs one or two passes over the (tokens x vocabulary) matrix instead of four to six.

"Checkpoint i-1" is the series' parent of i (``ModelSeries.parents``): for a CPO run's adapter, the checkpoint
it started from (so its kl_prev is the per-token drift start -> repaired); for an RFT checkpoint, the previous
one that is not a CPO run.

Memory is linear in the batch's hidden states, not its distributions: each checkpoint's pass keeps the
completion rows' last hidden states (N, H) and its LM head (a reference to the head's weight, no copy),
and the statistics run over row chunks, each applying the current, base and previous checkpoint's head to
its rows only, so no (N, V) matrix is ever whole (a 4,096-token row at vocabulary 151,936 would be
2.5 GB of fp32 logits per checkpoint). Batches are sorted by length; adapters are switched (never
reloaded) between forward passes; a series of full-model checkpoints loads each checkpoint once per group of
batches whose base and previous hidden states fit ``group_bytes``. The hidden states of a batch come from the
series' family (``core.models.families``): a text batch padded on the right, a prompt prefix common to the
whole batch (a system prompt, an instruction) of at least ``MIN_SHARED`` (32) tokens encoded once per checkpoint
and its KV cache shared by the rows; a Qwen-VL batch with its images, their features computed once for every
adapter that leaves the vision tower untouched.

    df = score(series, encoded, ScoreConfig(top_k=5))   # one row per trajectory x checkpoint x token
    for idx, frame in score_batches(series, encoded, cfg): ...   # the same rows, one batch at a time
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from core.drift.buffers import Buffers
from core.errors import NonFiniteError
from core.io.trajectories import Encoded, vocab_texts
from core.models.forward import chunk_rows, inner, logit_transform
from core.models.memory import pin_mmap_threshold
from core.models.series import ModelSeries
from core.progress import Cancelled, Progress


@dataclass
class ScoreConfig:
    top_k: int = 5  # alternatives kept per token
    batch_size: int | None = 8  # trajectories per forward pass; None: the most that fit (core.models.fit)
    group_bytes: int = 2 << 30  # series with full-model checkpoints: hidden states kept per load (see _groups)
    # encode a batch's common prompt prefix once (a text family's shared_prefix). None: on CPU only, where it measured
    # 1.8-2.0x faster behind a 60-token instruction; on an H200 (bf16, Qwen2.5-0.5B shapes, a 64-token system
    # prompt) repeating the cache cost more than it saved (3.03 s vs 2.05 s unshared)
    share_prefix: bool | None = None

    def __post_init__(self):
        if not 0 <= self.top_k <= 50:
            raise ValueError(f"top_k: expected 0..50, got {self.top_k}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")


def _dot(a: torch.Tensor, b: torch.Tensor, bufs: Buffers | None = None) -> torch.Tensor:
    """Row-wise dot product: a * b into a scratch matrix (one of ``bufs``' when given), then a row sum. The
    sum's pairwise accumulation keeps the error near 1e-6 at vocabulary 151,936, where an einsum's (one float32
    accumulator per row in BLAS) reached 1.2e-3 on an entropy and 3e-5 on a KL or JS (issue 27; the same speed).
    (N, V), (N, V) -> (N,)"""
    ab = torch.mul(a, b, out=_scratch(bufs, a))
    out = ab.sum(-1)
    if bufs is not None:
        bufs.give(ab)
    return out


def entropy(logp: torch.Tensor, p: torch.Tensor | None = None, bufs: Buffers | None = None) -> torch.Tensor:
    """H(p) = -sum_v p log p.  (N, V) -> (N,)"""
    return -_dot(logp.exp() if p is None else p, logp, bufs)


def kl(logp: torch.Tensor, logq: torch.Tensor, p: torch.Tensor | None = None, h_p: torch.Tensor | None = None,
       bufs: Buffers | None = None) -> torch.Tensor:
    """KL(p || q) = -H(p) - sum p log q, from log-probabilities (p and H(p) reused if given).  (N, V) -> (N,)"""
    p = logp.exp() if p is None else p
    h_p = entropy(logp, p, bufs) if h_p is None else h_p
    return (-h_p - _dot(p, logq, bufs)).clamp_min(0.0)


def js(logp: torch.Tensor, logq: torch.Tensor, p: torch.Tensor | None = None, q: torch.Tensor | None = None,
       h_p: torch.Tensor | None = None, h_q: torch.Tensor | None = None, bufs: Buffers | None = None) -> torch.Tensor:
    """JS(p, q) = H(m) - (H(p) + H(q)) / 2, m = (p + q) / 2 (m and log m in ``bufs``' matrices when given).
    (N, V) -> (N,)"""
    p = logp.exp() if p is None else p
    q = logq.exp() if q is None else q
    h_p = entropy(logp, p, bufs) if h_p is None else h_p
    h_q = entropy(logq, q, bufs) if h_q is None else h_q
    m = torch.add(p, q, out=_scratch(bufs, p)).mul_(0.5)
    log_m = torch.log(m, out=_scratch(bufs, p))
    h_m = -log_m.mul_(m).sum(-1)  # m log m in log m's matrix: no third scratch (_dot's accuracy)
    if bufs is not None:
        bufs.give(m, log_m)
    return (h_m - 0.5 * (h_p + h_q)).clamp_min(0.0)


def _scratch(bufs: Buffers | None, like: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(like) if bufs is None else bufs.fresh(like)


def token_stats(logp: torch.Tensor, targets: torch.Tensor, top_k: int, p: torch.Tensor | None = None,
                h: torch.Tensor | None = None, bufs: Buffers | None = None) -> dict[str, torch.Tensor]:
    """Per-position statistics of the actual token.  logp (N, V), targets (N,) -> dict of (N,) / (N, k)"""
    lp = logp.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    # the rank counts words above the token as float 0/1 sums (exact below 2^24 words): a boolean matrix's sum
    # ran 2-3x slower, and was a tenth of scoring's time at vocabulary 151,936 (issue 27)
    above = torch.gt(logp, lp[:, None], out=_scratch(bufs, logp))
    out = {"logprob": lp, "rank": above.sum(-1).to(torch.int64) + 1,
           "entropy": entropy(logp, p, bufs) if h is None else h}
    if bufs is not None:
        bufs.give(above)
    if top_k:
        values, ids = largest(logp, top_k)
        out["top_ids"], out["top_probs"] = ids, values.exp()  # (N, k)
    return out


TOP_BLOCK = 128  # words a block in ``largest``'s first pass


def largest(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row, largest first, and their columns: ``x.topk(k)``'s values (among equal
    values the columns may be others). On CPU at large vocabularies, each row's maxima over blocks of
    ``TOP_BLOCK`` words first, then ``topk`` over the words of the k best blocks and the tail: a word outside
    them has k words at least as large in them. CPU topk over 151,936 words was the costliest single pass of
    the statistics (53 CPU-ms a 220-row chunk, 18 this way; issue 27).  (N, V) -> (N, k), (N, k) int64"""
    n, v = x.shape
    blocks = v // TOP_BLOCK
    if x.device.type != "cpu" or blocks < 8 * k:
        top = x.topk(k, dim=-1)
        return top.values, top.indices
    body = x[:, : blocks * TOP_BLOCK].unflatten(1, (blocks, TOP_BLOCK))  # (N, blocks, B), a view
    best = body.amax(-1).topk(k, dim=-1).indices  # (N, k) the blocks holding the k largest
    cols = (best[:, :, None] * TOP_BLOCK + torch.arange(TOP_BLOCK, device=x.device)).flatten(1)  # (N, k B)
    cand = body.gather(1, best[:, :, None].expand(n, k, TOP_BLOCK)).flatten(1)
    if blocks * TOP_BLOCK < v:  # the words after the last whole block are candidates as they are
        cand = torch.cat([cand, x[:, blocks * TOP_BLOCK:]], 1)
        cols = torch.cat([cols, torch.arange(blocks * TOP_BLOCK, v, device=x.device).expand(n, -1)], 1)
    top = cand.topk(k, dim=-1)
    return top.values, cols.gather(1, top.indices)


def batch_plan(encoded: list[Encoded], cfg: ScoreConfig) -> list[list[int]]:
    """The batches ``score_batches`` runs, in order: indices into ``encoded`` (``cfg.batch_size`` resolved)."""
    if cfg.batch_size is None:
        raise ValueError("batch_plan: resolve batch_size first (core.models.fit.plan_batch)")
    return length_batches(encoded, cfg.batch_size)


def length_batches(encoded: list[Encoded], size: int) -> list[list[int]]:
    """Indices into ``encoded`` sorted by length, ``size`` at a time (short rows padded with short ones)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    return [order[i: i + size] for i in range(0, len(order), size)]


class _Rows:
    """One checkpoint's view of one batch: the completion rows' hidden states and that checkpoint's LM head,
    enough to rebuild any chunk of its log-distributions on demand.  hidden (N, H)"""

    def __init__(self, model, hidden: torch.Tensor):
        self.hidden = hidden
        self.finish = logit_transform(model)  # what the model's forward does after its head (scale, soft cap)
        out = inner(model).get_output_embeddings()
        if type(out) is torch.nn.Linear:  # the usual head: keep its tensors (a full checkpoint's are freed with it
            self.weight, self.bias, self.module = out.weight, out.bias, None  # otherwise; no copy is made)
        else:  # a wrapped head (e.g. an adapter on lm_head) changes with the active adapter: freeze a copy
            self.weight = self.bias = None
            self.module = copy.deepcopy(out)

    def logprobs(self, rows: slice, bufs: Buffers) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p, p, H(p)) of a chunk of rows, log p and p in matrices of ``bufs`` (give them back after use).
        The same numbers as a fresh ``log_softmax(linear(h))``.  -> (n, V), (n, V), (n,)"""
        h = self.hidden[rows]
        logits = bufs.take(h.shape[0])
        if self.module is None and self.weight.dtype == torch.float32:  # straight into the reused matrix
            if self.bias is None:
                torch.mm(h, self.weight.t(), out=logits)
            else:
                torch.addmm(self.bias, h, self.weight.t(), out=logits)
        else:  # low precision or a wrapped head: its own (n, V) result, then float32
            logits.copy_(torch.nn.functional.linear(h, self.weight, self.bias) if self.module is None else self.module(h))
        scale, cap = self.finish  # in place, the same numbers as the model's own finish (forward.finish_logits)
        if scale != 1.0:
            logits.mul_(scale)
        if cap is not None:
            logits.div_(cap).tanh_().mul_(cap)
        lp = torch.log_softmax(logits, -1, out=bufs.take(h.shape[0]))  # (n, V)
        bufs.give(logits)
        p = torch.exp(lp, out=bufs.take(h.shape[0]))
        return lp, p, entropy(lp, p, bufs)


@torch.no_grad()
def score_batches(series: ModelSeries, encoded: list[Encoded], cfg: ScoreConfig | None = None,
                  progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None,
                  skip: Callable[[list[str]], bool] | None = None) -> Iterator[tuple[list[int], pd.DataFrame]]:
    """Score batch by batch: yields (indices into ``encoded``, that batch's rows under every checkpoint,
    checkpoint-major) as soon as a batch is done, so a caller can write it out and forget it. ``skip(ids)``
    True leaves a batch out (one already written by an earlier, interrupted run)."""
    cfg = cfg or ScoreConfig()
    if cfg.batch_size is None and encoded:  # auto: from the free memory left beside the loaded series
        from core.models.fit import plan_for_series

        cfg = replace(cfg, batch_size=plan_for_series(series, encoded, cfg.top_k).batch_size)
    pin_mmap_threshold()  # large buffers by mmap: flat peak memory over many checkpoints (core/models/memory.py)
    batches = [idx for idx in length_batches(encoded, cfg.batch_size) if not (skip and skip([encoded[i].id for i in idx]))]
    texts = np.array(vocab_texts(series.tokenizer) + [""], dtype=object) if cfg.top_k else None
    total = len(batches) * len(series.names)
    share = cfg.share_prefix if cfg.share_prefix is not None else str(series.device) == "cpu"
    can_share = [share]  # turned off for the rest of the call if the architecture cannot share
    parents = series.parents
    progress_done = [0]

    def _tick(name: str, b: int) -> None:
        progress_done[0] += 1
        if progress:
            done = progress_done[0]
            progress(done, total, f"{name}: batch {done % len(batches) or len(batches)}/{len(batches)}")

    until = keep_until(series.names, parents)
    inner = _checkpoint_inner(series, cfg.group_bytes)
    # the row chunks' matrices (core.drift.buffers), made by the first batch, reused by the rest; no taller than
    # the most completion rows a batch has (a short run does not hold matrices of a full chunk's rows)
    reuse: dict = {"most": max([sum(len(encoded[i].completion_ids) for i in idx) for idx in batches] or [1])}
    for group in _groups(series, encoded, batches, cfg.group_bytes, parents, every=inner):
        if inner:
            stats = _group_inner(series, encoded, group, cfg, can_share, until, should_cancel, _tick, reuse)
        else:
            stats = _group_outer(series, encoded, group, cfg, can_share, until, should_cancel, _tick)
        for b, idx in enumerate(group):
            yield idx, _frame(_meta([encoded[i] for i in idx]), stats[b], texts, series.steps)


def _checkpoint_inner(series: ModelSeries, budget: int) -> bool:
    """Whether a group's batches run under every checkpoint first and get their statistics after, each
    checkpoint's LM head applied once per row chunk (``_group_inner``): for adapter series (switching is free;
    the heads are one shared weight), and otherwise (full-model checkpoints, or adapters on the LM head, each
    a copy) when every checkpoint's head fits ``budget`` bytes (each kept until the group's statistics are
    done; a 7B model's is about 1 GB)."""
    out = inner(series.model).get_output_embeddings()
    if all(c.kind == "adapter" for c in series.checkpoints) and type(out) is torch.nn.Linear:
        return True
    head = series.model.get_output_embeddings().weight
    return len(series.names) * head.numel() * head.element_size() <= budget


def batch_hidden(model, series: ModelSeries, encoded: list[Encoded], idx: list[int],
                 can_share: list[bool]) -> torch.Tensor:
    """The completion rows' last hidden states of batch ``idx`` under ``model`` (the active checkpoint), rows
    in batch order, from the series' family (``Family.completion_hidden``: a text batch shares a common prompt
    prefix's KV cache when it can; a vision-language batch runs with its images).  -> (N, H)"""
    return series.family.completion_hidden(series, model, [encoded[i] for i in idx], can_share)


def _targets(series: ModelSeries, encoded: list[Encoded], idx: list[int]) -> torch.Tensor:
    return torch.as_tensor(np.concatenate([encoded[i].completion_ids for i in idx])).to(series.device)


def _group_inner(series: ModelSeries, encoded: list[Encoded], group: list[list[int]], cfg: ScoreConfig,
                 can_share: list[bool], until: dict[str, int], should_cancel, tick,
                 reuse: dict) -> list[dict[str, dict]]:
    """Every batch of the group under every checkpoint (its hidden states, (N, H) each), then each batch's
    statistics with one LM-head pass per checkpoint and row chunk (``_stats_inner``)."""
    rows: list[list[_Rows]] = [[] for _ in group]
    for name in series.names:  # checkpoint-outer for the forward passes: a full checkpoint loads once
        if should_cancel and should_cancel():
            raise Cancelled("scoring cancelled")
        with series.activate(name) as model:
            for b, idx in enumerate(group):
                rows[b].append(_Rows(model, batch_hidden(model, series, encoded, idx, can_share)))
                tick(name, b)
        del model
    if "bufs" not in reuse:  # one set of chunk matrices for the whole scoring call (a new set per batch faulted
        reuse["bufs"] = Buffers(_chunk(rows[0][0], reuse["most"]), _vocab(rows[0][0]),  # its pages in again)
                                rows[0][0].hidden.device)
    return [_stats_inner(rows[b], series.names, series.parents, until, _targets(series, encoded, idx), cfg.top_k,
                         reuse["bufs"]) for b, idx in enumerate(group)]


def _group_outer(series: ModelSeries, encoded: list[Encoded], group: list[list[int]], cfg: ScoreConfig,
                 can_share: list[bool], until: dict[str, int], should_cancel, tick) -> list[dict[str, dict]]:
    """Checkpoint by checkpoint, each batch's statistics as soon as its rows are computed, against the base's
    and the parent's rows kept so far (their LM heads applied again per chunk): full-model series whose heads
    do not all fit beside each other."""
    parents = series.parents
    stats: list[dict[str, dict]] = [{} for _ in group]
    kept: list[dict[str, _Rows]] = [{} for _ in group]  # per batch: its rows under the base and the parents
    for i, name in enumerate(series.names):  # checkpoint-outer within a group: a full checkpoint loads once
        if should_cancel and should_cancel():
            raise Cancelled("scoring cancelled")
        with series.activate(name) as model:
            for b, idx in enumerate(group):
                stats[b][name] = _score_batch(model, series, encoded, idx, cfg, can_share, kept[b],
                                              name, parents.get(name))
                for k in [k for k in kept[b] if k != series.names[0] and until.get(k, -1) <= i]:
                    del kept[b][k]  # no later checkpoint is measured against it
                tick(name, b)
        del model  # a full checkpoint is freed before the next one loads (one in memory at a time)
    return stats


def _score_batch(model, series: ModelSeries, encoded: list[Encoded], idx: list[int], cfg: ScoreConfig,
                 can_share: list[bool], kept: dict[str, _Rows], name: str, parent: str | None) -> dict[str, np.ndarray]:
    """One batch under one (active) checkpoint ``name``: its statistics against the base and its ``parent``
    (their rows in ``kept``, keyed by checkpoint name; this checkpoint's rows are added)."""
    cur = _Rows(model, batch_hidden(model, series, encoded, idx, can_share))
    targets = _targets(series, encoded, idx)
    out = _stats(cur, targets, cfg.top_k, kept.get(series.names[0], cur), kept[parent] if parent else cur)
    kept[name] = cur
    return out


def keep_until(names: list[str], parents: dict[str, str]) -> dict[str, int]:
    """Checkpoint name -> index (in ``names``) of the last checkpoint measured against it."""
    pos = {n: i for i, n in enumerate(names)}
    until: dict[str, int] = {}
    for child, parent in parents.items():
        until[parent] = max(until.get(parent, -1), pos[child])
    return until


def _most_kept(names: list[str], parents: dict[str, str]) -> int:
    """The most rows sets a batch keeps at once while scoring ``names``: the base and the parents still needed
    (2 in a plain series: the base and the previous checkpoint)."""
    until = keep_until(names, parents)
    alive = [sum(1 for k, end in until.items() if k != names[0] and names.index(k) <= i < end)
             for i in range(len(names))]
    return 1 + max([1, *alive])


@torch.no_grad()
def score(series: ModelSeries, encoded: list[Encoded], cfg: ScoreConfig | None = None,
          progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None) -> pd.DataFrame:
    """Score every trajectory under every checkpoint; one row per trajectory x checkpoint x completion token,
    checkpoint-major in series order (``score_batches`` gives the same rows batch by batch)."""
    frames = [f for _, f in score_batches(series, encoded, cfg, progress, should_cancel)]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    order = {name: i for i, name in enumerate(series.names)}
    return df.iloc[np.argsort(df["checkpoint"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)


def _groups(series: ModelSeries, encoded: list[Encoded], batches: list[list[int]], budget: int,
            parents: dict[str, str] | None = None, every: bool = False) -> list[list[list[int]]]:
    """One batch per group for adapter series (switching is free); for series with full-model checkpoints,
    as many batches as keep the base's and the parents' (N, H) hidden states (``every``: every checkpoint's,
    ``_group_inner``) within ``budget`` bytes, so that each full checkpoint is loaded once per group, not once
    per batch."""
    if all(c.kind == "adapter" for c in series.checkpoints):
        return [[b] for b in batches]
    hidden = series.model.get_output_embeddings().weight.shape[1]
    size_of = torch.empty((), dtype=series.dtype).element_size()
    kept = len(series.names) if every else _most_kept(series.names, parents if parents is not None else series.parents)
    groups, current, size = [], [], 0
    for b in batches:
        cost = kept * sum(len(encoded[i].completion_ids) for i in b) * hidden * size_of
        if current and size + cost > budget:
            groups.append(current)
            current, size = [], 0
        current.append(b)
        size += cost
    return groups + ([current] if current else [])


STAT_COLUMNS = ("logprob", "rank", "entropy", "kl_base", "js_base", "kl_prev", "js_prev")


def _meta(encs: list[Encoded]) -> dict[str, np.ndarray]:
    """The columns of a batch that do not depend on the checkpoint (built once, shared by all of them)."""
    lengths = [len(e.completion_ids) for e in encs]
    return {
        "traj_id": np.repeat(np.array([e.id for e in encs], dtype=object), lengths),
        "position": np.concatenate([np.arange(n) for n in lengths]),
        "token_id": np.concatenate([np.asarray(e.completion_ids, dtype=np.int64) for e in encs]),
        "token": np.array([t for e in encs for t in e.completion_tokens], dtype=object),
        "in_think": np.concatenate([np.arange(e.start, e.start + n) < e.think_end for e, n in zip(encs, lengths, strict=True)]),
    }


def _stats(cur: _Rows, targets: torch.Tensor, top_k: int, base: _Rows, prev: _Rows) -> dict[str, np.ndarray]:
    """One batch's statistics under one checkpoint, against the base and the previous checkpoint, over row
    chunks: each chunk's (rows, V) distributions are rebuilt from hidden states into reused matrices."""
    n = cur.hidden.shape[0]
    size = _chunk(cur, n)
    bufs = Buffers(size, _vocab(cur), cur.hidden.device)
    parts: dict[str, list] = {}
    for a in range(0, n, size):
        sl = slice(a, a + size)
        mine = cur.logprobs(sl, bufs)
        st = _chunk_stats(mine, targets[sl], top_k,
                          None if base is cur else (lambda sl=sl: base.logprobs(sl, bufs)),
                          "base" if prev is base else (lambda sl=sl: prev.logprobs(sl, bufs)), bufs, release=True)
        bufs.give(*mine[:2])
        for k, v in st.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}


def _chunk(rows: _Rows, most: int | None = None) -> int:
    """Rows per chunk of ``rows``' statistics, at most ``most`` (default: its own rows)."""
    return max(1, min(chunk_rows(_vocab(rows), rows.hidden.device), rows.hidden.shape[0] if most is None else most))


def _chunk_stats(cur: tuple, targets: torch.Tensor, top_k: int, base, prev, bufs: Buffers,
                 release: bool = False) -> dict[str, torch.Tensor]:
    """A chunk's statistics from its (log p, p, H(p)) ``cur``; ``base`` / ``prev``: a function giving their
    (log q, q, H(q)) for the chunk (called when needed, so a caller may build it then; ``release``: built
    here, given back to ``bufs`` after use), None for the base against itself (exactly zero, no passes over
    the vocabulary), "base" for a parent that is the base."""
    lp, p, h = cur
    st = token_stats(lp, targets, top_k, p, h, bufs)
    if base is None:
        st.update(kl_base=torch.zeros_like(h), js_base=torch.zeros_like(h))
    else:
        bl, bp, bh = base()
        st.update(kl_base=kl(lp, bl, p, h, bufs), js_base=js(lp, bl, p, bp, h, bh, bufs))
        if release:  # freed before the previous checkpoint's chunk is built (when it is built here)
            bufs.give(bl, bp)
    if isinstance(prev, str):  # the first checkpoint after the base: the same two numbers
        st.update(kl_prev=st["kl_base"], js_prev=st["js_base"])
    else:
        pl, pp, ph = prev()
        st.update(kl_prev=kl(lp, pl, p, h, bufs), js_prev=js(lp, pl, p, pp, h, ph, bufs))
        if release and pl is not lp:
            bufs.give(pl, pp)
    return st


def _stats_inner(rows: list[_Rows], names: list[str], parents: dict[str, str], until: dict[str, int],
                 targets: torch.Tensor, top_k: int, bufs: Buffers | None = None) -> dict[str, dict[str, np.ndarray]]:
    """One batch's statistics under every checkpoint (``rows[i]``: its rows under ``names[i]``), checkpoint-inner
    per row chunk: each checkpoint's chunk of log-distributions is built once and measured against the base's
    and its parent's, kept while a later checkpoint needs them (``until``). The same chunks and operations as
    ``_stats``, so the same numbers, bit for bit, with one LM-head pass per checkpoint instead of up to three.
    At most (2 + alive parents) chunks of (log q, q) are kept: the base's, the parents', the current one's;
    all in ``bufs``' matrices, reused from chunk to chunk (and batch to batch when the caller passes them)."""
    size = _chunk(rows[0], bufs.rows if bufs else None)
    bufs = bufs or Buffers(size, _vocab(rows[0]), rows[0].hidden.device)
    parts: dict[str, dict[str, list]] = {name: {} for name in names}
    for a in range(0, rows[0].hidden.shape[0], size):
        sl = slice(a, a + size)
        alive: dict[str, tuple] = {}
        for i, name in enumerate(names):
            cur = rows[i].logprobs(sl, bufs)
            parent = parents.get(name)
            base = None if i == 0 else (lambda alive=alive: alive[names[0]])
            prev = ("base" if i == 0 or parent == names[0] else
                    (lambda c=cur: c) if parent is None else (lambda p=parent, alive=alive: alive[p]))
            for k, v in _chunk_stats(cur, targets[sl], top_k, base, prev, bufs).items():
                parts[name].setdefault(k, []).append(v)
            if i == 0 or until.get(name, -1) > i:
                alive[name] = cur
            else:
                bufs.give(*cur[:2])
            for k in [k for k in alive if k != names[0] and until.get(k, -1) <= i]:
                bufs.give(*alive.pop(k)[:2])  # no later checkpoint is measured against it
        for kept in alive.values():
            bufs.give(*kept[:2])
    return {name: {k: torch.cat(v).cpu().numpy() for k, v in st.items()} for name, st in parts.items()}


def _vocab(rows: _Rows) -> int:
    if rows.module is None:
        return rows.weight.shape[0]
    return rows.module.weight.shape[0] if hasattr(rows.module, "weight") else rows.module(rows.hidden[:1]).shape[-1]


def check_finite_stats(stats: dict[str, dict], meta: dict[str, np.ndarray]) -> None:
    """Where a checkpoint's statistics are produced: a NaN or infinite one is an error naming the checkpoint and
    the trajectory (it would read as ``kl_base 0``, an entropy of 0, and average into every figure)."""
    for name, st in stats.items():
        for column in STAT_COLUMNS:
            bad = ~np.isfinite(st[column])
            if bad.any():
                raise NonFiniteError(f"checkpoint {name}: {column} is not finite ({st[column][bad][0]}) on trajectory "
                                     f"{meta['traj_id'][np.flatnonzero(bad)[0]]!r}; its weights or inputs give NaN or "
                                     "infinite probabilities, so it is not scored")


def _frame(meta: dict[str, np.ndarray], stats: dict[str, dict], texts: np.ndarray | None,
           steps: dict[str, int]) -> pd.DataFrame:
    """One batch's tidy table, checkpoint-major in series order: no Python work per row but the top-k lists."""
    check_finite_stats(stats, meta)
    k = len(stats)
    n = len(meta["position"])
    df = pd.DataFrame({
        "traj_id": np.tile(meta["traj_id"], k),
        "checkpoint": np.repeat(np.array(list(stats), dtype=object), n),
        "step": np.repeat(np.array([steps[name] for name in stats], dtype=np.int64), n),
        "position": np.tile(meta["position"], k), "token_id": np.tile(meta["token_id"], k),
        "token": np.tile(meta["token"], k), "in_think": np.tile(meta["in_think"], k),
        **{c: np.concatenate([b[c] for b in stats.values()]) for c in STAT_COLUMNS},
    })
    df["prob"] = np.exp(df["logprob"])
    if texts is not None:
        ids = np.concatenate([b["top_ids"] for b in stats.values()])  # (rows, k)
        probs = np.concatenate([b["top_probs"] for b in stats.values()]).round(5)
        df["top_tokens"] = list(texts[np.minimum(ids, len(texts) - 1)])  # padded vocabularies: ids past the
        df["top_probs"] = list(probs)  # tokenizer have no text
    return df
