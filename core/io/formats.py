"""Preference-data file formats: parse CCF JSON, TRL preference JSONL and ms-swift JSON into pairs, and
write curated pairs as TRL JSONL, ms-swift JSON, CCF JSON or a Hugging Face ``datasets`` folder.

Pure functions over text and folders: no database here (``core.curation.snapshots`` stores and records them).

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

Images (vision-language runs) ride along in every format: ``images`` (the chosen side's, paths relative to
the file or absolute; each checked, an error names the record and the path) and ``rejected_images`` (a visual
pair: the rejected side's own images, CPO++'s "same CoT, counterfactual image"); TRL's vision format types the
user turn's content (``{"type": "image"}`` / ``{"type": "text", "text": ...}``, read as ``<image>`` placeholders);
CCF items find their image by ``dicom_id`` in an image folder, or carry ``images`` and ``image_swaps``
{disease: images}; the Hugging Face folder has ``List(Image())`` columns (``parse_hf_folder`` reads one back).

The Hugging Face folder is the layout ``datasets.DatasetDict.save_to_disk`` writes (``dataset_dict.json``;
per split ``data-00000-of-00001.arrow`` in Arrow IPC stream format, ``dataset_info.json``, ``state.json``),
written with pyarrow so ``datasets.load_from_disk(folder)`` reads it without ``datasets`` installed here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa

from core.errors import InputError
from core.io import jsonsafe
from core.io.answers import DEFAULT as ANSWER_FORMAT
from core.io.answers import answer_of
from core.io.paths import child
from core.io.images import (
    IMAGE_SUFFIXES,
    PLACEHOLDER,
    ImageRef,
    check_image,
    image_index,
)

IMPORT_FORMATS = ("ccf", "trl", "swift")
IMAGE_SWAP = "image_swap"  # the source of CPO++'s visual pairs (same CoT, another study's image)
EXPORT_FORMATS = ("trl", "swift", "hf", "ccf")
CCF_QUESTION = "What is the disease of this patient?"
ANSWER = ANSWER_FORMAT.sentence
_THINK_RE = re.compile(r"^\s*<think>(.*)</think>", re.S)
UNKNOWN = "unknown"
CCF_IDS = ("dicom_id", "sid", "pid")  # a CCF item's study identifiers: kept, so an export finds its images again


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
    images: tuple[str, ...] = ()                   # the chosen side's images (absolute paths), () for text only
    rejected_images: tuple[str, ...] | None = None  # the rejected side's, None for the same (a text counterfactual)
    meta: dict = field(default_factory=dict, hash=False, compare=False)  # source identifiers (CCF_IDS) to keep


def _unicode_checked(record: object) -> object:
    """``record``, or a ``_Bad`` one when a string in it holds a lone UTF-16 surrogate (JSON's ``"\\ud83d"``, as
    truncated LLM output writes half an emoji): valid JSON, but no text to store or hash."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return _Bad("a string holds a lone UTF-16 surrogate (half of an emoji?): not valid Unicode text")
    return record


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
                yield f"item {i}", _unicode_checked(item)
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
                yield f"line {lineno}", _unicode_checked(jsonsafe.loads(line, name, lineno))
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


@dataclass(frozen=True)
class _Context:
    """Where a file's images are: its own path (relative image paths start there; None for an upload, which
    must name its images by absolute path) and, for CCF items, an image folder indexed by ``dicom_id``."""
    data_file: Path | None = None
    index: dict | None = None  # core.io.images.image_index of the image folder
    roots: tuple[Path, ...] | None = None  # images must lie under these (the UI's data roots); None: anywhere


def parse(text: str, name: str, fmt: str | None = None, data_file: str | Path | None = None,
          image_folder: str | Path | None = None, image_roots: list[Path] | None = None) -> Parsed:
    """All valid pairs of a file and one error per invalid record. Raises ``InputError`` only when
    nothing can be read (empty file, malformed JSON array, unknown format). ``data_file``: the file's path,
    which relative ``images`` are resolved against; ``image_folder``: CCF items' images by ``dicom_id``;
    ``image_roots``: the folders images must lie in (a file imported in the UI names paths on this machine
    as a typed path does: refused outside the data roots, with one message whether or not the file exists)."""
    fmt = fmt or detect_format(text, name)
    if fmt not in IMPORT_FORMATS:
        raise InputError(f"{name}: unknown format {fmt!r} (expected one of {', '.join(IMPORT_FORMATS)})")
    reader = {"ccf": _ccf_pairs, "trl": _trl_pairs, "swift": _swift_pairs}[fmt]
    ctx = _Context(Path(data_file).expanduser().resolve() if data_file else None,
                   image_index(image_folder) if image_folder else None,
                   None if image_roots is None else tuple(image_roots))
    return _parse_records(_records(text, name), name, fmt, lambda rec: reader(rec, ctx))


def _parse_records(records_of: Iterator[tuple[str, object]], name: str, fmt: str, reader) -> Parsed:
    pairs, errors, records = [], [], 0
    for where, rec in records_of:
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


def _images(rec: dict, field: str, ctx: _Context) -> tuple[str, ...] | None:
    """The record's image paths in ``field`` (absolute, each checked: exists, a readable image within the
    limits); None when the record has no such field."""
    value = rec.get(field)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _RecordError(field, f"expected a list of image paths (strings), got {_kind(value)}")
    out = []
    for i, v in enumerate(value):
        path = Path(v).expanduser()
        if not path.is_absolute():
            if ctx.data_file is None:
                raise _RecordError(f"{field}[{i}]", f"relative image path {v!r} in an upload; import the file by its "
                                                    "path on this machine, or give absolute image paths")
            path = (ctx.data_file.parent / path).resolve()
        if ctx.roots is not None:
            _check_root(path, ctx.roots, f"{field}[{i}]")
        _check_image(path, f"{field}[{i}]")
        out.append(str(path))
    return tuple(out)


def _check_root(path: Path, roots: tuple[Path, ...], field: str) -> None:
    from core.io.roots import check_data_path

    try:
        check_data_path(path, list(roots), typed=False)  # the path read: ~ expanded, $VARS as written
    except InputError as e:
        raise _RecordError(field, str(e)) from None


def _check_image(path: Path, field: str) -> None:
    try:
        check_image(ImageRef(path, f"field '{field}'"))
    except InputError as e:
        raise _RecordError(None, str(e)) from None


def _with_images(pair: Pair, rec: dict, ctx: _Context) -> Pair:
    """``pair`` with the record's ``images`` and ``rejected_images`` (the latter kept only when different)."""
    images = _images(rec, "images", ctx) or ()
    rejected = _images(rec, "rejected_images", ctx)
    n = pair.prompt.count(PLACEHOLDER)  # none: the images go before the text, as ms-swift places them
    if n and n != len(images):
        raise _RecordError("images", f"{n} image placeholder(s) in the prompt but {len(images)} image(s); expected "
                                     "one image per placeholder")
    return replace(pair, images=images, rejected_images=None if rejected is None or rejected == images else rejected)


def _ccf_pairs(rec: dict, ctx: _Context = _Context()) -> list[Pair]:
    images = _images(rec, "images", ctx)
    if images is None and ctx.index is not None:  # CCF with an image folder: the study's image by dicom_id
        dicom = rec.get("dicom_id")
        if not isinstance(dicom, str) or not dicom.strip():
            raise _RecordError("dicom_id", f"expected the study's dicom_id (a string) to find its image, got {_kind(dicom)}")
        if dicom not in ctx.index:
            raise _RecordError("dicom_id", f"no image named {dicom!r} in the image folder")
        if ctx.roots is not None:  # a link in the image folder may lead out of it
            _check_root(ctx.index[dicom], ctx.roots, "dicom_id")
        _check_image(ctx.index[dicom], "dicom_id")
        images = (str(ctx.index[dicom]),)
    swaps = rec.get("image_swaps") or {}
    if not isinstance(swaps, dict):
        raise _RecordError("image_swaps", f"expected an object {{disease: [image paths]}}, got {_kind(swaps)}")
    ids = {k: rec[k] for k in CCF_IDS if isinstance(rec.get(k), (str, int)) and not isinstance(rec.get(k), bool)}
    pairs = [replace(p, images=images or (), meta=ids) for p in _ccf_text_pairs(rec, bool(swaps))]
    for target, paths in swaps.items():  # CPO++'s visual pairs: the same report with another study's image
        field = f"image_swaps.{target}"
        other = _images({field: paths}, field, ctx)
        if not images or not other:
            raise _RecordError(field, "expected the study's images and the swapped-in images")
        chosen = pairs[0].chosen if pairs else completion(_text(rec, "report"), _text(rec, "diagnose"))
        pairs.append(Pair(_text(rec, "prompt", optional=True) or CCF_QUESTION, chosen, chosen, rec["diagnose"],
                          target, IMAGE_SWAP, external_id=None if rec.get("id") is None else str(rec["id"]),
                          images=images, rejected_images=other, meta=ids))
    return pairs


def _ccf_text_pairs(rec: dict, has_swaps: bool = False) -> list[Pair]:
    report, label = _text(rec, "report"), _text(rec, "diagnose")
    prompt = _text(rec, "prompt", optional=True) or CCF_QUESTION
    cf = rec.get("counterfact", {} if has_swaps else None)
    if not isinstance(cf, dict) or not (cf or has_swaps):
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
        if isinstance(msg.get("content"), list):  # TRL's vision format: typed items, an image slot per image
            msg = {**msg, "content": _typed_content(msg["content"], f"{field}[{i}].content")}
            messages = [*messages[:i], msg, *messages[i + 1:]]
        _text(msg, "content", f"{field}[{i}].content")
    return messages


def _typed_content(items: list, field: str) -> str:
    """TRL's typed content (``[{"type": "image"}, {"type": "text", "text": ...}]``) as text with an ``<image>``
    placeholder per image item, in order."""
    out = []
    for j, item in enumerate(items):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "image":
            out.append(PLACEHOLDER)
        elif kind == "text" and isinstance(item.get("text"), str):
            out.append(item["text"])
        else:
            raise _RecordError(f"{field}[{j}]", "expected {'type': 'image'} or {'type': 'text', 'text': ...}, got "
                                                f"{_kind(item)}")
    return "".join(out)


def _split_prompt(messages: list[dict]) -> tuple[str | None, str]:
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    return system, next(m["content"] for m in messages if m["role"] == "user")


def _trl_pairs(rec: dict, ctx: _Context = _Context()) -> list[Pair]:
    prompt = rec.get("prompt")
    if isinstance(prompt, list):
        system, user = _split_prompt(_turns(prompt, "prompt", ("user",)))
        chosen = _turns(rec.get("chosen"), "chosen", ("assistant",))[0]["content"]
        rejected = _turns(rec.get("rejected"), "rejected", ("assistant",))[0]["content"]
    else:  # plain strings; a chat's system turn in "system" (as trl_record writes it)
        system = _text(rec, "system", optional=True) if rec.get("system") != "" else None
        user, chosen, rejected = _text(rec, "prompt"), _text(rec, "chosen"), _text(rec, "rejected")
    return [_with_images(_pair(rec, user, chosen, rejected, system), rec, ctx)]


def _swift_pairs(rec: dict, ctx: _Context = _Context()) -> list[Pair]:
    messages = _turns(rec.get("messages"), "messages", ("user", "assistant"))
    system, user = _split_prompt(messages)
    if "rejected_response" in rec and "rejected_messages" not in rec:
        rejected = _text(rec, "rejected_response")
    else:
        other = _turns(rec.get("rejected_messages"), "rejected_messages", ("user", "assistant"))
        if [m["content"] for m in other[:-1]] != [m["content"] for m in messages[:-1]]:
            raise _RecordError("rejected_messages", "expected the same system and user turns as 'messages'")
        rejected = other[-1]["content"]
    return [_with_images(_pair(rec, user, messages[-1]["content"], rejected, system), rec, ctx)]


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


def typed_prompt(prompt: str, n_images: int) -> list[dict]:
    """A user turn's content in TRL's vision format: ``{"type": "image"}`` where the prompt has ``<image>``
    (all images first when it has none, as ms-swift places them), ``{"type": "text", "text": ...}`` between."""
    pieces = prompt.split(PLACEHOLDER)
    if len(pieces) == 1:
        pieces = [""] * n_images + [prompt]
    out: list[dict] = []
    for k, piece in enumerate(pieces):
        if k:
            out.append({"type": "image"})
        if piece:
            out.append({"type": "text", "text": piece})
    return out


def _image_fields(row: dict, paths: dict[str, str]) -> dict:
    """``images`` (the chosen side's) and, for a visual pair, ``rejected_images``, as the export writes the
    paths (``paths``: absolute -> written; absolute when not in it); nothing for a text-only pair."""
    images, rejected = list(row.get("images") or []), list(row.get("rejected_images") or row.get("images") or [])
    out = {"images": [paths.get(p, p) for p in images]} if images or rejected else {}
    if rejected != images:
        out["rejected_images"] = [paths.get(p, p) for p in rejected]
    return out


def trl_record(row: dict, conversational: bool = False, system: str | None = None,
               paths: dict[str, str] | None = None) -> dict:
    """TRL preference record; ``source`` and ``weight`` drive per-source weighting in the CPO trainer. With
    images: an ``images`` column (and ``rejected_images`` for a visual pair); conversational prompts take TRL's
    vision form (typed user content, an image item per image)."""
    extra = _image_fields(row, paths or {})
    if conversational:
        prompt = _messages(row, "", system)[:-1]
        if extra:
            prompt[-1] = {"role": "user", "content": typed_prompt(row["prompt"], len(extra["images"]))}
        chosen, rejected = ([{"role": "assistant", "content": row[k]}] for k in ("chosen", "rejected"))
    else:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    rec = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": row["source"],
           "weight": row["weight"], "label": row["label"], "target": row["target"]}
    if system and not conversational:  # chat data in plain strings: training renders [system, user] with the
        rec["system"] = system          # chat template, the prompt the model was trained on (core.io.pairs)
    return rec | extra


def swift_record(row: dict, system: str | None = None, paths: dict[str, str] | None = None) -> dict:
    """ms-swift RLHF record in the authors' format: the same prompt turns, chosen vs rejected assistant, and
    ``images`` / ``rejected_images`` as the authors' records carry them."""
    return {"messages": _messages(row, row["chosen"], system),
            "rejected_messages": _messages(row, row["rejected"], system)} | _image_fields(row, paths or {})


def ccf_records(rows: list[dict], paths: dict[str, str] | None = None) -> list[dict]:
    """Group pairs back into CCF items, one per (prompt, chosen, images) and target (a second counterfactual for
    one study and target goes into another item: an item holds one per disease); a study's ``images`` and its
    image swaps, ``image_swaps`` {disease: the swapped-in images} (the report unchanged), go with the item."""
    items: dict[tuple, dict] = {}
    for row in rows:
        fields = _image_fields(row, paths or {})
        slot = "image_swaps" if "rejected_images" in fields else "counterfact"
        key = (row["prompt"], row["chosen"], tuple(fields.get("images", ())), 0)
        while key in items and row["target"] in items[key].get(slot, {}):  # a second pair for one study and
            key = (*key[:3], key[3] + 1)  # target (graph rules and the LLM, two imports): an item of its own
        item = items.setdefault(key, {
            "prompt": row["prompt"], "report": think_of(row["chosen"]),
            "diagnose": row["label"] or answer_of(row["chosen"]) or UNKNOWN, "counterfact": {}}
            | {k: v for k, v in (row.get("meta") or {}).items() if k in CCF_IDS}
            | ({"images": fields["images"]} if fields else {}))
        if "rejected_images" in fields:
            item.setdefault("image_swaps", {})[row["target"]] = fields["rejected_images"]
        else:
            item["counterfact"][row["target"]] = think_of(row["rejected"])
    return list(items.values())


HF_FEATURES = {k: {"dtype": "float64" if k == "weight" else "string", "_type": "Value"}  # system: a chat's system
               for k in ("prompt", "chosen", "rejected", "source", "weight", "label", "target", "system")}  # or null
HF_IMAGES = {"feature": {"_type": "Image"}, "_type": "List"}  # datasets.List(datasets.Image())
_HF_IMAGE_TYPE = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


def _hf_image(path: str, written: str, embed: bool) -> dict:
    """One ``datasets.Image`` cell: the file's bytes with its name (as ``save_to_disk`` embeds them), or only
    its path (a reference ``datasets`` opens when the row is read)."""
    return {"bytes": Path(path).read_bytes(), "path": Path(written).name} if embed else {"bytes": None, "path": path}


def _write_hf_split(rows: list[dict], folder: Path, split: str, paths: dict[str, str] | None = None,
                    with_images: bool = False) -> None:
    """One split the way ``datasets.Dataset.save_to_disk`` lays it out; with images, ``images`` and
    ``rejected_images`` columns of ``datasets.Image`` (embedded when the export copies images)."""
    folder.mkdir(parents=True)
    features = HF_FEATURES | ({"images": HF_IMAGES, "rejected_images": HF_IMAGES} if with_images else {})
    info = {"citation": "", "description": "CoT Drift Workbench curated preference pairs",
            "features": features, "homepage": "", "license": ""}
    fields = [(k, pa.float64() if k == "weight" else pa.string()) for k in HF_FEATURES]
    fields += [(k, _HF_IMAGE_TYPE) for k in ("images", "rejected_images")] if with_images else []
    schema = pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})
    embed = paths is not None
    table = pa.Table.from_pylist([{k: r.get(k) for k in HF_FEATURES} | (_hf_images(r, paths, embed) if with_images else {})
                                  for r in rows], schema=schema)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table)
    fingerprint = hashlib.sha256(json.dumps([_plain(r, paths or {}) for r in rows]).encode()).hexdigest()[:16]
    state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": fingerprint,
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": split}
    _dump(folder / "dataset_info.json", info)
    _dump(folder / "state.json", state)


def _hf_images(row: dict, paths: dict[str, str] | None, embed: bool) -> dict:
    images = list(row.get("images") or [])
    rejected = list(row.get("rejected_images") or images)
    cell = lambda ps: [_hf_image(p, (paths or {}).get(p, p), embed) for p in ps]  # noqa: E731
    return {"images": cell(images), "rejected_images": cell(rejected)}


def _plain(row: dict, paths: dict[str, str]) -> list:
    """The row as written (images by their written path), for the split's fingerprint."""
    return [row.get(k) for k in HF_FEATURES] + [[paths.get(p, p) for p in row.get(k) or ()]
                                                for k in ("images", "rejected_images")]


def write_json(path: Path, obj: object) -> None:
    """JSON as every export writes it (sorted keys, indented, UTF-8): the same object gives the same bytes."""
    _dump(path, obj)


def _dump(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def _jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def write(rows: list[dict], folder: Path, fmt: str, test_fraction: float = 0.0, seed: int = 0,
          system: str | None = None, conversational: bool = False,
          image_paths: dict[str, str] | None = None) -> dict[str, int]:
    """Write ``rows`` (dicts with prompt, chosen, rejected, label, target, source, weight, key, and optional
    images / rejected_images) into the new folder ``folder`` in format ``fmt``, split by ``key``; returns the
    rows per split. ``image_paths`` maps an image's absolute path to the path written (images copied into the
    export; the Hugging Face folder embeds them); without it the absolute paths are written. The same rows in
    the same order give the same bytes."""
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for row in rows:
        splits[split_of(row["key"], test_fraction, seed)].append(row)
    splits = {name: part for name, part in splits.items() if part or name == "train"}
    paths = image_paths or {}
    with_images = any(r.get("images") or r.get("rejected_images") for r in rows)
    writers: dict[str, Callable[[str, list[dict]], None]] = {
        "trl": lambda s, part: _jsonl(folder / f"{s}.jsonl", [trl_record(r, conversational,
                                                                         system or r.get("system"), paths)
                                                             for r in part]),
        "swift": lambda s, part: _dump(folder / f"{s}.json", [swift_record(r, system or r.get("system"), paths)
                                                             for r in part]),
        "ccf": lambda s, part: _dump(folder / f"{s}.json", ccf_records(part, paths)),
        "hf": lambda s, part: _write_hf_split([{**r, "system": system or r.get("system")} for r in part], folder / s,
                                              s, image_paths, with_images),
    }
    if fmt not in writers:
        raise InputError(f"unknown export format {fmt!r} (expected one of {', '.join(EXPORT_FORMATS)})")
    folder.mkdir(parents=True)
    for name, part in splits.items():
        writers[fmt](name, part)
    if fmt == "hf":
        _dump(folder / "dataset_dict.json", {"splits": list(splits)})
    return {name: len(part) for name, part in splits.items()}


# ---------------------------------------------------------------- the Hugging Face folder, read back

def is_hf_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def parse_hf_folder(folder: str | Path, image_dir: str | Path, image_roots: list[Path] | None = None) -> Parsed:
    """The pairs of a ``datasets`` folder (``save_to_disk`` layout, one split or a ``DatasetDict``) with the
    columns of a TRL preference file and optional ``images`` / ``rejected_images`` of ``datasets.Image``.
    Embedded images are written once into ``image_dir`` (named by their content hash; the store keeps paths),
    referenced ones are resolved against the split's folder."""
    folder = Path(folder).expanduser().resolve()
    if not is_hf_folder(folder):
        raise InputError(f"{folder}: not a Hugging Face datasets folder (expected dataset_dict.json or state.json)")
    splits = ([folder / s for s in _hf_splits(folder)] if (folder / "dataset_dict.json").is_file() else [folder])
    image_dir = Path(image_dir)

    def rows():
        for split in splits:
            for i, rec in enumerate(_hf_table(split).to_pylist()):
                where = f"{split.name}, row {i}"
                try:
                    yield where, _hf_record(rec, split, image_dir)
                except _RecordError as e:
                    yield where, _Bad(str(e))
    ctx = _Context(folder / "_", roots=None if image_roots is None else (*image_roots, Path(image_dir)))
    return _parse_records(rows(), folder.name, "hf", lambda rec: _trl_pairs(rec, ctx))


def _hf_splits(folder: Path) -> list[str]:
    try:
        names = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{folder / 'dataset_dict.json'}: expected {{\"splits\": [names]}} ({e})") from None
    if not isinstance(names, list):
        raise InputError(f"{folder / 'dataset_dict.json'}: expected a list of split folders, got {names!r}")
    for n in names:  # a split is a folder inside this one, never a path out of it
        if not child(folder, n, f"{folder / 'dataset_dict.json'}, field 'splits'").is_dir():
            raise InputError(f"{folder / 'dataset_dict.json'}: expected a list of split folders, got {names!r}")
    return names


def _hf_table(split: Path) -> pa.Table:
    files = sorted(split.glob("data-*.arrow"))
    if not files:
        raise InputError(f"{split}: no data-*.arrow file")
    tables = []
    for f in files:
        try:
            with pa.OSFile(str(f), "rb") as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        except Exception as e:  # noqa: BLE001 - an arrow file that does not open: name it
            raise InputError(f"{f}: not a readable arrow file ({str(e).splitlines()[0]})") from None
    return pa.concat_tables(tables)


def _hf_record(rec: dict, split: Path, image_dir: Path) -> dict:
    out = {k: v for k, v in rec.items() if k not in ("images", "rejected_images", "weight")}
    for key in ("images", "rejected_images"):
        cells = rec.get(key)
        if cells is None:
            continue
        if isinstance(cells, dict):  # a single Image column rather than a list of them
            cells = [cells]
        out[key] = [_hf_image_path(c, split, image_dir, f"{key}[{i}]") for i, c in enumerate(cells)]
    return out


def _hf_image_path(cell: object, split: Path, image_dir: Path, field: str) -> str:
    if not isinstance(cell, dict) or not (cell.get("bytes") or cell.get("path")):
        raise _RecordError(field, f"expected an Image cell with bytes or a path, got {_kind(cell)}")
    if cell.get("bytes"):
        data = cell["bytes"]
        suffix = Path(cell.get("path") or "").suffix.lower()
        target = image_dir / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix if suffix in IMAGE_SUFFIXES else ''}"
        if not target.exists():  # content-named: the same image imported twice is one file
            image_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        return str(target)
    path = Path(cell["path"]).expanduser()
    return str(path if path.is_absolute() else (split / path).resolve())


def folder_hash(folder: Path) -> str:
    """sha256 over the relative names and bytes of every file under ``folder``, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()
