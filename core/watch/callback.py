"""Drift watch, the trainer's side: record each checkpoint as the trainer saves it, before its rotation deletes it.

One self-contained file: it imports the standard library and transformers only, so it runs in the trainer's own
environment whatever that pins (``workbench watch plugin --out FILE`` writes it out; in the workbench it is
``core.watch.callback``). Its cost in the training loop is the copy of the checkpoint's weights and a file check
per step; scoring runs in a process of ours beside the trainer (``workbench watch --run WATCH_DIR``, or the job
entry ``python -m core.jobs.worker watch --config WATCH_DIR/spawn.json``, which ``spawn=True`` starts).

TRL and every HF ``Trainer``::

    from cot_drift_watch import DriftWatchCallback          # the file written by `workbench watch plugin`
    trainer = GRPOTrainer(..., callbacks=[DriftWatchCallback("runs/grpo/watch", keep="adapters",
                                                               stop_on=["concept_surge"])])

ms-swift 4.x (its ``callbacks_map``; settings from ``COT_DRIFT_WATCH_*`` variables, see ``from_env``)::

    swift rlhf --rlhf_type grpo ... --external_plugins cot_drift_watch.py --callbacks cot_drift_watch

The watch folder: ``watch.json`` (what the callback was asked), ``checkpoints/checkpoint-N/`` (each recorded
checkpoint: its model files, ``trainer_state.json`` and ``record.json``), ``trainer.json`` (the trainer's state:
step, log history, running or ended), and what the scorer writes beside them (``alarms.jsonl``, ``status.json``,
the analysis). ``stop.json`` (the Watch page's Stop) or an alarm named in ``stop_on`` ends training at the next
step (``control.should_training_stop``).

``keep``: "adapters" keeps every LoRA adapter (copied: tens of MB at 7B) and releases full checkpoints once scored;
"all" keeps every checkpoint; "none" releases each once the next one is scored (a step with an alarm is kept).
A full checkpoint is hard-linked where the file system allows (no bytes copied; the link survives the
trainer's rotation), else copied.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

FORMAT = "cot-drift-watch"  # watch.json's "format" (the names below: core.watch.layout, kept equal by a test)
VERSION = 1
MARKER = "watch.json"
CHECKPOINTS = "checkpoints"
TRAINER = "trainer.json"
STOP = "stop.json"
ALARMS = "alarms.jsonl"
RECORD = "record.json"
SPAWN = "spawn.json"  # the config the spawned scorer runs from (its flags override it)
KEEP = ("adapters", "all", "none")
ENV_PREFIX = "COT_DRIFT_WATCH_"
# what a checkpoint folder holds that is not the model: the optimizer and the trainer's resume state
TRAINING_STATE = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth", "training_args.bin",
                  "optim_*.pt", "extra_state_*.pt", "model_world_size_*.pt", "*.distcp", "latest")


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


def checkpoint_kind(folder: Path) -> str | None:
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if (folder / "config.json").is_file():
        return "full"
    return None


def model_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder that make the model (weights, configs, tokenizer), not the resume state."""
    return sorted(f for f in Path(folder).iterdir()
                  if f.is_file() and not any(fnmatch.fnmatch(f.name, p) for p in TRAINING_STATE))


def recorded_name(step: int) -> str:
    return f"checkpoint-{step}"


def record(src: str | Path, watch_dir: str | Path, step: int, state: dict | None = None) -> Path:
    """Record checkpoint ``src`` (step ``step``) as ``watch_dir/checkpoints/checkpoint-<step>``: an adapter's files
    copied, a full model's hard-linked where the file system allows, else copied; ``state`` (the trainer's
    ``trainer_state.json`` content) written beside them when the folder has none. The folder appears whole (a
    rename) or not at all; a step already recorded is left as it is. Returns the recorded folder."""
    src, watch_dir = Path(src), Path(watch_dir)
    dest = watch_dir / CHECKPOINTS / recorded_name(step)
    if dest.is_dir():
        return dest
    kind = checkpoint_kind(src)
    if kind is None:
        raise FileNotFoundError(f"{src}: not a checkpoint (expected adapter_config.json or config.json)")
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started, how, size = time.monotonic(), "copy", 0
    try:
        for f in model_files(src):
            size += f.stat().st_size
            if kind == "full" and _link(f, tmp / f.name):
                how = "link"
            else:
                shutil.copy2(f, tmp / f.name)
        if state is not None and not (tmp / "trainer_state.json").is_file():
            write_json(tmp / "trainer_state.json", state)
        write_json(tmp / RECORD, {"step": step, "source": str(src.resolve()), "kind": kind, "how": how, "bytes": size,
                                  "seconds": round(time.monotonic() - started, 4), "recorded_at": time.time()})
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _link(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst)
        return True
    except OSError:  # another file system, or links not allowed: copied instead
        return False


def init_watch(watch_dir: str | Path, keep: str = "adapters", stop_on: list[str] | tuple = (), source: str = "") -> Path:
    """Create (or reopen) a watch folder and write what it was asked in ``watch.json``."""
    if keep not in KEEP:
        raise ValueError(f"keep: expected one of {KEEP}, got {keep!r}")
    folder = Path(watch_dir).expanduser().resolve()
    (folder / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    marker = read_json(folder / MARKER) or {}
    write_json(folder / MARKER, {**marker, "format": FORMAT, "version": VERSION, "keep": keep,
                                 "stop_on": list(stop_on), "source": source or marker.get("source", "")})
    return folder


def stop_reason(watch_dir: Path, stop_on: list[str] | tuple, seen: dict) -> str | None:
    """Why training should stop now, or None: ``stop.json`` (the page's Stop), or an alarm in ``alarms.jsonl`` whose
    rule is in ``stop_on``. Reads ``alarms.jsonl`` only when it has grown (``seen`` keeps its size)."""
    stop = read_json(watch_dir / STOP)
    if stop is not None:
        return f"stop asked ({stop.get('by', 'the Watch page')})"
    if not stop_on:
        return None
    try:
        size = (watch_dir / ALARMS).stat().st_size
    except OSError:
        return None
    if size == seen.get("size"):
        return None
    with open(watch_dir / ALARMS, encoding="utf-8") as f:
        f.seek(seen.get("size", 0))
        lines = f.read(size - seen.get("size", 0)).splitlines()
    seen["size"] = size
    for line in lines:
        try:
            alarm = json.loads(line)
        except ValueError:
            continue
        if isinstance(alarm, dict) and alarm.get("rule") in stop_on:
            return f"alarm {alarm['rule']} at step {alarm.get('step')}: {alarm.get('message', '')}"
    return None


class DriftWatchCallback(TrainerCallback):
    """Records every saved checkpoint into ``watch_dir`` (see the module docstring); stops training when asked.

    keep: "adapters" | "all" | "none" (what stays after scoring). stop_on: alarm rules that end training
    (``core.watch.alarms.RULES``: belief_fall, detrimental_rise, concept_surge, entropy_collapse, kl_jump,
    malformed). spawn: start the scorer beside the trainer (``python -m core.jobs.worker watch`` on the watch
    folder + ``scorer_args``, its flags; ``python``: the workbench's interpreter, default ``$WORKBENCH_PYTHON`` or
    this one). max_lag: if set, wait at
    each save while more than this many recorded checkpoints are not scored yet (off by default: never blocks)."""

    def __init__(self, watch_dir: str | Path, keep: str = "adapters", stop_on: list[str] | tuple = (),
                 spawn: bool = False, scorer_args: list[str] | tuple = (), python: str | None = None,
                 max_lag: int | None = None):
        self.watch_dir = init_watch(watch_dir, keep, stop_on, source="callback")
        self.keep, self.stop_on, self.max_lag = keep, list(stop_on), max_lag
        self.spawn, self.scorer_args = spawn, [str(a) for a in scorer_args]
        self.python = python or os.environ.get("WORKBENCH_PYTHON") or sys.executable
        self.scorer: subprocess.Popen | None = None
        self.stopped: str | None = None
        self._seen: dict = {}
        self.record_seconds: list[float] = []  # the time each recording took (its cost in the loop)

    @classmethod
    def from_env(cls, args=None) -> DriftWatchCallback:
        """Settings from ``COT_DRIFT_WATCH_DIR`` (default ``<output_dir>/drift-watch``), ``_KEEP``, ``_STOP_ON``
        (comma-separated rules), ``_SPAWN`` (scorer arguments, shell-quoted: spawns the scorer), ``_MAX_LAG``: for
        trainers that build the callback themselves (ms-swift's ``--callbacks``)."""
        import shlex

        env = {k[len(ENV_PREFIX):]: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
        out = getattr(args, "output_dir", None) or "."
        spawn = env.get("SPAWN")
        return cls(env.get("DIR") or os.path.join(out, "drift-watch"), keep=env.get("KEEP", "adapters"),
                   stop_on=[r for r in env.get("STOP_ON", "").split(",") if r.strip()], spawn=spawn is not None,
                   scorer_args=shlex.split(spawn or ""), max_lag=int(env["MAX_LAG"]) if env.get("MAX_LAG") else None)

    def _trainer_state(self, args, state, status: str, **extra) -> None:
        write_json(self.watch_dir / TRAINER, {
            "status": status, "pid": os.getpid(), "output_dir": str(Path(args.output_dir).resolve()),
            "global_step": state.global_step, "max_steps": state.max_steps, "log_history": state.log_history,
            "save_steps": getattr(args, "save_steps", None), "save_total_limit": getattr(args, "save_total_limit", None),
            "updated": time.time(), **extra})

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._trainer_state(args, state, "running")
            if self.spawn and self.scorer is None:
                self.scorer = spawn_scorer(self.watch_dir, self.scorer_args, self.python)
        return control

    def on_save(self, args, state, control, **kwargs):
        """The trainer has written ``checkpoint-<global_step>`` and rotated the older ones: record the new one."""
        if not state.is_world_process_zero:
            return control
        src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        started = time.monotonic()
        if src.is_dir() and checkpoint_kind(src):
            record(src, self.watch_dir, state.global_step, _state_dict(state))
        self.record_seconds.append(time.monotonic() - started)
        self._trainer_state(args, state, "running")
        if self.max_lag is not None:
            wait_for_scorer(self.watch_dir, self.max_lag)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped is None:
            self.stopped = stop_reason(self.watch_dir, self.stop_on, self._seen)
        if self.stopped is not None:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._trainer_state(args, state, "stopped" if self.stopped else "ended",
                                **({"stop_reason": self.stopped} if self.stopped else {}))
        return control


def _state_dict(state) -> dict:
    """The fields of ``trainer_state.json`` that readers use, for a checkpoint saved without one."""
    return {"global_step": state.global_step, "max_steps": state.max_steps, "log_history": state.log_history}


def spawn_scorer(watch_dir: Path, scorer_args: list[str], python: str) -> subprocess.Popen:
    """Start the scorer, the workbench's job entry ``python -m core.jobs.worker watch --config watch_dir/spawn.json
    ...`` (a watch config naming this folder; ``scorer_args``: its flags), in its own session (it finishes the queue
    when the trainer ends), its output in ``watch_dir/scorer.log``."""
    spawn = Path(watch_dir) / SPAWN
    write_json(spawn, {"run": str(Path(watch_dir).resolve())})
    log = open(Path(watch_dir) / "scorer.log", "ab")  # the child keeps it open
    cmd = [python, "-m", "core.jobs.worker", "watch", "--config", str(spawn), *scorer_args]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for_scorer(watch_dir: Path, max_lag: int, poll: float = 1.0, timeout: float | None = None) -> None:
    """Block while more than ``max_lag`` recorded checkpoints are not scored yet (the scorer's ``status.json``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        recorded = {p.name for p in (Path(watch_dir) / CHECKPOINTS).glob("checkpoint-*")}
        status = read_json(Path(watch_dir) / "status.json") or {}
        scored = {recorded_name(s) for s in status.get("scored", [])}
        if len(recorded - scored) <= max_lag or status.get("state") in ("failed", "done"):
            return
        if deadline is not None and time.monotonic() > deadline:
            return
        time.sleep(poll)


def _register_swift() -> None:
    """ms-swift 4.x: ``--callbacks cot_drift_watch`` looks the name up in ``swift.callbacks.callbacks_map``."""
    try:
        from swift.callbacks import callbacks_map
    except ImportError:  # not an ms-swift environment
        return
    callbacks_map["cot_drift_watch"] = SwiftDriftWatch


class SwiftDriftWatch(DriftWatchCallback):
    """The callback as ms-swift builds its callbacks (``cls(args, trainer)``), settings from the environment."""

    def __init__(self, args=None, trainer=None, *rest, **kwargs):
        made = DriftWatchCallback.from_env(args)
        self.__dict__.update(made.__dict__)


_register_swift()
