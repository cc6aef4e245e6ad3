"""Reused (rows x vocabulary) float32 matrices for scoring's row chunks (``core.drift.scoring``).

Every row chunk of the statistics needs a few (rows, V) matrices: a checkpoint's logits, its log p and p, the
JS mixture m and log m, the rank's comparison. At vocabulary 151,936 a 55-row chunk's matrix is 33 MB, above
the mmap threshold that ``core.models.memory`` pins against heap fragmentation, so each fresh one was a fresh
mmap whose pages the kernel zero-fills on first touch and unmaps on free: measured in issue 27, about 40 % of
scoring's CPU time (42-46 s system of 101-113 CPU-s, about 25 M page faults per 20k token x checkpoint rows).
A ``Buffers`` hands the same few matrices out again for every chunk of a scoring call, so their pages fault in
once, and the peak stays what the chunks need at once (flat in length). Nothing is kept after the call.

    bufs = Buffers(rows=55, vocab=151_936, device="cpu")
    lp = bufs.take(n)       # (n, V) view of a free matrix (or a new one)
    bufs.give(lp)           # free again: the next take() gets it back
"""

from __future__ import annotations

import torch


class Buffers:
    """A free list of (rows, vocab) float32 matrices; ``take(n)`` gives the first n rows of one."""

    def __init__(self, rows: int, vocab: int, device: torch.device | str):
        self.rows, self.vocab, self.device = rows, vocab, torch.device(device)
        self._free: list[torch.Tensor] = []
        self._mine: dict[int, torch.Tensor] = {}  # data pointer -> the whole matrix behind a view given out
        self.made = 0  # matrices allocated so far (the most ever out at once)

    def take(self, n: int) -> torch.Tensor:
        """(n, vocab) float32, contents undefined: the first n rows of a free matrix.  n <= rows"""
        if n > self.rows:
            raise ValueError(f"Buffers.take: {n} rows asked of matrices of {self.rows}")
        if not self._free:
            whole = torch.empty((self.rows, self.vocab), dtype=torch.float32, device=self.device)
            self._mine[whole.data_ptr()] = whole
            self.made += 1
            self._free.append(whole)
        return self._free.pop()[:n]

    def give(self, *views: torch.Tensor | None) -> None:
        """Free the matrices behind ``views`` (each a ``take()`` result; None and foreign tensors are skipped:
        a caller may give back whatever it holds). The caller keeps no reference it still reads."""
        for v in views:
            whole = None if v is None else self._mine.get(v.data_ptr())
            if whole is not None and all(whole is not f for f in self._free):
                self._free.append(whole)

    def fresh(self, like: torch.Tensor) -> torch.Tensor:
        """A matrix shaped like ``like``: from the free list when it fits, else a new one (not kept)."""
        if like.dtype == torch.float32 and like.dim() == 2 and like.shape[1] == self.vocab and like.shape[0] <= self.rows \
                and like.device == self.device:
            return self.take(like.shape[0])
        return torch.empty_like(like, dtype=torch.float32)
