"""Follow a trainer's output folder (any trainer, no callback): take each checkpoint once it is complete.

Layouts: TRL / HF Trainer ``checkpoint-N/`` and ms-swift ``vN-DATE/checkpoint-N/`` (complete once
``trainer_state.json`` is written: the Trainer writes it after the weights), verl ``global_step_N/actor/`` with the
model as ``huggingface/`` (``checkpoint.save_contents`` including ``hf_model``) or a LoRA adapter as
``lora_adapter/`` (complete once ``latest_checkpointed_iteration.txt`` names step N or a later one: verl writes it
after every rank's files), and anything else holding ``checkpoint-N/`` once its files have not changed for
``settle`` seconds. A complete checkpoint is recorded into the watch folder as the callback records one
(``core.watch.callback.record``: adapters copied, full models hard-linked), before the trainer's rotation can
delete it; one deleted before it could be recorded is named in ``missed``.

    follower = Follower(run_dir, watch_dir, settle=5.0)
    follower.poll()     # [recorded folders], this call
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.watch import callback

_TRAINER = re.compile(r"checkpoint-(\d+)$")
_VERL = re.compile(r"global_step_(\d+)$")
VERL_TRACKER = "latest_checkpointed_iteration.txt"


@dataclass
class Candidate:
    step: int
    folder: Path  # the model or adapter folder to record
    layout: str  # "trainer" | "verl"
    complete: bool


def candidates(run_dir: Path) -> list[Candidate]:
    """The checkpoints under ``run_dir`` (depth <= 3), by step; ``complete`` from each layout's completion mark."""
    found: dict[int, Candidate] = {}
    trainer = [p for p in [*run_dir.glob("checkpoint-*"), *run_dir.glob("*/checkpoint-*"),
                           *run_dir.glob("*/*/checkpoint-*")] if _TRAINER.search(p.name) and p.is_dir()]
    for path in _newest_run(trainer):
        step = int(_TRAINER.search(path.name).group(1))
        found.setdefault(step, Candidate(step, path, "trainer", (path / "trainer_state.json").is_file()))
    for path in [*run_dir.glob("global_step_*"), *run_dir.glob("*/global_step_*"), *run_dir.glob("*/*/global_step_*")]:
        m = _VERL.search(path.name)
        if m and path.is_dir():
            step = int(m.group(1))
            model = _verl_model(path / "actor")
            if model is not None:
                found.setdefault(step, Candidate(step, model, "verl", _verl_done(path.parent, step)))
    return [found[s] for s in sorted(found)]


def _newest_run(paths: list[Path]) -> list[Path]:
    """The checkpoints of the newest run where several sit side by side (ms-swift's ``v0-DATE/``, ``v1-DATE/``, ... in
    one output folder: step numbers start again in each, and an older run's checkpoint-N is not this one's)."""
    runs: dict[Path, list[Path]] = {}
    for p in paths:
        runs.setdefault(p.parent, []).append(p)
    if len(runs) <= 1:
        return paths

    def newest(folder: Path) -> float:
        times = []
        for p in runs[folder]:
            try:
                times.append(p.stat().st_mtime)
            except OSError:
                pass
        return max(times, default=0.0)

    return runs[max(runs, key=newest)]


def _verl_model(actor: Path) -> Path | None:
    """verl's loadable model inside ``global_step_N/actor/``: the LoRA adapter, else the HF model (None: shards only)."""
    for sub in ("lora_adapter", "huggingface"):
        folder = actor / sub
        if callback.checkpoint_kind(folder) == "adapter" or (
                sub == "huggingface" and (folder / "config.json").is_file() and _has_weights(folder)):
            return folder
    return None


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _verl_done(root: Path, step: int) -> bool:
    try:
        return int((root / VERL_TRACKER).read_text().strip()) >= step
    except (OSError, ValueError):
        return False


@dataclass
class Follower:
    run_dir: Path
    watch_dir: Path
    settle: float = 5.0
    missed: list[dict] = field(default_factory=list)  # checkpoints deleted before they could be recorded
    _sizes: dict = field(default_factory=dict)  # folder -> (files' sizes and mtimes, first seen unchanged at)

    def __post_init__(self):
        self.run_dir, self.watch_dir = Path(self.run_dir), Path(self.watch_dir)
        callback.init_watch(self.watch_dir, source=f"folder {self.run_dir}")

    def poll(self) -> list[Path]:
        """Record every complete checkpoint not recorded yet; returns the folders recorded by this call."""
        done = []
        try:
            found = candidates(self.run_dir)
        except OSError:  # a folder rotated away while it was listed (pathlib's glob raises): next poll
            return done
        for c in found:
            dest = self.watch_dir / callback.CHECKPOINTS / callback.recorded_name(c.step)
            if dest.is_dir() or not (c.complete or self._settled(c.folder)):
                continue
            try:
                done.append(callback.record(c.folder, self.watch_dir, c.step, _state_of(c)))
            except (FileNotFoundError, OSError) as e:  # rotated away while it was copied, or no model in it
                if all(m["step"] != c.step for m in self.missed):  # named once, however often it is tried
                    self.missed.append({"step": c.step, "folder": str(c.folder), "reason": str(e)})
        return done

    def _settled(self, folder: Path) -> bool:
        """Whether ``folder``'s files have not changed for ``settle`` seconds (a trainer without a completion mark)."""
        try:
            sig = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()))
        except OSError:
            return False
        if not sig or callback.checkpoint_kind(folder) is None:
            return False
        seen = self._sizes.get(folder)
        now = time.monotonic()
        if seen is None or seen[0] != sig:
            self._sizes[folder] = (sig, now)
            return self.settle == 0
        return now - seen[1] >= self.settle


def _state_of(c: Candidate) -> dict | None:
    """A ``trainer_state.json`` for a checkpoint that has none (verl): its step, so the series orders it."""
    if (c.folder / "trainer_state.json").is_file():
        return None
    return {"global_step": c.step, "log_history": []}
