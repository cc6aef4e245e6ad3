"""Preference-data file formats: parse CCF JSON, TRL preference JSONL and ms-swift JSON into pairs, and
write curated pairs as TRL JSONL, ms-swift JSON, CCF JSON or a Hugging Face ``datasets`` folder.

Pure functions over text and folders: no database here (``core.snapshots`` stores and records them).

    parsed = parse(Path("ccf.json").read_text(), "ccf.json")   # format detected from the content
    parsed.pairs    # [Pair(prompt, chosen, rejected, label, target, ...), ...]
    parsed.errors   # ["ccf.json, item 3, field 'counterfact.Edema': expected a non-empty string", ...]
    write(rows, folder, "trl", test_fraction=0.1)             # train.jsonl, test.jsonl

A completion is ``<think> {cot} </think> The disease of this patient is {disease}.`` (the authors' format).
Formats, as read:

- CCF JSON (CXR-CounterFact): a JSON array (or JSONL) of items ``{"report", "diagnose", "counterfact":
  {disease: counterfactual_report}}``, optional ``prompt`` and ``id``. The report is the chain of thought:
  chosen = ``<think> report </think> ... diagnose.``, one pair per counterfactual disease. Without a
  ``prompt`` the question ``CCF_QUESTION`` is the prompt (the original pairs it with the X-ray image).
- TRL preference JSONL: ``prompt``, ``chosen``, ``rejected``; plain (strings) or conversational
  (``prompt`` = [system?, user] messages, ``chosen`` / ``rejected`` = [assistant]). Optional ``source``,
  ``label``, ``target``; ``weight`` is an export setting and is not read back.
- ms-swift JSON (array or JSONL): ``messages`` = [system?, user, assistant], ``rejected_messages`` = the
  same prompt turns and the rejected assistant turn (or ``rejected_response``, a string).

The Hugging Face folder is the layout ``datasets.DatasetDict.save_to_disk`` writes (``dataset_dict.json``;
per split ``data-00000-of-00001.arrow`` in Arrow IPC stream format, ``dataset_info.json``, ``state.json``),
written with pyarrow so ``datasets.load_from_disk(folder)`` reads it without ``datasets`` installed here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from core import jsonsafe
from core.answers import DEFAULT as ANSWER_FORMAT
from core.answers import answer_of
from core.errors import InputError

IMPORT_FORMATS = ("ccf", "trl", "swift")
EXPORT_FORMATS = ("trl", "swift", "hf", "ccf")
CCF_QUESTION = "What is the disease of this patient?"
ANSWER = ANSWER_FORMAT.sentence
_THINK_RE = re.compile(r"^\s*<think>(.*)</think>", re.S)
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Pair:
    """One preference pair: the prompt, the real completion (chosen) and the counterfactual (rejected)."""
    prompt: str
    chosen: str
    rejected: str
    label: str | None
    target: str
    source: str | None = None
    system: str | None = None
    external_id: str | None = None


@dataclass
class Parsed:
    format: str
    pairs: list[Pair]
    errors: list[str]  # one message per invalid record: file, line or item, field, what was expected
    records: int       # records read (items or lines), valid or not

    @property
    def skipped(self) -> int:
        return len(self.errors)


def completion(cot: str, disease: str) -> str:
    return f"<think> {cot.strip()} </think> {ANSWER.format(disease)}"


def think_of(text: str) -> str:
    """The chain of thought between ``<think>`` and ``</think>`` (the whole text if it has no tags)."""
    m = _THINK_RE.match(text)
    return (m.group(1) if m else text).strip()


# ---------------------------------------------------------------- reading

def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _records(text: str, name: str) -> Iterator[tuple[str, object]]:
    """(where, record) for a JSON array (``item N``) or JSONL (``line N``); malformed JSON raises."""
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark, as Windows editors write it
    stripped = text.lstrip()
    if not stripped:
        raise InputError(f"{name}: the file is empty")
    if stripped.startswith("["):
        items = jsonsafe.loads(text, name)
        for i, item in enumerate(items):
            if len(json.dumps(item)) > jsonsafe.MAX_RECORD_CHARS:
                yield f"item {i}", _Bad(f"more than {jsonsafe.MAX_RECORD_CHARS:,} characters in one record")
            else:
                yield f"item {i}", item
        return
    if stripped.startswith("{") and "\n" in stripped.rstrip():
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            pass  # JSON Lines: each line is checked below
        else:
            raise InputError(f"{name}: a single JSON object; expected a JSON array of records or JSON Lines")
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if line.strip():
            try:
                jsonsafe.check_record_size(line, name, lineno)
                yield f"line {lineno}", jsonsafe.loads(line, name, lineno)
            except InputError as e:
                yield f"line {lineno}", _Bad(str(e).split(f"line {lineno}: ", 1)[-1])


@dataclass
class _Bad:
    message: str


class _RecordError(Exception):
    def __init__(self, field: str | None, expected: str):
        super().__init__(f"field '{field}': {expected}" if field else expected)


def _text(rec: dict, key: str, field: str | None = None, optional: bool = False) -> str | None:
    value = rec.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _RecordError(field or key, f"expected a non-empty string, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    return "nothing" if value is None else repr(value) if isinstance(value, str) else type(value).__name__


def detect_format(text: str, name: str) -> str:
    """'ccf', 'trl' or 'swift' from the keys of the first record."""
    first_bad = None
    for where, rec in _records(text, name):
        if not isinstance(rec, dict):
            first_bad = first_bad or (f"{where}: {rec.message}" if isinstance(rec, _Bad) else None)
            continue  # parse() reports it with its line or item
        if "counterfact" in rec or "diagnose" in rec:
            return "ccf"
        if "messages" in rec:
            return "swift"
        if "chosen" in rec or "rejected" in rec:
            return "trl"
        raise InputError(f"{name}, {where}: cannot tell the format: expected an object with 'counterfact' "
                         "(CCF JSON), 'chosen' and 'rejected' (TRL JSONL) or 'messages' (ms-swift JSON)")
    raise InputError(f"{name}: no JSON object records (expected a JSON array or JSON Lines of objects)"
                     + (f"; {first_bad}" if first_bad else ""))


def parse(text: str, name: str, fmt: str | None = None) -> Parsed:
    """All valid pairs of a file and one error per invalid record. Raises ``InputError`` only when
    nothing can be read (empty file, malformed JSON array, unknown format)."""
    fmt = fmt or detect_format(text, name)
    if fmt not in IMPORT_FORMATS:
        raise InputError(f"{name}: unknown format {fmt!r} (expected one of {', '.join(IMPORT_FORMATS)})")
    reader = {"ccf": _ccf_pairs, "trl": _trl_pairs, "swift": _swift_pairs}[fmt]
    pairs, errors, records = [], [], 0
    for where, rec in _records(text, name):
        records += 1
        try:
            if isinstance(rec, _Bad):
                raise _RecordError(None, rec.message)
            if not isinstance(rec, dict):
                raise _RecordError(None, f"expected a JSON object, got {type(rec).__name__}")
            pairs.extend(reader(rec))
        except _RecordError as e:
            errors.append(f"{name}, {where}, {e}")
    if not records:
        raise InputError(f"{name}: no records")
    return Parsed(fmt, pairs, errors, records)


def _ccf_pairs(rec: dict) -> list[Pair]:
    report, label = _text(rec, "report"), _text(rec, "diagnose")
    prompt = _text(rec, "prompt", optional=True) or CCF_QUESTION
    cf = rec.get("counterfact")
    if not isinstance(cf, dict) or not cf:
        raise _RecordError("counterfact", f"expected an object {{disease: counterfactual_report}}, got {_kind(cf)}")
    ext = None if rec.get("id") is None else str(rec["id"])
    chosen = completion(report, label)
    return [Pair(prompt, chosen, completion(_text(cf, target, f"counterfact.{target}"), target), label, target,
                 external_id=ext) for target in cf]


def _turns(messages: object, field: str, roles: tuple[str, ...]) -> list[dict]:
    """Validate a message list against ``roles`` (a leading 'system' is optional)."""
    if not isinstance(messages, list) or not messages:
        raise _RecordError(field, f"expected a list of {{role, content}} messages, got {_kind(messages)}")
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        roles = ("system", *roles)
    if len(messages) != len(roles):
        raise _RecordError(field, f"expected the turns {list(roles)}, got {len(messages)} messages")
    for i, (msg, role) in enumerate(zip(messages, roles, strict=True)):
        if not isinstance(msg, dict) or msg.get("role") != role:
            got = msg.get("role") if isinstance(msg, dict) else _kind(msg)
            raise _RecordError(f"{field}[{i}].role", f"expected {role!r}, got {got!r}")
        _text(msg, "content", f"{field}[{i}].content")
    return messages


def _split_prompt(messages: list[dict]) -> tuple[str | None, str]:
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    return system, next(m["content"] for m in messages if m["role"] == "user")


def _trl_pairs(rec: dict) -> list[Pair]:
    prompt = rec.get("prompt")
    if isinstance(prompt, list):
        system, user = _split_prompt(_turns(prompt, "prompt", ("user",)))
        chosen = _turns(rec.get("chosen"), "chosen", ("assistant",))[0]["content"]
        rejected = _turns(rec.get("rejected"), "rejected", ("assistant",))[0]["content"]
    else:
        system, user = None, _text(rec, "prompt")
        chosen, rejected = _text(rec, "chosen"), _text(rec, "rejected")
    return [_pair(rec, user, chosen, rejected, system)]


def _swift_pairs(rec: dict) -> list[Pair]:
    messages = _turns(rec.get("messages"), "messages", ("user", "assistant"))
    system, user = _split_prompt(messages)
    if "rejected_response" in rec and "rejected_messages" not in rec:
        rejected = _text(rec, "rejected_response")
    else:
        other = _turns(rec.get("rejected_messages"), "rejected_messages", ("user", "assistant"))
        if [m["content"] for m in other[:-1]] != [m["content"] for m in messages[:-1]]:
            raise _RecordError("rejected_messages", "expected the same system and user turns as 'messages'")
        rejected = other[-1]["content"]
    return [_pair(rec, user, messages[-1]["content"], rejected, system)]


def _pair(rec: dict, prompt: str, chosen: str, rejected: str, system: str | None) -> Pair:
    label = _text(rec, "label", optional=True) or answer_of(chosen)
    target = _text(rec, "target", optional=True) or answer_of(rejected) or UNKNOWN
    source = _text(rec, "source", optional=True)
    ext = None if rec.get("id") is None else str(rec["id"])
    return Pair(prompt, chosen, rejected, label, target, source, system, ext)


# ---------------------------------------------------------------- writing

def split_of(key: str, test_fraction: float, seed: int) -> str:
    """'train' or 'test', a deterministic function of ``key`` (a trajectory hash) and ``seed``: every pair
    of one study lands on the same side."""
    if test_fraction <= 0:
        return "train"
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")
    return "test" if h / 2**64 < test_fraction else "train"


def _messages(row: dict, assistant: str, system: str | None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": assistant}]


def trl_record(row: dict, conversational: bool = False, system: str | None = None) -> dict:
    """TRL preference record; ``source`` and ``weight`` drive per-source weighting in the CPO trainer."""
    if conversational:
        prompt = _messages(row, "", system)[:-1]
        chosen, rejected = ([{"role": "assistant", "content": row[k]}] for k in ("chosen", "rejected"))
    else:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    rec = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": row["source"],
           "weight": row["weight"], "label": row["label"], "target": row["target"]}
    if system and not conversational:  # chat data in plain strings: training renders [system, user] with the
        rec["system"] = system          # chat template, the prompt the model was trained on (core.pairs)
    return rec


def swift_record(row: dict, system: str | None = None) -> dict:
    """ms-swift RLHF record in the authors' format: the same prompt turns, chosen vs rejected assistant."""
    return {"messages": _messages(row, row["chosen"], system),
            "rejected_messages": _messages(row, row["rejected"], system)}


def ccf_records(rows: list[dict]) -> list[dict]:
    """Group pairs back into CCF items, one per (prompt, chosen)."""
    items: dict[tuple[str, str], dict] = {}
    for row in rows:
        item = items.setdefault((row["prompt"], row["chosen"]), {
            "prompt": row["prompt"], "report": think_of(row["chosen"]),
            "diagnose": row["label"] or answer_of(row["chosen"]) or UNKNOWN, "counterfact": {}})
        item["counterfact"][row["target"]] = think_of(row["rejected"])
    return list(items.values())


HF_FEATURES = {k: {"dtype": "float64" if k == "weight" else "string", "_type": "Value"}
               for k in ("prompt", "chosen", "rejected", "source", "weight", "label", "target")}


def _write_hf_split(rows: list[dict], folder: Path, split: str) -> None:
    """One split the way ``datasets.Dataset.save_to_disk`` lays it out."""
    folder.mkdir(parents=True)
    info = {"citation": "", "description": "CoT Drift Workbench curated preference pairs",
            "features": HF_FEATURES, "homepage": "", "license": ""}
    schema = pa.schema([(k, pa.float64() if k == "weight" else pa.string()) for k in HF_FEATURES],
                       metadata={"huggingface": json.dumps({"info": {"features": HF_FEATURES}})})
    table = pa.Table.from_pylist([{k: r[k] for k in HF_FEATURES} for r in rows], schema=schema)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table)
    fingerprint = hashlib.sha256(json.dumps([list(r.values()) for r in rows]).encode()).hexdigest()[:16]
    state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": fingerprint,
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": split}
    _dump(folder / "dataset_info.json", info)
    _dump(folder / "state.json", state)


def _dump(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def _jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def write(rows: list[dict], folder: Path, fmt: str, test_fraction: float = 0.0, seed: int = 0,
          system: str | None = None, conversational: bool = False) -> dict[str, int]:
    """Write ``rows`` (dicts with prompt, chosen, rejected, label, target, source, weight, key) into the
    new folder ``folder`` in format ``fmt``, split by ``key``; returns the rows per split. The same rows
    in the same order give the same bytes."""
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for row in rows:
        splits[split_of(row["key"], test_fraction, seed)].append(row)
    splits = {name: part for name, part in splits.items() if part or name == "train"}
    writers: dict[str, Callable[[str, list[dict]], None]] = {
        "trl": lambda s, part: _jsonl(folder / f"{s}.jsonl", [trl_record(r, conversational, system or r.get("system"))
                                                             for r in part]),
        "swift": lambda s, part: _dump(folder / f"{s}.json", [swift_record(r, system or r.get("system"))
                                                             for r in part]),
        "ccf": lambda s, part: _dump(folder / f"{s}.json", ccf_records(part)),
        "hf": lambda s, part: _write_hf_split(part, folder / s, s),
    }
    if fmt not in writers:
        raise InputError(f"unknown export format {fmt!r} (expected one of {', '.join(EXPORT_FORMATS)})")
    folder.mkdir(parents=True)
    for name, part in splits.items():
        writers[fmt](name, part)
    if fmt == "hf":
        _dump(folder / "dataset_dict.json", {"splits": list(splits)})
    return {name: len(part) for name, part in splits.items()}


def folder_hash(folder: Path) -> str:
    """sha256 over the relative names and bytes of every file under ``folder``, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()
