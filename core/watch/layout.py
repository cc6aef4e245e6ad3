"""The watch folder's layout and its small JSON files, light to import (no torch, no transformers): the page reads
watches through it. ``core.watch.callback`` keeps its own copy of these names (it must stand alone in a trainer's
environment); a test keeps the two equal.

    <watch>/watch.json        what the callback (or the folder follower) was asked: format, keep, stop_on, source
    <watch>/checkpoints/      checkpoint-N/ as recorded (model files, trainer_state.json, record.json)
    <watch>/trainer.json      the trainer's state: status, global_step, log_history (the callback writes it)
    <watch>/stop.json         Stop asked (the Watch page); the callback ends training at its next step
    <watch>/alarms.jsonl      alarms, one per line (the scorer); an alarm in the callback's stop_on ends training
    <watch>/status.json       the scorer's state: scoring, scored, queued, released, missed
    <watch>/config.json       the scorer's WatchConfig; probe.jsonl: its fixed probe set; kept.json: steps kept
    <watch>/steps/, analysis/ the scored steps and the analysis built from them (core.watch.store)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FORMAT = "cot-drift-watch"
MARKER = "watch.json"
CHECKPOINTS = "checkpoints"
TRAINER = "trainer.json"
STOP = "stop.json"
ALARMS = "alarms.jsonl"
RECORD = "record.json"
SPAWN = "spawn.json"
STATUS = "status.json"
CONFIG = "config.json"
PROBE = "probe.jsonl"
KEPT = "kept.json"
KEEP = ("adapters", "all", "none")


def write_json(path: Path, data: dict) -> None:
    """``data`` as JSON at ``path``, atomically (a reader sees the old file or the new one, never a part)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


NUMBER = (int, float)
# what the Watch page reads of each small file, by field and kind: a value of another kind is left out and named
# (a hand-edited or foreign file must not stop the page with a traceback)
TRAINER_FIELDS = {"status": str, "global_step": int, "max_steps": int, "log_history": list}
STATUS_FIELDS = {"state": str, "scoring": dict, "pid": int, "error": str}
RECORD_FIELDS = {"step": int, "how": str, "bytes": NUMBER, "seconds": NUMBER, "recorded_at": NUMBER}
ALARM_FIELDS = {"step": int, "rule": str, "message": str, "evidence": dict}
STOP_FIELDS = {"by": str}
STATE_FIELDS = {"log_history": list}  # a checkpoint's trainer_state.json
_KINDS = {str: "a string", int: "an integer", NUMBER: "a number", list: "a list", dict: "an object"}


def checked(data: dict | None, fields: dict, where: str, problems: list[str]) -> dict:
    """``data`` without the fields whose value is not of its kind, each named in ``problems`` (file and field), and
    without those that are null."""
    out = dict(data or {})
    for key, kind in fields.items():
        value = out.get(key)
        if value is None:  # absent, or null: as if absent (callers' defaults apply; a null is no value of any kind)
            out.pop(key, None)
            continue
        good = (isinstance(value, kind) and not isinstance(value, bool)
                and (kind is not NUMBER or value == value and abs(value) != float("inf")))
        if not good:
            problems.append(f"{where}: field {key!r}: expected {_KINDS[kind]}, got {json.dumps(value)[:60]}; left out")
            out.pop(key)
    return out


def read_checked(path: Path, fields: dict, problems: list[str], where: str = "") -> dict:
    """``read_json`` of ``path`` through ``checked``; a file that is there but not a JSON object is named too."""
    data = read_json(path)
    if data is None and Path(path).is_file():
        problems.append(f"{path}: not a JSON object; left out")
    return checked(data, fields, where or str(path), problems)


def is_watch_folder(path: str | Path) -> bool:
    return (read_json(Path(path) / MARKER) or {}).get("format") == FORMAT


def recorded_name(step: int) -> str:
    return f"checkpoint-{step}"


def read_alarms(out: str | Path) -> list[dict]:
    """The alarms raised so far (``alarms.jsonl``), in order; unreadable lines skipped."""
    path = Path(out) / ALARMS
    if not path.is_file():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            a = json.loads(line)
        except ValueError:
            continue
        if isinstance(a, dict):
            found.append(a)
    return found


def alive(pid) -> bool:
    """Whether process ``pid`` runs on this machine (another user's counts; a pid no process can have does not)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (ProcessLookupError, OverflowError, OSError):
        return False
    return True


def trainer_gone(trainer: dict) -> bool:
    """``trainer.json`` says the trainer runs, but its process is gone from this machine (killed, out of memory: it
    could not say it stopped); judged on the trainer's own machine only (a pid means nothing on another)."""
    import socket

    return (trainer.get("status") == "running" and trainer.get("host") == socket.gethostname()
            and "pid" in trainer and not alive(trainer["pid"]))
