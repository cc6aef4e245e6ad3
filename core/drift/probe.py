"""The answer probe: the model's belief z_j over the answer labels at positions j along the CoT.

At a probe position j (after the first j - start completion tokens), the belief is the distribution over
labels y_k if the model had to answer right there, through an answer template::

    log P(y_k | x_<j) = sum_q log pi(l_kq | x_<j, template, l_k<q)        z_j = softmax_k log P(y_k | x_<j)

Efficiency: the prefix is never re-encoded per label or per position. One forward pass takes the
trajectory once plus, for every probe position, a copy of the template and the label tokens whose
attention (a 4D mask) sees only ``x[:j]``, its template and its own label prefix, with position ids
continuing from j (``core.models.prefix_trees``). That is exactly the KV cache of the prefix, shared by all
probes, and mathematically equal to the naive computation (``probe_naive``), which re-encodes prefix +
template + label each time. The series' family (``core.models.families``) runs the trees through its model:
text with 1-D positions and label log-probs through a row-chunked logsumexp, Qwen-VL with the images in the
prefix and its 3-D positions (probes start after the last image). A trajectory whose tree would pass
``max_tree_tokens`` (long CoTs, or every position of a 4,096-token one) takes the prefix's real KV cache
instead where the family can (text: the prefix encoded once, the probe blocks in query chunks over it, so the
tokens encoded stay linear in length), else its positions are split into several trees.

    df = probe(series, encoded, ProbeConfig(labels=diseases, positions="every"))
    lp = probe_at(series, model, encoded, positions, cfg, labels)    # log P(label | x[:j]) at given positions
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
from core.models.prefix_trees import LabelTokens, label_tokens
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


def tokens_of(tokenizer, cfg: ProbeConfig, labels: list[str]) -> LabelTokens:
    """The template's and the labels' token ids (``core.models.prefix_trees.label_tokens``)."""
    return label_tokens(tokenizer, cfg.template, labels)


def sentence_ids(tokenizer) -> set[int]:
    """Token ids that end a sentence (".", "?", "!"): the probe's ``sentence`` positions follow them."""
    return {i for t, i in tokenizer.get_vocab().items() if t.strip("▁Ġ ").endswith((".", "?", "!"))}


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
    cfg = cfg or ProbeConfig()
    labels = labels_of(encoded, cfg)
    tk = tokens_of(series.tokenizer, cfg, labels)
    groups = probe_groups(series, encoded, cfg, tk)
    results: dict[str, list] = {name: [] for name in series.names}
    total, done = len(groups) * len(series.names), 0

    def make(group):
        kind, jobs = group
        if kind == "cached":
            (e, positions), = jobs
            return series.family.cached_prefix(series, e, positions, tk, cfg.max_tree_tokens)
        return series.family.tree_batch(series, jobs, tk)

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
    jobs = [job for _, group in groups for job in group]
    return pd.concat([f for name in series.names
                      for f in belief_frames(encoded, jobs, results[name], name, series.steps[name], labels)],
                     ignore_index=True)


def probe_groups(series: ModelSeries, encoded: list[Encoded], cfg: ProbeConfig,
                 tk: LabelTokens) -> list[tuple[str, list]]:
    """The forward passes of a probe, in order: ("tree", [(trajectory, positions), ...]) packed within the
    budget, then ("cached", [(trajectory, positions)]) for each trajectory whose tree alone would pass
    ``max_tree_tokens`` (a family without a prefix cache splits its positions into several trees instead).
    Positions start where the family can read (after the last image of a vision-language prompt)."""
    family, sentence = series.family, sentence_ids(series.tokenizer)
    per_position = tk.per_position
    trees, cached = [], []
    for e in encoded:
        first = family.first_probe_position(e, series.processor)
        positions = [j for j in probe_positions(e, cfg.positions, tk.template[0], sentence, cfg.include_prompt)
                     if j >= first]
        if not positions:
            continue
        if positions[-1] + per_position * len(positions) <= cfg.max_tree_tokens:
            trees.append((e, positions))
        elif family.caches_prefix:
            cached.append((e, positions))
        else:
            trees += [(e, ch) for ch in chunk_positions(positions, per_position, cfg.max_tree_tokens)]
    return [("tree", g) for g in group_by_budget(trees, per_position, cfg.max_tree_tokens)] + \
        [("cached", [job]) for job in cached]


def chunk_positions(positions: list[int], per_position: int, budget: int) -> list[list[int]]:
    """Probe positions split so that each tree (prefix up to its last position + its blocks) stays within
    ``budget`` tokens; each chunk encodes its prefix once."""
    out, current = [], []
    for j in positions:
        if current and j + per_position * (len(current) + 1) > budget:
            out.append(current)
            current = []
        current.append(j)
    return out + ([current] if current else [])


def probe_at(series: ModelSeries, model, encoded: list[Encoded], positions: list[list[int]], cfg: ProbeConfig,
             labels: list[str]) -> list[np.ndarray]:
    """log P(label | x[:j]) at the given positions of each trajectory, under ``model`` (a checkpoint of
    ``series``, active), all trees in one forward pass.  -> [(P_b, K)]"""
    tk = tokens_of(series.tokenizer, cfg, labels)
    return series.family.tree_batch(series, list(zip(encoded, positions, strict=True)), tk).label_logprobs(model)


def group_by_budget(jobs: list, per_position: int, budget: int) -> list[list]:
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


def belief_frames(encoded: list[Encoded], jobs: list[tuple], results: list[np.ndarray], name: str, step: int,
                  labels: list[str]) -> list[pd.DataFrame]:
    """One checkpoint's belief tables, one per trajectory in the order of ``encoded``, from the jobs run
    (several per trajectory when its positions were chunked) and their (P, K) label log-probs."""
    per_traj: dict[str, list] = {e.id: [e, [], []] for e in encoded}
    for (e, ch), lp in zip(jobs, results, strict=True):
        per_traj[e.id][1] += ch
        per_traj[e.id][2].append(lp)
    return [belief_frame(e, name, step, pos, np.concatenate(lps), labels) for e, pos, lps in per_traj.values() if lps]


def belief_frame(e: Encoded, name: str, step: int, positions: list[int], lp: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """Beliefs z_j = softmax_k log P(y_k | x_<j) at a trajectory's positions under one checkpoint.  lp (P, K)"""
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
    tk = tokens_of(tokenizer, cfg, labels)
    out = np.zeros((len(positions), len(labels)))
    for p, j in enumerate(positions):
        for k, lab in enumerate(tk.labels):
            ids = encoded.input_ids[:j] + tk.template + lab
            logp = torch.log_softmax(model(torch.tensor([ids], device=device)).logits[0].float(), -1)
            start = j + len(tk.template)
            out[p, k] = sum(logp[start + q - 1, t].item() for q, t in enumerate(lab))
    return out
