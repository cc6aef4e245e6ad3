"""Reasoning trajectories: read them as the field writes them, and encode them for teacher-forced scoring.

``read_trajectories`` (alias ``read_jsonl``) reads, by what the file holds:

- ``prompt`` / ``completion`` JSONL (strings), optional ``id`` and ``label`` (the gold answer);
- TRL conversational records: ``prompt`` and ``completion`` as lists of ``{role, content}``, or ``messages``;
- ms-swift records (``messages``, JSON list or JSONL): the last assistant turn is the CoT and answer,
  the turns before it the prompt; ``rejected_messages`` / ``rejected_images`` are ignored here;
- the authors' CCF items (``report``, ``diagnose``; a JSON list, JSONL, or an object keyed by ``dicom_id``):
  the report is the CoT, ``diagnose`` the answer;
- a Hugging Face ``datasets`` folder (``save_to_disk``; a DatasetDict's ``test`` split, else its only one)
  and ``.parquet`` files holding any of the above.

Each record comes back with ``id``, ``prompt``, ``completion`` and ``label`` (from the record, else the answer
its completion gives, ``core.io.answers``), plus ``chat`` (the turns before the answer) for a conversation, which
``encode`` renders with the tokenizer's chat template when it has one (the model was trained on it).

A record with images (``images``: paths relative to the data file or absolute; TRL's conversational prompts
with ``{"type": "image"}`` parts and an ``images`` column; a ``datasets`` ``Image`` feature) keeps them as
``images``: absolute path strings, each checked (exists, readable, within ``core.io.images.ImageLimits``) with
errors naming the file, the line or row, the field and the path. Each image needs one ``<image>`` placeholder
in the prompt; a prompt without any gets them at the start of its last user turn (as ms-swift does). An
``Image`` feature that stores bytes, not a path, is written once into a content-addressed folder
(``image_cache``, by default the workspace's ``cache/images``) and referenced there::

    recs = read_trajectories("data/train.jsonl")
    enc = encode(tokenizer, recs)       # [Encoded(id, input_ids, start, think_end, label, tokens), ...]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError
from core.io import jsonsafe
from core.io.answers import DEFAULT, THINK_END, AnswerFormat
from core.io.images import PLACEHOLDER
from core.io.paths import child, expand

REQUIRED = ("prompt", "completion")
CCF_QUESTION = "What is the disease of this patient?"
EXPECTED = ("expected 'prompt' and 'completion' (strings or message lists), 'messages' (a list of {role, content} "
            "ending with an assistant turn), or CCF 'report' and 'diagnose'")


@dataclass(frozen=True)
class Encoded:
    id: str
    input_ids: list[int]
    start: int  # index of the first completion token in input_ids
    think_end: int  # index of the (first) token of "</think>" (or len(input_ids) when the CoT has none)
    label: str | None
    tokens: list[str]  # display text of every token of input_ids (prompt and completion)

    @property
    def completion_ids(self) -> list[int]:
        return self.input_ids[self.start:]

    @property
    def completion_tokens(self) -> list[str]:
        return self.tokens[self.start:]


def read_trajectories(path: str | Path, limit: int | None = None, fmt: AnswerFormat = DEFAULT,
                      check_images: bool = True, image_cache: str | Path | None = None,
                      image_roots: list[Path] | None = None) -> list[dict]:
    """Records of a trajectory file or folder (see the module docstring); ``InputError`` names the file, the
    line or item, the field and what was expected. ``check_images=False`` skips reading the image files
    (an analysis folder's own copy of its records: a moved image is then warned about where it is shown).
    ``image_roots``: the folders a record's images must lie in (a file opened in the UI names paths on this
    machine as a typed path does: refused outside the data roots, one message whether or not it exists)."""
    path = expand(path)
    if not path.exists():
        raise InputError(f"{path}: trajectory file not found")
    records, seen = [], set()
    for where, raw in raw_records(path):
        rec = normalise(raw, f"{path}, {where}", fmt)
        with_images(rec, raw, path, where, check_images, image_cache, image_roots)
        rec["id"] = str(raw.get("id", raw.get("dicom_id", where.replace(" ", "-"))))
        if rec["id"] in seen:
            raise InputError(f"{path}, {where}: duplicate id {rec['id']!r} (ids must be unique)")
        seen.add(rec["id"])
        records.append(rec)
        if limit and len(records) >= limit:
            break
    if not records:
        raise InputError(f"{path}: no trajectories ({EXPECTED})")
    return records


read_jsonl = read_trajectories  # the name older callers use; every format goes through the one reader


def normalise(rec: dict, where: str, fmt: AnswerFormat = DEFAULT) -> dict:
    """``rec`` with string ``prompt`` / ``completion``, ``label`` and, for a conversation, ``chat``."""
    if not isinstance(rec, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    out = dict(rec)
    parts = bool(rec.get("images")) or isinstance(rec.get("image"), dict)  # image parts become <image> placeholders
    if isinstance(rec.get("messages"), list):
        turns = _turns(rec["messages"], where, "messages", parts)
        last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
        if last is None or last == 0:
            raise InputError(f"{where}: field 'messages': expected turns before a final assistant turn (the CoT and answer)")
        out.update(chat=turns[:last], completion=turns[last]["content"])
    elif isinstance(rec.get("prompt"), list):
        out["chat"] = _turns(rec["prompt"], where, "prompt", parts)
        done = _turns(rec.get("completion"), where, "completion", parts) if isinstance(rec.get("completion"), list) else None
        if not done or done[-1]["role"] != "assistant":
            raise InputError(f"{where}: field 'completion': expected a list of messages ending with an assistant turn")
        out["completion"] = done[-1]["content"]
    elif "report" in rec and "diagnose" in rec and "completion" not in rec:
        from core.io.formats import completion

        report, label = _string(rec, "report", where), _string(rec, "diagnose", where)
        out.update(prompt=rec.get("prompt") or CCF_QUESTION, completion=completion(report, label), label=label)
    elif not all(k in rec for k in REQUIRED):
        raise InputError(f"{where}: missing field '{next(k for k in REQUIRED if k not in rec)}'; {EXPECTED}")
    if "chat" in out:
        out["prompt"] = next((t["content"] for t in reversed(out["chat"]) if t["role"] == "user"), out["chat"][-1]["content"])
    for key in REQUIRED:
        _string(out, key, where)
    if out.get("label") is not None and not isinstance(out["label"], str):
        raise InputError(f"{where}: field 'label' must be a string, got {type(out['label']).__name__}")
    out["label"] = out.get("label") or fmt.parse(out["completion"])  # no label: the answer it gives
    return out


def system_of(record: dict) -> str | None:
    """The system turn of a conversation record (its ``chat``; several joined by blank lines), else its ``system``
    field (a plain record exported with one), else None: what a stored pair keeps so that exports and training
    see the prompt scoring saw."""
    turns = [t["content"] for t in record.get("chat") or () if t.get("role") == "system" and t.get("content")]
    system = "\n\n".join(turns) if turns else record.get("system")
    return system if isinstance(system, str) and system.strip() else None


def _string(rec: dict, key: str, where: str) -> str:
    if not isinstance(rec.get(key), str) or not rec[key].strip():
        raise InputError(f"{where}: field '{key}' must be a non-empty string")
    return rec[key]


def _turns(messages: object, where: str, field: str, images: bool = False) -> list[dict]:
    """``{role, content}`` turns; multimodal content lists keep their text parts and, when the record has
    ``images``, an ``<image>`` placeholder for each image part (TRL's vision format)."""
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: field '{field}': expected a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InputError(f"{where}: field '{field}[{i}]': expected an object with 'role' and 'content'")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "image"}, {"type": "text", "text": ...}, ...]: an image part
            kinds = ("text", "image") if images else ("text",)
            content = "".join(p.get("text", "") if p.get("type") == "text" else PLACEHOLDER  # is its placeholder
                              for p in content if isinstance(p, dict) and p.get("type") in kinds)
        if not isinstance(content, str):
            raise InputError(f"{where}: field '{field}[{i}].content': expected a string or a list of parts")
        out.append({"role": m["role"], "content": content})
    return out


def with_images(rec: dict, raw: dict, path: Path, where: str, check: bool = True,
                image_cache: str | Path | None = None, roots: list[Path] | None = None) -> dict:
    """``rec`` given ``images`` (absolute path strings) from the raw record's ``images`` (or a datasets
    ``image`` feature), placeholders matched to them; a text-only record is left as it is."""
    from core.io.images import ImageLimits, check_image, record_images, resolve
    from core.io.roots import check_image_refs

    feature = raw.get("image") if isinstance(raw.get("image"), dict) else None  # a datasets Image column
    if feature is not None:
        rec.pop("image")  # its bytes do not go on into the analysis's JSON
    value = raw.get("images", feature)
    if value is None or value == []:
        return rec
    items = [value] if isinstance(value, (str, dict)) else value
    if isinstance(items, list):  # else record_images names the field and what it expected
        anchor = path if path.is_file() else path / "_"  # relative paths: from the file's folder, or the dataset's
        items = [_feature_image(v, path, f"{where}, images[{i}]", image_cache) if isinstance(v, dict) else v
                 for i, v in enumerate(items)]
        items = [str(resolve(v, anchor)) if isinstance(v, str) and v.strip() else v for v in items]
    refs = record_images({"images": items}, path, where)
    check_image_refs(refs, roots)  # before anything tells whether the file exists
    if check:
        limits = ImageLimits()
        for ref in refs:
            check_image(ref, limits)  # exists, within limits, a readable image: named by record and path
    rec["images"] = [str(r.path) for r in refs]
    _placeholders(rec, len(refs), f"{path}, {where}, field '{'messages' if 'messages' in raw else 'prompt'}'")
    return rec


def _placeholders(rec: dict, n: int, where: str) -> None:
    """One ``<image>`` per image: a prompt without any gets them before its last user turn's text."""
    from core.io.images import check_placeholders

    chat = rec.get("chat")
    text = "".join(t["content"] for t in chat) if chat else rec["prompt"]
    if PLACEHOLDER not in text:
        if chat:
            last = max(i for i, t in enumerate(chat) if t["role"] == "user") if any(
                t["role"] == "user" for t in chat) else len(chat) - 1
            chat[last] = {**chat[last], "content": PLACEHOLDER * n + chat[last]["content"]}
        rec["prompt"] = PLACEHOLDER * n + rec["prompt"]
        return
    check_placeholders(text, n, where)


def _feature_image(value: dict, path: Path, where: str, cache: str | Path | None) -> str:
    """A datasets ``Image`` value (``{"bytes", "path"}``): its path when it stores one and no bytes, else its
    bytes written once into the content-addressed ``cache`` folder (the file named by their hash)."""
    import hashlib

    data, name = value.get("bytes"), value.get("path")
    if data is None:
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{path}, {where}: an image with neither bytes nor a path")
        return name
    if not isinstance(data, (bytes, bytearray)):
        raise InputError(f"{path}, {where}: expected image bytes, got {type(data).__name__}")
    from core.io.cache import atomic_write

    folder = expand(cache) if cache else _default_image_cache()
    suffix = Path(name).suffix.lower() if isinstance(name, str) and Path(name).suffix else _suffix(bytes(data))
    target = folder / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
    if not target.is_file():  # the same bytes, the same file: written once, never overwritten
        atomic_write(target, lambda tmp: tmp.write_bytes(bytes(data)), durable=False)
    return str(target)


def _default_image_cache() -> Path:
    from core.io.roots import default_path

    return default_path() / "cache" / "images"


def _suffix(data: bytes) -> str:
    """The file suffix of encoded image bytes, from their magic number (PIL reads any of them)."""
    for magic, suffix in ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
                          (b"RIFF", ".webp")):
        if data.startswith(magic):
            return suffix
    return ".img"


def raw_records(path: Path):
    """(where, record) from a JSONL / JSON / parquet file or a ``datasets`` folder."""
    if path.is_dir():
        yield from _dataset_folder(path)
    elif path.suffix == ".parquet":
        yield from _parquet(path)
    elif path.suffix == ".json":
        yield from _json_file(path)
    else:
        for lineno, rec in json_lines(path):
            yield f"line {lineno}", rec


def _json_file(path: Path):
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = json.loads(text)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError:
        for lineno, rec in json_lines(path):  # JSON Lines named .json
            yield f"line {lineno}", rec
        return
    except (RecursionError, ValueError):  # deep nesting, huge integers: the named error
        data = jsonsafe.loads(text, str(path))
    if isinstance(data, list):
        for i, rec in enumerate(data):
            yield f"item {i}", rec
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        for key, rec in data.items():  # CCF keyed by dicom_id
            yield f"item {key!r}", {"id": key, **rec}
    else:
        raise InputError(f"{path}: expected a JSON list of records (or an object of records keyed by id)")


def _parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow's error types vary by version: name the file
        raise InputError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    for i, rec in enumerate(table.to_pylist()):
        yield f"row {i}", rec


def _dataset_folder(path: Path):
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{path / 'dataset_dict.json'}: expected {{\"splits\": [...]}} ({e})") from None
        if not isinstance(splits, list):
            raise InputError(f"{path / 'dataset_dict.json'}: expected {{\"splits\": [...]}}, got {splits!r}")
        split = "test" if "test" in splits else splits[0] if len(splits) == 1 else None
        if split is None:
            raise InputError(f"{path}: a DatasetDict with splits {splits}; pick one folder ({path}/<split>)")
        path = child(path, split, f"{path / 'dataset_dict.json'}, field 'splits'")  # never a path out of it
    if not (path / "state.json").is_file():
        raise InputError(f"{path}: a folder, but not a Hugging Face datasets folder (no state.json); "
                         "expected a JSONL / JSON / parquet file or a save_to_disk folder")
    import pyarrow as pa

    state = json.loads((path / "state.json").read_text())
    row = 0
    for entry in state.get("_data_files", []):
        f = child(path, entry.get("filename") if isinstance(entry, dict) else None,
                  f"{path / 'state.json'}, field '_data_files'")
        try:
            with pa.memory_map(str(f)) as source:
                table = pa.ipc.open_stream(source).read_all()
        except Exception as e:  # noqa: BLE001 - an arrow file that does not open: name it
            raise InputError(f"{f}: not a readable arrow file ({str(e).splitlines()[0]})") from None
        for rec in table.to_pylist():
            yield f"row {row}", rec
            row += 1


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


def prompt_ids(tokenizer, prompt: str, chat_template: bool = False, chat: list[dict] | None = None) -> list[int]:
    """Token ids of the prompt: a conversation's turns through the tokenizer's chat template (when asked and
    the tokenizer has one), else the prompt text with the BOS token the model was trained with."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(chat or [{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return ids if bos is None or (ids and ids[0] == bos) else [bos] + ids


def encode(tokenizer, records: list[dict], chat_template: bool = True, max_length: int | None = None) -> list[Encoded]:
    """Encode each record as ``prompt ids + ids(" " + completion)`` (the sample world's training format); a
    conversation (``chat``) goes through the tokenizer's chat template unless ``chat_template`` is off."""
    think = tokenizer.get_vocab().get("</think>")  # None when the tokenizer has no such token (never the unk id)
    out, joined = [], 0
    for rec in records:
        templated = chat_template and bool(rec.get("chat")) and bool(getattr(tokenizer, "chat_template", None))
        turns = rec.get("chat") or []
        prompt = rec["prompt"]
        if not templated and len(turns) > 1:  # no template: every turn as plain text, not the last user turn alone
            prompt, joined = plain_turns(turns), joined + 1
        p = prompt_ids(tokenizer, prompt, templated, rec.get("chat"))
        c, at = completion_tokens(tokenizer, ("" if templated else " ") + rec["completion"], think)
        ids = p + c
        if max_length and len(ids) > max_length:
            raise InputError(f"trajectory {rec['id']}: {len(ids)} tokens exceed max_length {max_length}")
        out.append(Encoded(str(rec["id"]), ids, len(p), len(ids) if at is None else len(p) + at, rec.get("label"),
                           [token_text(tokenizer, t) for t in ids]))
    if joined:
        import warnings

        why = "the chat template is off" if not chat_template else "the tokenizer has no chat template"
        warnings.warn(f"{joined} of {len(records)} conversations have a system or earlier turn, but {why}: their turns "
                      "are read as plain text one after another (blank lines between), not as the model's chat format",
                      UserWarning, stacklevel=2)
    return out


def completion_tokens(tokenizer, text: str, think_id: int | None) -> tuple[list[int], int | None]:
    """The completion's token ids and ``think_start`` among them, the text tokenized once: a fast tokenizer gives
    the ids and their character offsets in one call."""
    if think_id is None and THINK_END in text and getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        at = text.find(THINK_END)
        return list(enc["input_ids"]), next((i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > at), None)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids, think_start(tokenizer, text, ids, think_id)


def think_start(tokenizer, text: str, ids: list[int], think_id: int | None = None) -> int | None:
    """Index in ``ids`` (``text``'s tokens) of the token where the first ``</think>`` begins; None without one.
    A tokenizer with a ``</think>`` token (``think_id``: Qwen3, DeepSeek-R1) has it as one token; most others
    (Qwen2.5, Llama, Gemma, Mistral) write it in pieces ("</", "think", ">"), found here by decoding prefixes
    (``completion_tokens`` reads a fast tokenizer's character offsets instead). Without this the CoT of such a
    model ran to the end of the completion: the probe read beliefs after the answer was written, and the
    answer's tokens counted as the CoT's."""
    if think_id is not None:
        return next((i for i, t in enumerate(ids) if t == think_id), None)
    return think_start_decoded(tokenizer, ids) if THINK_END in text else None


def think_start_decoded(tokenizer, ids: list[int]) -> int | None:
    """``think_start`` by decoding: the fewest leading tokens whose text holds ``</think>`` (a binary search),
    then back to the token where it begins."""
    def holds(a: int, b: int) -> bool:
        return THINK_END in tokenizer.decode(ids[a:b])

    if not holds(0, len(ids)):
        return None
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds(0, mid) else (mid + 1, hi)
    start = lo - 1
    while not holds(start, lo):
        start -= 1
    return start


def plain_turns(turns: list[dict]) -> str:
    """A conversation's turns as plain text, in order, blank lines between (what a model without a chat template
    reads): the system prompt and earlier turns are not dropped."""
    return "\n\n".join(t["content"] for t in turns if t.get("content"))


def token_text(tokenizer, token_id: int) -> str:
    """Readable text of one token, keeping the leading space that "▁" / "Ġ" pieces stand for."""
    text = tokenizer.decode([token_id])
    piece = tokenizer.convert_ids_to_tokens(token_id) or ""
    return " " + text if piece[:1] in ("▁", "Ġ") and not text.startswith(" ") else text


def vocab_texts(tokenizer) -> list[str]:
    """``token_text`` of every id, for turning top-k ids into strings without a decode per row."""
    return [token_text(tokenizer, i) for i in range(len(tokenizer))]


def data_hash(path: str | Path) -> str:
    """Content hash of a trajectory file, or of every file of a ``datasets`` folder (names and bytes)."""
    import hashlib

    from core.io.cache import file_hash

    path = Path(path)
    if not path.is_dir():
        return file_hash(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + file_hash(f).encode())
    return h.hexdigest()[:16]
