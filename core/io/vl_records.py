"""Trajectory records with images, as the field writes them, read into ``{id, prompt, completion, label,
image_refs}`` records for the Qwen-VL family's ``encode_vl`` (``core.models.families.qwen_vl.inputs``).

- plain: ``{"prompt": "... <image> ...", "completion": "...", "images": ["rel/or/abs.jpg"]}``
- ms-swift: ``{"messages": [system?, user, assistant], "images": [...], "rejected_messages": [...],
  "rejected_images": [...]}``; the rejected side becomes a second trajectory ``<id>:rejected`` (with
  ``rejected_images``, or the chosen side's images when it has none: a text counterfactual);
- CCF: items ``{"dicom_id", "report", "diagnose", "counterfact"?}`` with an image folder mapping
  ``dicom_id`` -> file (see ``core.io.images.image_index``); the prompt is the authors' question with its image.

A user turn that names images but has no ``<image>`` placeholder gets them at its start (as ms-swift
does); otherwise the placeholders must match the images one to one. Every image is checked here (exists,
size, readable header) so that a broken file is reported with its record before any model work starts.

    recs = read_vl_records("data/train.jsonl")                         # plain or ms-swift JSONL
    recs = read_ccf_records("ccf.json", image_folder="MIMIC-CXR/files") # CCF items + image folder
"""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import InputError
from core.io.images import (
    PLACEHOLDER,
    ImageLimits,
    ImageRef,
    ccf_image,
    check_image,
    check_placeholders,
    image_index,
    record_images,
)
from core.io.trajectories import json_lines, raw_records

CCF_PROMPT = "This is a patient's chest DR image <image>. Please help me determine the patient's disease."
ANSWER = "The disease of this patient is {}."


def _user_and_assistant(messages: object, where: str, field: str) -> tuple[str, str]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InputError(f"{where}, field '{field}': expected a list of {{role, content}} messages")
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    answers = [m.get("content") for m in messages if m.get("role") == "assistant"]
    if not users or not answers or not all(isinstance(t, str) and t.strip() for t in users[-1:] + answers[-1:]):
        raise InputError(f"{where}, field '{field}': expected a user turn and an assistant turn with text")
    return users[-1], answers[-1]


def _with_placeholders(prompt: str, refs: list[ImageRef], where: str) -> str:
    if refs and PLACEHOLDER not in prompt:
        return PLACEHOLDER * len(refs) + prompt  # ms-swift puts untagged images before the text
    check_placeholders(prompt, len(refs), where)
    return prompt


def _checked(refs: list[ImageRef], limits: ImageLimits) -> list[ImageRef]:
    for r in refs:
        check_image(r, limits)  # exists, within limits, a readable image: errors name record and path
    return refs


def _record(rid: str, prompt: str, completion: str, label: str | None, refs: list[ImageRef], where: str,
            limits: ImageLimits, field: str = "prompt") -> dict:
    return {"id": rid, "prompt": _with_placeholders(prompt, refs, f"{where}, field '{field}'"), "completion": completion,
            "label": label, "image_refs": _checked(refs, limits), "where": where}


def read_vl_records(path: str | Path, limits: ImageLimits | None = None) -> list[dict]:
    """Plain or ms-swift JSONL records with images (see module docstring); ``InputError`` names file,
    line, field and, for images, the path."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"{path}: trajectory file not found")
    limits = limits or ImageLimits()
    out, seen = [], set()
    for line, rec in raw_records(path):  # the one reader: JSONL, a JSON list (ms-swift's), parquet, a datasets folder
        where = f"{path}, {line}"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        rid = str(rec.get("id", line.replace(" ", "-")))
        if rid in seen:
            raise InputError(f"{where}: duplicate id {rid!r} (ids must be unique)")
        seen.add(rid)
        out += _parse(rec, rid, path, line, where, limits)
    if not out:
        raise InputError(f"{path}: no records (expected JSONL or a JSON list with prompt/completion or messages)")
    return out


def _parse(rec: dict, rid: str, path: Path, line: int, where: str, limits: ImageLimits) -> list[dict]:
    label = rec.get("label")
    images = record_images(rec, path, line, "images")
    if "messages" in rec:
        prompt, answer = _user_and_assistant(rec["messages"], where, "messages")
        out = [_record(rid, prompt, answer, label, images, where, limits, "messages")]
        if "rejected_messages" in rec:
            r_prompt, r_answer = _user_and_assistant(rec["rejected_messages"], where, "rejected_messages")
            r_images = record_images(rec, path, line, "rejected_images") or images
            out.append(_record(f"{rid}:rejected", r_prompt, r_answer, label, r_images, where, limits,
                               "rejected_messages"))
        return out
    for key in ("prompt", "completion"):
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise InputError(f"{where}: field '{key}' must be a non-empty string (or give 'messages')")
    return [_record(rid, rec["prompt"], rec["completion"], label, images, where, limits)]


def read_ccf_records(path: str | Path, image_folder: str | Path, limits: ImageLimits | None = None,
                     counterfactuals: bool = False) -> list[dict]:
    """CCF items (a JSON array or JSONL) with each study's image found by ``dicom_id`` in ``image_folder``:
    one trajectory per item (``<think> report </think> The disease of this patient is <diagnose>.``), and
    with ``counterfactuals`` one more per counterfactual disease (same image, counterfactual report)."""
    path = Path(path).expanduser().resolve()
    text = path.read_text(encoding="utf-8") if path.is_file() else None
    if text is None:
        raise InputError(f"{path}: CCF file not found")
    items = _ccf_items(text, path)
    index = image_index(image_folder)
    limits = limits or ImageLimits()
    out = []
    for no, item in enumerate(items):
        where = f"{path}, item {no}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected a JSON object")
        for key in ("report", "diagnose"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise InputError(f"{where}, field '{key}': expected a non-empty string")
        ref = ccf_image(item, index, path, no)
        rid = str(item.get("id", item["dicom_id"]))
        out.append(_record(rid, CCF_PROMPT, _completion(item["report"], item["diagnose"]), item["diagnose"],
                           [ref], where, limits))
        for disease, report in (item.get("counterfact") or {}).items() if counterfactuals else ():
            out.append(_record(f"{rid}:{disease}", CCF_PROMPT, _completion(report, disease), item["diagnose"],
                               [ref], where, limits))
    return out


def _completion(report: str, disease: str) -> str:
    return f"<think> {report.strip()} </think> {ANSWER.format(disease)}"


def _ccf_items(text: str, path: Path) -> list:
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    return [rec for _, rec in json_lines(path)]
