"""The end of the CoT where the tokenizer has no ``</think>`` token (Qwen2.5, Llama, Gemma, Mistral write it in
pieces: "</", "think", ">"): the CoT ran to the end of the completion, so the probe read beliefs after the answer
was written and the answer's tokens counted as the CoT's (``in_think``)."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from core.drift.probe import probe_positions, sentence_ids
from core.io.trajectories import completion_tokens, encode, think_start, think_start_decoded

TEXTS = ["<think> opacity in the right lower lobe suggests consolidation. </think> The disease of this patient is "
         "Pneumonia.", "<think> no finding. </think> The disease of this patient is No Finding."]


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE tokenizer (Qwen2's and Llama 3's kind) trained here, with no ``</think>`` token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    assert "</think>" not in fast.get_vocab()
    return fast


def test_the_cot_ends_where_the_tag_begins_when_it_is_written_in_pieces(bpe):
    recs = [{"id": str(i), "prompt": "What is the disease?", "completion": t, "label": None} for i, t in enumerate(TEXTS)]
    for enc in encode(bpe, recs):
        assert enc.think_end < len(enc.input_ids)  # it ran to the end: len(input_ids)
        cot, rest = bpe.decode(enc.input_ids[enc.start:enc.think_end]), bpe.decode(enc.input_ids[enc.think_end:])
        assert "</think>" not in cot and cot.rstrip().endswith(".") and rest.lstrip().startswith("</think>")
        # the probe stops at the end of the CoT, never after the answer was written
        positions = probe_positions(enc, "every", -1, sentence_ids(bpe))
        assert max(positions) <= enc.think_end
        assert "The disease of this patient is" not in bpe.decode(enc.input_ids[enc.start:max(positions)])


def test_offsets_and_decoding_find_the_same_token(bpe):
    for text in [" " + t for t in TEXTS] + ["</think> at once", "none here", "a </think> b </think> c"]:
        ids, at = completion_tokens(bpe, text, None)  # a fast tokenizer: ids and offsets from one call
        assert ids == bpe(text, add_special_tokens=False)["input_ids"]
        assert at == think_start(bpe, text, ids) == think_start_decoded(bpe, ids)
    assert think_start(bpe, "none here", bpe("none here", add_special_tokens=False)["input_ids"]) is None
    assert think_start(bpe, "</think> x", [5, 7, 9], think_id=7) == 1  # a tokenizer with the token: the token
