"""Reading and encoding trajectories."""

import json

import pytest

from core.errors import InputError
from core.io.trajectories import encode, read_jsonl


def _write(tmp_path, lines):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_bad_json_line_is_named(tmp_path):
    good = json.dumps({"prompt": "p", "completion": "c"})
    with pytest.raises(InputError, match=r"t.jsonl, line 3: not valid JSON"):
        read_jsonl(_write(tmp_path, [good, good, "{oops", good]))


def test_missing_field_is_named(tmp_path):
    with pytest.raises(InputError, match=r"line 2: missing field 'completion'"):
        read_jsonl(_write(tmp_path, [json.dumps({"prompt": "p", "completion": "c"}), json.dumps({"prompt": "p"})]))


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="no trajectories"):
        read_jsonl(_write(tmp_path, [""]))
    with pytest.raises(InputError, match="trajectory file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_encode_spans_and_tokens(sample_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sample_world / "model")
    recs = read_jsonl(sample_world / "data" / "test.jsonl", limit=5)
    for rec, e in zip(recs, encode(tok, recs), strict=True):
        assert e.input_ids[0] == tok.bos_token_id
        assert "".join(e.completion_tokens) == " " + rec["completion"]
        assert e.completion_tokens[e.think_end - e.start] == "</think>"
        assert "".join(e.tokens[1: e.start]) == " " + rec["prompt"] or "".join(e.tokens[1: e.start]).strip() == rec["prompt"]


def test_duplicate_ids_and_non_utf8_are_named(tmp_path):
    rec = json.dumps({"id": "a", "prompt": "p", "completion": "c"})
    with pytest.raises(InputError, match=r"line 2: duplicate id 'a'"):
        read_jsonl(_write(tmp_path, [rec, rec]))
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"prompt": "caf\xe9", "completion": "c"}\n'.encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_jsonl(bad)


def test_think_end_without_a_think_token_in_the_vocabulary(sample_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sample_world / "model")
    e = encode(tok, [{"id": "x", "prompt": "Report: the chest radiograph shows mass.", "completion": "no tags here"}])[0]
    assert e.think_end == len(e.input_ids)  # never mistaken for the unknown token's id
