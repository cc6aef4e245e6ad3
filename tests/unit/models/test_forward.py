"""The LM head on chosen rows: each distinct row through the head once gives every read the same number,
bit for bit, as the read through its own row, at a real vocabulary (151,936 words, row chunks of 48)."""

import pytest
import torch

from core.models import forward
from core.models.forward import ROW_ALIGN, aligned_head, chunk_rows, head, token_logprobs

VOCAB = 151_936


@pytest.fixture(scope="module")
def wide_head_model():
    """A one-layer random Llama with a real vocabulary and a narrow hidden size (the head is the cost)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2)
    return AutoModelForCausalLM.from_config(cfg).eval()


@torch.no_grad()
def test_distinct_rows_once_equal_every_read_through_its_own_row(wide_head_model, monkeypatch):
    g = torch.Generator().manual_seed(1)
    monkeypatch.setattr(forward, "CHUNK_BYTES", 32 << 20)  # 55 rows a chunk at this vocabulary, 48 once aligned
    hidden = torch.randn(131, 64, generator=g)  # 131 rows: 2 chunks of 48 rows + a partial one
    assert chunk_rows(VOCAB, "cpu") == 55
    rows = torch.randint(0, 131, (700,), generator=g)  # reads in any order, most rows read several times
    rows[:14] = 7  # 14 labels read their first token from one row (the template's last)
    tokens = torch.randint(0, VOCAB, (700,), generator=g)
    once = token_logprobs(wide_head_model, hidden, tokens, rows)
    per_read = token_logprobs(wide_head_model, hidden[rows], tokens)
    assert torch.equal(once, per_read)
    lp = torch.log_softmax(head(wide_head_model, hidden).float(), -1)[rows, tokens]  # the whole matrix at once
    torch.testing.assert_close(once, lp, rtol=0, atol=1e-5)


@torch.no_grad()
def test_aligned_head_gives_a_row_the_same_logits_whatever_rows_are_beside_it(wide_head_model):
    hidden = torch.randn(3 * ROW_ALIGN, 64, generator=torch.Generator().manual_seed(2))
    together = aligned_head(wide_head_model, hidden)
    for n in (1, 2, 3, 5, 7, 9, 11):  # the row counts whose BLAS kernel differs in the last bits
        alone = aligned_head(wide_head_model, hidden[:n])
        assert alone.shape == (n, VOCAB)
        assert torch.equal(alone, together[:n])
