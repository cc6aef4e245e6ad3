"""Scoring's reused chunk matrices: handed out again after they are given back, never two holders at once,
and scoring through them gives the same table, bit for bit, as fresh matrices for every chunk."""

import numpy as np
import pytest
import torch

from core.drift import buffers, scoring
from core.drift.buffers import Buffers
from core.drift.scoring import ScoreConfig, score
from core.io.trajectories import encode, read_jsonl


def test_a_given_back_matrix_is_handed_out_again():
    bufs = Buffers(rows=4, vocab=10, device="cpu")
    a, b = bufs.take(4), bufs.take(2)
    assert a.shape == (4, 10) and b.shape == (2, 10) and a.data_ptr() != b.data_ptr()
    bufs.give(a, a, None, torch.zeros(4, 10))  # twice, nothing and a foreign tensor: a is freed once
    c, d = bufs.take(3), bufs.take(1)
    assert c.data_ptr() == a.data_ptr() and d.data_ptr() not in (a.data_ptr(), b.data_ptr())
    assert bufs.made == 3
    with pytest.raises(ValueError, match="5 rows asked of matrices of 4"):
        bufs.take(5)


def test_fresh_takes_a_matching_shape_from_the_free_list_only():
    bufs = Buffers(rows=4, vocab=10, device="cpu")
    assert bufs.fresh(torch.zeros(3, 10)).shape == (3, 10) and bufs.made == 1
    assert bufs.fresh(torch.zeros(3, 11)).shape == (3, 11) and bufs.made == 1  # not its shape: a plain new one


@pytest.fixture(scope="module")
def encoded(series, sample_world):
    return encode(series.tokenizer, read_jsonl(sample_world / "data" / "test.jsonl", limit=9))


def test_reused_matrices_give_the_table_of_fresh_ones_bit_for_bit(series, encoded, monkeypatch):
    made = []

    class Counting(Buffers):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(scoring, "Buffers", Counting)
    monkeypatch.setattr(scoring, "chunk_rows", lambda vocab, device: 5)  # many chunks per batch
    cfg = ScoreConfig(top_k=3, batch_size=3)
    reused = score(series, encoded, cfg)
    assert len(made) == 1  # one set of matrices for the whole call, all batches
    few = made[0].made
    assert few <= 9  # the base's, the parent's and the current (log p, p), the JS mixture and its log, logits
    score(series, encoded[:3], cfg)
    assert made[1].made == few  # as many for a third of the rows: flat in length
    monkeypatch.setattr(buffers.Buffers, "give", lambda self, *views: None)  # every take a new matrix
    fresh = score(series, encoded, cfg)
    assert made[2].made > 10 * few
    for col in scoring.STAT_COLUMNS:
        assert np.array_equal(reused[col].to_numpy(), fresh[col].to_numpy()), col
    assert np.array_equal(np.stack(reused["top_probs"]), np.stack(fresh["top_probs"]))
