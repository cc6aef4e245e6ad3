"""A conversation scored without a chat template (issue 24): every turn is read, the system prompt included,
and a warning says so; before, only the last user turn was scored, with no note."""

import warnings

import pytest
from transformers import AutoTokenizer

from core.io.trajectories import encode, read_trajectories
from tests import foreign


def test_untemplated_conversations_keep_their_system_turn_and_say_so(foreign_run):
    tok = AutoTokenizer.from_pretrained(foreign_run["base"])  # the TRL run's tokenizer (it has a chat template)
    records = read_trajectories(foreign_run["train"], limit=3)
    with pytest.warns(UserWarning, match="3 of 3 conversations .* the chat template is off"):
        off = encode(tok, records, chat_template=False)
    prompt = tok.decode(off[0].input_ids[:off[0].start])
    assert foreign.SYSTEM.rstrip(".") in prompt and records[0]["prompt"].split(":")[0] in prompt
    tok.chat_template = None  # a tokenizer without one
    with pytest.warns(UserWarning, match="the tokenizer has no chat template"):
        encode(tok, records)
    plain = [{**r, "chat": None} for r in records]  # a plain record: no note, as before

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(encode(tok, plain)) == 3
