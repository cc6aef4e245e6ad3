"""The answer probe's input: a prefix encoded once, with a copy of the answer template and label prefixes per
probe position, packed into one forward pass (the model-independent part; ``core.drift.probe`` runs it).

At probe position j, each copy sees only ``x[:j]`` (a 4-D attention mask), its own template and its own label
prefix; position ids continue from j. That is the prefix's KV cache shared by every probe, and equal to
re-encoding ``x[:j] + template + label`` per position and label. A family (``core.models.families``) runs
the packed trees through its model: text with 1-D positions, Qwen-VL with its images and 3-D positions.

    tk = label_tokens(tokenizer, " The disease of this patient is", ["Edema", "Pneumonia"])
    ids, pos, allow, reads = build_tree(prefix_ids, positions=[12, 30], tokens=tk)
    batch = TreeBatch.make([(ids, pos, allow, reads)], len(tk.labels), "cpu")
    per_tree = batch.split(picked)        # picked: (R,) log p of each read row's label token -> [(P, K)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class LabelTokens:
    """The answer template's token ids and each label's (read after the template, with a leading space)."""
    template: list[int]
    labels: list[list[int]]

    @property
    def per_position(self) -> int:
        """Tokens a probe position adds to a tree: the template and every label's tokens but the last."""
        return len(self.template) + sum(len(lab) - 1 for lab in self.labels)


def label_tokens(tokenizer, template: str, labels: list[str]) -> LabelTokens:
    lab = [tokenizer(" " + y, add_special_tokens=False)["input_ids"] for y in labels]
    return LabelTokens(tokenizer(template, add_special_tokens=False)["input_ids"], lab)


@dataclass(frozen=True)
class Block:
    """One probe's extra tokens after a prefix: the template, then every label's tokens but the last."""
    ids: list[int]  # (B,)
    inner: np.ndarray  # (B, B) bool: template rows see the template causally, label rows it and their own prefix
    rel_pos: list[int]  # (B,) position ids relative to the probe position
    reads: list[list[tuple[int, int]]]  # per label: (row in the block, the label token that row predicts)

    @classmethod
    def of(cls, tk: LabelTokens) -> Block:
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


def build_tree(prefix: list[int], positions: list[int], tk: LabelTokens):
    """Token ids, position ids, a (L, L) boolean attention mask and, per position and label, the rows whose
    logits predict the label's tokens.  Returns (ids (L,), pos (L,), allow (L, L), reads)."""
    blk = Block.of(tk)
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
class TreeBatch:
    """Several trees padded into one forward pass (built once, reused for every adapter checkpoint)."""
    ids: torch.Tensor  # (B, L)
    pos: torch.Tensor  # (B, L)
    allow: torch.Tensor  # (B, 1, L, L) additive mask: 0 where allowed, the dtype's minimum elsewhere
    rows: torch.Tensor  # (R,) flat index b * L + row of each label-token read
    toks: torch.Tensor  # (R,)
    lengths: list[int]  # tokens per (tree, position, label), in order
    shapes: list[tuple[int, int]]  # (positions, labels) per tree

    @classmethod
    def make(cls, trees: list[tuple], n_labels: int, device: str | torch.device,
             dtype: torch.dtype = torch.float32) -> TreeBatch:
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

    def split(self, picked: np.ndarray) -> list[np.ndarray]:
        """Per tree, log P(label | prefix) at each of its positions from the read rows' log-probs.
        picked (R,) -> [(P_b, K)]"""
        sums = np.add.reduceat(picked, np.cumsum([0] + self.lengths[:-1]))
        out, k = [], 0
        for p, n in self.shapes:
            out.append(sums[k: k + p * n].reshape(p, n))
            k += p * n
        return out
