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
