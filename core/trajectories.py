"""Reasoning trajectories: read them from JSONL, and encode them for teacher-forced scoring.

A trajectory record is one JSON object per line with at least ``prompt`` and ``completion`` (the CoT and
answer, ``<think> ... </think> The disease of this patient is X.``), plus optional ``id`` and ``label``
(the gold answer). ``encode`` turns records into token ids with the spans the engine needs::

    recs = read_jsonl("sample_data/data/test.jsonl")
    enc = encode(tokenizer, recs)       # [Encoded(id, input_ids, start, think_end, label, tokens), ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core import jsonsafe
from core.errors import InputError
from core.paths import expand

REQUIRED = ("prompt", "completion")


@dataclass(frozen=True)
class Encoded:
    id: str
    input_ids: list[int]
    start: int  # index of the first completion token in input_ids
    think_end: int  # index of the "</think>" token (or len(input_ids) when the CoT has none)
    label: str | None
    tokens: list[str]  # display text of every token of input_ids (prompt and completion)

    @property
    def completion_ids(self) -> list[int]:
        return self.input_ids[self.start:]

    @property
    def completion_tokens(self) -> list[str]:
        return self.tokens[self.start:]


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """Records of a JSONL file; ``InputError`` names the line and field that are wrong."""
    path = expand(path)
    if not path.is_file():
        raise InputError(f"{path}: trajectory file not found")
    records, seen = [], set()
    for lineno, rec in json_lines(path):
        for key in REQUIRED:
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise InputError(f"{path}, line {lineno}: field '{key}' must be a non-empty string")
        if rec.get("label") is not None and not isinstance(rec["label"], str):
            raise InputError(f"{path}, line {lineno}: field 'label' must be a string")
        rec["id"] = str(rec.get("id", f"line-{lineno}"))
        if rec["id"] in seen:
            raise InputError(f"{path}, line {lineno}: duplicate id {rec['id']!r} (ids must be unique)")
        seen.add(rec["id"])
        records.append(rec)
        if limit and len(records) >= limit:
            break
    if not records:
        raise InputError(f"{path}: no trajectories (expected JSONL with 'prompt' and 'completion' per line)")
    return records


def json_lines(path: Path):
    """(line number, object) for each non-empty line of a JSONL file, split on newlines only (U+2028 inside
    a string is text); ``InputError`` names the line that is not a JSON object, or the undecodable byte."""
    try:
        with path.open(encoding="utf-8-sig", errors="strict", newline="\n") as f:  # -sig: a leading BOM is skipped
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                jsonsafe.check_record_size(line, str(path), lineno)  # before the tokenizer ever sees it
                rec = jsonsafe.loads(line, str(path), lineno)  # also deep nesting, huge integers
                if not isinstance(rec, dict):
                    raise InputError(f"{path}, line {lineno}: expected a JSON object, got {type(rec).__name__}")
                yield lineno, rec
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the file ({e.strerror})") from None


def prompt_ids(tokenizer, prompt: str, chat_template: bool = False) -> list[int]:
    """Token ids of the prompt, with the BOS token the model was trained with."""
    if chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=True)
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return ids if bos is None or (ids and ids[0] == bos) else [bos] + ids


def encode(tokenizer, records: list[dict], chat_template: bool = False, max_length: int | None = None) -> list[Encoded]:
    """Encode each record as ``prompt ids + ids(" " + completion)`` (the sample world's training format)."""
    think = tokenizer.get_vocab().get("</think>")  # None when the tokenizer has no such token (never the unk id)
    out = []
    for rec in records:
        p = prompt_ids(tokenizer, rec["prompt"], chat_template)
        c = tokenizer(("" if chat_template else " ") + rec["completion"], add_special_tokens=False)["input_ids"]
        ids = p + c
        if max_length and len(ids) > max_length:
            raise InputError(f"trajectory {rec['id']}: {len(ids)} tokens exceed max_length {max_length}")
        ends = [i for i in range(len(p), len(ids)) if ids[i] == think]
        out.append(Encoded(str(rec["id"]), ids, len(p), ends[0] if ends else len(ids), rec.get("label"),
                           [token_text(tokenizer, t) for t in ids]))
    return out


def token_text(tokenizer, token_id: int) -> str:
    """Readable text of one token, keeping the leading space that "▁" / "Ġ" pieces stand for."""
    text = tokenizer.decode([token_id])
    piece = tokenizer.convert_ids_to_tokens(token_id) or ""
    return " " + text if piece[:1] in ("▁", "Ġ") and not text.startswith(" ") else text


def vocab_texts(tokenizer) -> list[str]:
    """``token_text`` of every id, for turning top-k ids into strings without a decode per row."""
    return [token_text(tokenizer, i) for i in range(len(tokenizer))]
