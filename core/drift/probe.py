"""The answer probe: the model's belief z_j over the answer labels at positions j along the CoT.

At a probe position j (after the first j - start completion tokens), the belief is the distribution over
labels y_k if the model had to answer right there, through an answer template::

    log P(y_k | x_<j) = sum_q log pi(l_kq | x_<j, template, l_k<q)        z_j = softmax_k log P(y_k | x_<j)

Efficiency: the prefix is never re-encoded per label or per position. One forward pass takes the
trajectory once plus, for every probe position, a copy of the template and the label tokens whose
attention (a 4D mask) sees only ``x[:j]``, its template and its own label prefix, with position ids
continuing from j. That is exactly the KV cache of the prefix, shared by all probes, and mathematically
equal to the naive computation (``probe_naive``), which re-encodes prefix + template + label each time.
A trajectory whose tree would pass ``max_tree_tokens`` (long CoTs, or every position of a 4,096-token one)
takes the prefix's real KV cache instead (``_Cached``): the prefix encoded once, the probe blocks in query
chunks over it, so the tokens encoded stay linear in length. Label log-probs come through a row-chunked
logsumexp (``core.models.forward.token_logprobs``), never a whole-vocabulary log-softmax of every read row.

    df = probe(series, encoded, ProbeConfig(labels=diseases, positions="every"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from core.drift.config import POSITION_MODES
from core.errors import InputError
from core.io import answers
from core.io.trajectories import Encoded
from core.models.forward import decoder, hidden_states, token_logprobs
from core.models.series import ModelSeries
from core.progress import Cancelled, Progress


@dataclass
class ProbeConfig:
    labels: list[str] = field(default_factory=list)  # answer labels; empty: the gold labels in the data
    template: str = answers.DEFAULT.template  # appended after the prefix (core.io.answers: the answer format)
    positions: str = "every"  # every token | sentence ends | only the end of the CoT
    include_prompt: bool = False  # also probe inside the prompt (where a report's findings are read)
    max_tree_tokens: int = 2048  # upper bound on one forward pass's length (positions are chunked)

    def __post_init__(self):
        if self.positions not in POSITION_MODES:
            raise ValueError(f"positions: expected one of {POSITION_MODES}, got {self.positions!r}")
        if not self.template.strip():
            raise ValueError("template: expected the text that introduces the answer, got an empty string")
        if self.max_tree_tokens < 64:
            raise ValueError(f"max_tree_tokens: expected >= 64, got {self.max_tree_tokens}")


@dataclass(frozen=True)
class _Tokens:
    template: list[int]
    labels: list[list[int]]


def _tokens(tokenizer, cfg: ProbeConfig, labels: list[str]) -> _Tokens:
    lab = [tokenizer(" " + y, add_special_tokens=False)["input_ids"] for y in labels]
    return _Tokens(tokenizer(cfg.template, add_special_tokens=False)["input_ids"], lab)


def probe_positions(enc: Encoded, mode: str, template_first: int, sentence_ids: set[int],
                    include_prompt: bool = False) -> list[int]:
    """Prefix lengths j to probe, from the start of the completion (or of the prompt) to the end of the CoT."""
    first = 1 if include_prompt else enc.start
    last = enc.think_end
    if last > enc.start and enc.input_ids[last - 1] == template_first:
        last -= 1  # the template brings its own leading space token
    if mode == "end":
        return [last]
    if mode == "every":
        return list(range(first, last + 1))
    ends = [j for j in range(first + 1, last) if enc.input_ids[j - 1] in sentence_ids and j != enc.start]
    return sorted({first, enc.start, *ends, last})


@dataclass(frozen=True)
class _Block:
    """One probe's extra tokens after a prefix: the template, then every label's tokens but the last."""
    ids: list[int]  # (B,)
    inner: np.ndarray  # (B, B) bool: template rows see the template causally, label rows it and their own prefix
    rel_pos: list[int]  # (B,) position ids relative to the probe position
    reads: list[list[tuple[int, int]]]  # per label: (row in the block, the label token that row predicts)

    @classmethod
    def of(cls, tk: _Tokens) -> _Block:
        m = len(tk.template)
        ids = tk.template + [t for lab in tk.labels for t in lab[:-1]]
        inner = np.zeros((len(ids), len(ids)), dtype=bool)
        inner[:m, :m] = np.tril(np.ones((m, m), dtype=bool))
        reads, s = [], m
        for lab in tk.labels:
            n = len(lab) - 1
            inner[s: s + n, :m] = True
            inner[s: s + n, s: s + n] = np.tril(np.ones((n, n), dtype=bool))
            reads.append(list(zip([m - 1] + [s + q for q in range(n)], lab, strict=True)))
            s += n
        rel_pos = list(range(m)) + [m + q for lab in tk.labels for q in range(len(lab) - 1)]
        return cls(ids, inner, rel_pos, reads)


def build_tree(prefix: list[int], positions: list[int], tk: _Tokens):
    """Token ids, position ids, a (L, L) boolean attention mask and, per position and label, the rows whose
    logits predict the label's tokens.  Returns (ids (L,), pos (L,), allow (L, L), reads)."""
    blk = _Block.of(tk)
    T, B, P = len(prefix), len(blk.ids), len(positions)
    allow = np.zeros((T + B * P, T + B * P), dtype=bool)
    allow[:T, :T] = np.tril(np.ones((T, T), dtype=bool))
    ids, pos, reads = list(prefix), list(range(T)), []
    for p, j in enumerate(positions):
        o = T + p * B
        allow[o: o + B, :j] = True
        allow[o: o + B, o: o + B] = blk.inner
        ids += blk.ids
        pos += [j + r for r in blk.rel_pos]
        reads.append([[(o + r, t) for r, t in lab] for lab in blk.reads])
    return ids, pos, allow, reads


@dataclass
class _Cached:
    """One long trajectory probed over its prefix's KV cache: the prefix (up to the last probe position) is
    encoded once, then the probe blocks run in query chunks of at most ``budget`` tokens, each block seeing
    the cached prefix up to its position j and itself (a (Q, T + Q) mask); the cache is cropped back to the
    prefix after each chunk. Tokens encoded: T + B x P, linear in length, whatever the positions."""
    prefix: list[int]
    positions: list[int]
    block: _Block
    budget: int
    device: str
    dtype: torch.dtype

    @torch.no_grad()
    def label_logprobs(self, model) -> list[np.ndarray]:
        """log P(label | prefix) at every position.  -> [(P, K)]"""
        dec = decoder(model)
        T = len(self.prefix)
        cache = dec(input_ids=torch.tensor([self.prefix], device=self.device), use_cache=True).past_key_values
        per = max(1, self.budget // len(self.block.ids))
        parts = []
        for a in range(0, len(self.positions), per):
            parts.append(self._chunk(model, dec, cache, T, self.positions[a: a + per]))
            cache.crop(T - cache.get_seq_length())  # drop the chunk's keys and values (a negative count: every
            # transformers version reads it so): the next chunk sees the prefix only
        return [np.concatenate(parts)]

    def _chunk(self, model, dec, cache, T: int, positions: list[int]) -> np.ndarray:
        blk, B = self.block, len(self.block.ids)
        Q = B * len(positions)
        allow = torch.zeros((Q, T + Q), dtype=torch.bool)
        rows, toks = [], []
        for p, j in enumerate(positions):
            allow[p * B: (p + 1) * B, :j] = True
            allow[p * B: (p + 1) * B, T + p * B: T + (p + 1) * B] = torch.from_numpy(blk.inner)
            for lab in blk.reads:
                rows += [p * B + r for r, _ in lab]
                toks += [t for _, t in lab]
        mask = torch.zeros((1, 1, Q, T + Q), dtype=self.dtype).masked_fill_(~allow, torch.finfo(self.dtype).min)
        ids = torch.tensor([blk.ids * len(positions)], device=self.device)
        pos = torch.tensor([[j + r for j in positions for r in blk.rel_pos]], device=self.device)
        hidden = dec(input_ids=ids, position_ids=pos, attention_mask=mask.to(self.device), past_key_values=cache,
                     use_cache=True).last_hidden_state[0]  # (Q, H)
        picked = token_logprobs(model, hidden[torch.tensor(rows, device=self.device)],
                                torch.tensor(toks, device=self.device)).cpu().numpy()
        sums = np.add.reduceat(picked, np.cumsum([0] + [len(lab) for lab in blk.reads] * len(positions))[:-1])
        return sums.reshape(len(positions), len(blk.reads))


@dataclass
class _Batch:
    """Several trees padded into one forward pass (built once, reused for every checkpoint)."""
    ids: torch.Tensor  # (B, L)
    pos: torch.Tensor  # (B, L)
    allow: torch.Tensor  # (B, 1, L, L)
    rows: torch.Tensor  # (R,) flat index b * L + row of each label-token read
    toks: torch.Tensor  # (R,)
    lengths: list[int]  # tokens per (tree, position, label), in order
    shapes: list[tuple[int, int]]  # (positions, labels) per tree

    @classmethod
    def make(cls, trees: list[tuple], n_labels: int, device: str, dtype: torch.dtype = torch.float32) -> _Batch:
        L = max(len(t[0]) for t in trees)
        ids = torch.zeros((len(trees), L), dtype=torch.long)
        pos = torch.zeros((len(trees), L), dtype=torch.long)
        allow = torch.zeros((len(trees), 1, L, L), dtype=torch.bool)
        allow[:, 0] = torch.eye(L, dtype=torch.bool)  # padding rows see themselves (no empty softmax)
        rows, toks, lengths, shapes = [], [], [], []
        for b, (i, p, a, reads) in enumerate(trees):
            ids[b, : len(i)], pos[b, : len(p)] = torch.tensor(i), torch.tensor(p)
            allow[b, 0, : len(i), : len(i)] = torch.from_numpy(a)
            for per in reads:
                for lab in per:
                    rows += [b * L + r for r, _ in lab]
                    toks += [t for _, t in lab]
                    lengths.append(len(lab))
            shapes.append((len(reads), n_labels))
        # additive mask (0 where allowed, dtype min elsewhere): eager attention adds it to the scores,
        # so a boolean mask would be read as +1/+0 there; sdpa takes either form
        additive = torch.zeros(allow.shape, dtype=dtype).masked_fill_(~allow, torch.finfo(dtype).min)
        return cls(ids.to(device), pos.to(device), additive.to(device), torch.tensor(rows, device=device),
                   torch.tensor(toks, device=device), lengths, shapes)

    @torch.no_grad()
    def label_logprobs(self, model) -> list[np.ndarray]:
        """log P(label | prefix) per tree.  -> [(P_b, K)]"""
        hidden = hidden_states(model, self.ids, self.pos, self.allow)  # (B, L, H)
        picked = token_logprobs(model, hidden.reshape(-1, hidden.shape[-1])[self.rows], self.toks).cpu().numpy()
        sums = np.add.reduceat(picked, np.cumsum([0] + self.lengths[:-1]))
        out, k = [], 0
        for p, n in self.shapes:
            out.append(sums[k: k + p * n].reshape(p, n))
            k += p * n
        return out


NO_LABELS = ("no answer labels: none given, no concept graph with diseases, and no record with a 'label' or an "
             "answer its completion states; scored without the probe (token drift only: no beliefs, no effects)")


def empty_beliefs() -> pd.DataFrame:
    """The beliefs table of an analysis scored without the probe: its columns, no rows."""
    return pd.DataFrame({"traj_id": pd.Series(dtype=object), "checkpoint": pd.Series(dtype=object),
                         "step": pd.Series(dtype="int64"), "position": pd.Series(dtype="int64"),
                         "label_mass": pd.Series(dtype=float), "answer": pd.Series(dtype=object),
                         "gold": pd.Series(dtype=object), "gold_prob": pd.Series(dtype=float)})


def labels_of(encoded: list[Encoded], cfg: ProbeConfig) -> list[str]:
    labels = cfg.labels or sorted({e.label for e in encoded if e.label})
    if not labels:
        raise InputError("probe: no answer labels (give labels, a concept graph with diseases, or records with a 'label')")
    return list(labels)


def probe(series: ModelSeries, encoded: list[Encoded], cfg: ProbeConfig | None = None,
          progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None) -> pd.DataFrame:
    """Beliefs along every CoT under every checkpoint: one row per trajectory x checkpoint x probe position,
    with a ``p:<label>`` column per label, ``gold_prob``, ``answer`` (argmax) and ``label_mass``."""
    if getattr(series, "processor", None) is not None:  # vision-language: the images in every prefix
        from core.drift.vl_scoring import probe_series

        return probe_series(series, encoded, cfg, progress, should_cancel)
    cfg = cfg or ProbeConfig()
    labels = labels_of(encoded, cfg)
    tk = _tokens(series.tokenizer, cfg, labels)
    sentence_ids = {i for t, i in series.tokenizer.get_vocab().items() if t.strip("▁Ġ ").endswith((".", "?", "!"))}
    per_position = len(tk.template) + sum(len(lab) - 1 for lab in tk.labels)
    trees, cached = [], []  # (trajectory, its probe positions): one tree each, or the prefix cache
    for e in encoded:
        positions = probe_positions(e, cfg.positions, tk.template[0], sentence_ids, cfg.include_prompt)
        fits = positions[-1] + per_position * len(positions) <= cfg.max_tree_tokens
        (trees if fits else cached).append((e, positions))
    groups = [("tree", g) for g in _group_by_budget(trees, per_position, cfg.max_tree_tokens)]
    groups += [("cached", [job]) for job in cached]
    block = _Block.of(tk)
    results: dict[str, list] = {name: [] for name in series.names}
    total, done = len(groups) * len(series.names), 0

    def make(group):
        kind, jobs = group
        if kind == "cached":
            (e, positions), = jobs
            return _Cached(e.input_ids[: positions[-1]], positions, block, cfg.max_tree_tokens, series.device,
                           series.dtype)
        return _Batch.make([build_tree(e.input_ids[: ch[-1]], ch, tk) for e, ch in jobs], len(labels),
                           series.device, series.dtype)

    def run(name, batch, model):
        nonlocal done
        if should_cancel and should_cancel():
            raise Cancelled("probe cancelled")
        results[name] += batch.label_logprobs(model)
        done += 1
        if progress:
            progress(done, total, f"{name}: group {done % len(groups) or len(groups)}/{len(groups)}")

    if all(c.kind == "adapter" for c in series.checkpoints):  # switching is free: build each tree batch once
        for group in groups:
            batch = make(group)
            for name in series.names:
                with series.activate(name) as model:
                    run(name, batch, model)
    else:  # full-model checkpoints: load each once and rebuild the (cheap) tree batches under it
        for name in series.names:
            with series.activate(name) as model:
                for group in groups:
                    run(name, make(group), model)
            del model  # freed before the next full checkpoint loads
    frames = []
    for name in series.names:
        per_traj: dict[str, list] = {e.id: [e, [], []] for e in encoded}  # in the order of ``encoded``
        for (e, ch), lp in zip([job for _, jobs in groups for job in jobs], results[name], strict=True):
            per_traj[e.id][1] += ch
            per_traj[e.id][2].append(lp)
        frames += [_belief_frame(e, name, series.steps[name], pos, np.concatenate(lps), labels)
                   for e, pos, lps in per_traj.values()]
    return pd.concat(frames, ignore_index=True)


def _group_by_budget(jobs: list, per_position: int, budget: int) -> list[list]:
    """Pack trees into forward passes of at most ``budget`` x 4 padded tokens in total."""
    groups, current, widest = [], [], 0
    for e, ch in jobs:
        width = ch[-1] + per_position * len(ch)
        if current and max(widest, width) * (len(current) + 1) > 4 * budget:
            groups.append(current)
            current, widest = [], 0
        current.append((e, ch))
        widest = max(widest, width)
    return groups + ([current] if current else [])


def _belief_frame(e: Encoded, name: str, step: int, positions: list[int], lp: np.ndarray, labels: list[str]) -> pd.DataFrame:
    z = np.exp(lp - lp.max(1, keepdims=True))
    z /= z.sum(1, keepdims=True)  # (P, K) belief over labels
    df = pd.DataFrame(z, columns=[f"p:{y}" for y in labels])
    df.insert(0, "traj_id", e.id)
    df.insert(1, "checkpoint", name)
    df.insert(2, "step", step)
    df.insert(3, "position", np.array(positions) - e.start)  # completion tokens read (< 0: inside the prompt)
    df["label_mass"] = np.exp(lp).sum(1)
    df["answer"] = [labels[k] for k in z.argmax(1)]
    df["gold"] = e.label
    df["gold_prob"] = z[:, labels.index(e.label)] if e.label in labels else np.nan
    return df


@torch.no_grad()
def probe_naive(model, encoded: Encoded, positions: list[int], tokenizer, cfg: ProbeConfig, labels: list[str],
                device: str = "cpu") -> np.ndarray:
    """Reference: re-encode prefix + template + label for every position and label.  -> (P, K) log-probs"""
    tk = _tokens(tokenizer, cfg, labels)
    out = np.zeros((len(positions), len(labels)))
    for p, j in enumerate(positions):
        for k, lab in enumerate(tk.labels):
            ids = encoded.input_ids[:j] + tk.template + lab
            logp = torch.log_softmax(model(torch.tensor([ids], device=device)).logits[0].float(), -1)
            start = j + len(tk.template)
            out[p, k] = sum(logp[start + q - 1, t].item() for q, t in enumerate(lab))
    return out
