"""The answer probe: the model's belief z_j over the answer labels at positions j along the CoT.

At a probe position j (after the first j - start completion tokens), the belief is the distribution over
labels y_k if the model had to answer right there, through an answer template::

    log P(y_k | x_<j) = sum_q log pi(l_kq | x_<j, template, l_k<q)        z_j = softmax_k log P(y_k | x_<j)

Efficiency: the prefix is never re-encoded per label or per position. One forward pass takes the
trajectory once plus, for every probe position, a copy of the template and the label tokens whose
attention (a 4D mask) sees only ``x[:j]``, its template and its own label prefix, with position ids
continuing from j. That is exactly the KV cache of the prefix, shared by all probes, and mathematically
equal to the naive computation (``probe_naive``), which re-encodes prefix + template + label each time.

    df = probe(series, encoded, ProbeConfig(labels=diseases, positions="every"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from core.errors import InputError
from core.forward import head, hidden_states
from core.progress import Cancelled, Progress
from core.series import ModelSeries
from core.trajectories import Encoded

POSITION_MODES = ("every", "sentence", "end")


@dataclass
class ProbeConfig:
    labels: list[str] = field(default_factory=list)  # answer labels; empty: the gold labels in the data
    template: str = " </think> The disease of this patient is"  # appended after the prefix
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


def build_tree(prefix: list[int], positions: list[int], tk: _Tokens):
    """Token ids, position ids, a (L, L) boolean attention mask and, per position and label, the rows whose
    logits predict the label's tokens.  Returns (ids (L,), pos (L,), allow (L, L), reads)."""
    m = len(tk.template)
    block = tk.template + [t for lab in tk.labels for t in lab[:-1]]  # one probe's extra tokens
    # within a block: template rows see the template causally; label rows see the template and their own prefix
    inner = np.zeros((len(block), len(block)), dtype=bool)
    inner[:m, :m] = np.tril(np.ones((m, m), dtype=bool))
    offsets, s = [], m
    for lab in tk.labels:
        n = len(lab) - 1
        inner[s: s + n, :m] = True
        inner[s: s + n, s: s + n] = np.tril(np.ones((n, n), dtype=bool))
        offsets.append(s)
        s += n
    rel_pos = list(range(m)) + [m + q for lab in tk.labels for q in range(len(lab) - 1)]
    T, B, P = len(prefix), len(block), len(positions)
    n = T + B * P
    allow = np.zeros((n, n), dtype=bool)
    allow[:T, :T] = np.tril(np.ones((T, T), dtype=bool))
    ids, pos, reads = list(prefix), list(range(T)), []
    for p, j in enumerate(positions):
        o = T + p * B
        allow[o: o + B, :j] = True
        allow[o: o + B, o: o + B] = inner
        ids += block
        pos += [j + r for r in rel_pos]
        reads.append([list(zip([o + m - 1] + [o + off + q for q in range(len(lab) - 1)], lab))
                      for off, lab in zip(offsets, tk.labels)])
    return ids, pos, allow, reads


def _chunks(positions: list[int], prefix_len: int, per_position: int, budget: int) -> list[list[int]]:
    size = max(1, (budget - prefix_len) // max(1, per_position))
    return [positions[i: i + size] for i in range(0, len(positions), size)]


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
    def make(cls, trees: list[tuple], n_labels: int, device: str, dtype: torch.dtype = torch.float32) -> "_Batch":
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
        flat = head(model, hidden.reshape(-1, hidden.shape[-1])[self.rows]).float()  # (R, V): only the rows we read
        picked = torch.log_softmax(flat, -1).gather(-1, self.toks[:, None]).squeeze(-1).cpu().numpy()
        sums = np.add.reduceat(picked, np.cumsum([0] + self.lengths[:-1]))
        out, k = [], 0
        for p, n in self.shapes:
            out.append(sums[k: k + p * n].reshape(p, n))
            k += p * n
        return out


def labels_of(encoded: list[Encoded], cfg: ProbeConfig) -> list[str]:
    labels = cfg.labels or sorted({e.label for e in encoded if e.label})
    if not labels:
        raise InputError("probe: no answer labels (give labels, a concept graph with diseases, or records with a 'label')")
    return list(labels)


def probe(series: ModelSeries, encoded: list[Encoded], cfg: ProbeConfig | None = None,
          progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None) -> pd.DataFrame:
    """Beliefs along every CoT under every checkpoint: one row per trajectory x checkpoint x probe position,
    with a ``p:<label>`` column per label, ``gold_prob``, ``answer`` (argmax) and ``label_mass``."""
    cfg = cfg or ProbeConfig()
    labels = labels_of(encoded, cfg)
    tk = _tokens(series.tokenizer, cfg, labels)
    sentence_ids = {i for t, i in series.tokenizer.get_vocab().items() if t.strip("▁Ġ ").endswith((".", "?", "!"))}
    per_position = len(tk.template) + sum(len(lab) - 1 for lab in tk.labels)
    jobs = []  # (trajectory, its probe positions in this tree)
    for e in encoded:
        positions = probe_positions(e, cfg.positions, tk.template[0], sentence_ids, cfg.include_prompt)
        jobs += [(e, chunk) for chunk in _chunks(positions, positions[-1], per_position, cfg.max_tree_tokens)]
    groups = _group_by_budget(jobs, per_position, cfg.max_tree_tokens)
    results: dict[str, list] = {name: [] for name in series.names}
    total, done = len(groups) * len(series.names), 0

    def make(group):
        return _Batch.make([build_tree(e.input_ids[: ch[-1]], ch, tk) for e, ch in group], len(labels),
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
        per_traj: dict[str, list] = {}
        for (e, ch), lp in zip([job for group in groups for job in group], results[name]):
            per_traj.setdefault(e.id, [e, [], []])
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
