"""Resuming a run safely: pick the last checkpoint that was saved whole, and trim the metrics past it.

    path, skipped = resumable_checkpoint(run_dir)     # skipped: ["checkpoint-30: trainer_state.json missing"]
    trim_metrics(run_dir / "metrics.jsonl", step=20)  # rows of steps 21.. were lost with the process

A trainer killed while saving leaves a ``checkpoint-N/`` with its adapter written and ``trainer_state.json``
missing, or a weights file cut short; resuming from it fails. Completeness is checked from the files alone:
``trainer_state.json`` parses with an integer ``global_step``, every ``*.safetensors`` header covers its
file, every torch pickle (``*.pt``, ``*.pth``, ``*.bin``) is a whole zip archive (torch >= 1.6 saves one;
its central directory is written last, so a cut file has none).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

_STEP = re.compile(r"^checkpoint-(\d+)$")


def incomplete_reason(folder: Path) -> str | None:
    """Why ``folder`` is not a whole HF Trainer checkpoint, or None when it is."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (OSError, ValueError, RecursionError) as e:
        return f"trainer_state.json is unreadable ({type(e).__name__})"
    if not isinstance(state, dict) or type(state.get("global_step")) is not int:
        return "trainer_state.json has no integer global_step"
    weights = list(folder.glob("*.safetensors"))
    if not weights and not list(folder.glob("*.bin")):
        return "no weights (*.safetensors or *.bin)"
    for f in sorted(weights):
        if (why := _safetensors_problem(f)) is not None:
            return f"{f.name} {why}"
    for f in sorted(p for ext in ("*.pt", "*.pth", "*.bin") for p in folder.glob(ext)):
        if not zipfile.is_zipfile(f):
            return f"{f.name} is cut short or not a torch archive"
    return None


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt"):
            return None
    except Exception as e:  # noqa: BLE001 - SafetensorError and OSError alike: the file is not whole
        return f"is unreadable ({str(e).splitlines()[0][:80]})"


def resumable_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest whole ``checkpoint-N`` directly in ``output_dir``, and one message per newer one skipped."""
    found = sorted((int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
                   if p.is_dir() and (m := _STEP.match(p.name)))
    skipped = []
    for _, path in reversed(found):
        why = incomplete_reason(path)
        if why is None:
            return path, skipped
        skipped.append(f"{path.name} skipped, cut off while saving ({why})")
    return None, skipped


def trim_metrics(path: Path, step: int) -> int:
    """Drop the rows of ``metrics.jsonl`` logged after ``step`` (the checkpoint a resume starts from): the
    resumed run logs those steps again, and their rows replace the lost ones. Returns the rows dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row_step = json.loads(line).get("step")
        except (ValueError, AttributeError, RecursionError):
            dropped += 1  # a line cut by the kill
            continue
        if isinstance(row_step, int) and row_step > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        from core.io.cache import atomic_write_text

        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped


def read_trainer_state(state_file: Path) -> tuple[int | None, list[dict]]:
    """``global_step`` and ``log_history`` of an HF ``trainer_state.json``; an ``InputError`` names the file and
    the field when a type is wrong (a string step, ``1e400``, a string history, a list at the top level)."""
    from core.errors import InputError
    from core.io import jsonsafe

    try:
        text = state_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{state_file}: cannot be read ({e})") from None
    state = jsonsafe.loads(text, str(state_file))
    if not isinstance(state, dict):
        raise InputError(f"{state_file}: expected a JSON object, got {type(state).__name__}")
    step = state.get("global_step")
    if step is not None and not _is_step(step):
        raise InputError(f"{state_file}, field 'global_step': expected a whole number >= 0, got {step!r}")
    history = state.get("log_history", [])
    if not isinstance(history, list):
        raise InputError(f"{state_file}, field 'log_history': expected a list of objects, got {type(history).__name__}")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise InputError(f"{state_file}, field 'log_history[{i}]': expected an object, got {type(entry).__name__}")
        if "step" in entry and not _is_step(entry["step"]):
            raise InputError(f"{state_file}, field 'log_history[{i}].step': expected a whole number >= 0, "
                             f"got {entry['step']!r}")
    return (None if step is None else int(step)), history


def _is_step(value: object) -> bool:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # below 2**63: a step is stored as SQLite's and parquet's 64-bit integer (100 digits overflowed after scoring)
    return math.isfinite(value) and 0 <= value < 2**63 and float(value).is_integer()
