"""Drift watch, the trainer's side: record each checkpoint as the trainer saves it, before its rotation deletes it.

One self-contained file: it imports the standard library and transformers only, so it runs in the trainer's own
environment whatever that pins (``workbench watch plugin --out FILE`` writes it out; in the workbench it is
``core.watch.callback``). Its cost in the training loop is the copy of the checkpoint's weights and a file check
per step (in a distributed run, on the first process, and one tiny all-gather of its stop decision); nothing that
goes wrong on the watch's side stops the training (it is logged once); scoring runs in a process of ours beside the trainer (``workbench watch --run WATCH_DIR``, or the job
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

import atexit
import fnmatch
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
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
LIVE = ("starting", "waiting", "scoring")  # the scorer's states while it runs (status.json)
log = logging.getLogger("cot_drift_watch")
ENV_PREFIX = "COT_DRIFT_WATCH_"
# what a checkpoint folder holds that is not the model: the optimizer and the trainer's resume state
TRAINING_STATE = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth", "training_args.bin",
                  "optim_*.pt", "extra_state_*.pt", "model_world_size_*.pt", "*.distcp", "latest")


def write_json(path: Path, data: dict) -> None:
    """``data`` as JSON at ``path``, atomically (a reader sees the old file or the new one, never a part)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # unique across hosts too
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


def stop_reason(watch_dir: Path, stop_on: list[str] | tuple, seen: dict, since: float | None = None) -> str | None:
    """Why training should stop now, or None: ``stop.json`` (the page's Stop; one written before ``since``, an
    earlier run's, is not this run's), or an alarm in ``alarms.jsonl`` whose rule is in ``stop_on``. Reads the
    alarms' file only when it has grown (``seen["size"]``: the bytes read so far, up to the last whole line; a line
    being written is read when it ends)."""
    stop = read_json(watch_dir / STOP)
    if stop is not None and not (since is not None and _written(watch_dir / STOP, stop) < since):
        return f"stop asked ({stop.get('by', 'the Watch page')})"
    if not stop_on:
        return None
    try:
        size = (watch_dir / ALARMS).stat().st_size
        start = seen.get("size", 0) if seen.get("size", 0) <= size else 0  # a file replaced by a shorter one: anew
        if size == start:
            return None
        with open(watch_dir / ALARMS, "rb") as f:
            f.seek(start)
            chunk = f.read(size - start)
    except OSError:
        return None
    end = chunk.rfind(b"\n")
    if end < 0:  # no whole line yet
        return None
    seen["size"] = start + end + 1
    for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
        try:
            alarm = json.loads(line)
        except ValueError:
            continue
        if isinstance(alarm, dict) and alarm.get("rule") in stop_on:
            return f"alarm {alarm['rule']} at step {alarm.get('step')}: {alarm.get('message', '')}"
    return None


def _written(path: Path, data: dict) -> float:
    """When ``stop.json`` was written: its "time", else the file's modification time."""
    t = data.get("time")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return float(t)
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def skip_alarms(watch_dir: Path, seen: dict) -> None:
    """Alarms already in ``alarms.jsonl`` are an earlier run's: ``stop_reason`` reads only those written after."""
    try:
        seen["size"] = (Path(watch_dir) / ALARMS).stat().st_size
    except OSError:
        seen["size"] = 0


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
        self._began: float | None = None
        self._status: str | None = None  # what trainer.json says now (written by this process)
        self._args = self._state = None
        self._at_exit = False
        self.problems: list[str] = []  # what went wrong in the watch, each said once; training goes on
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

    def _guard(self, what: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``; an error is the watch's, never the training's: logged once per kind, training goes on
        (a full disk while copying a checkpoint, a file the scorer is writing, a folder gone)."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - nothing of the watch may stop the user's training
            self._say(f"{what}: {type(e).__name__}: {e}")
            return None

    def _say(self, said: str) -> None:
        if said not in self.problems:
            self.problems.append(said)
            log.warning("drift watch (%s): %s; training goes on", self.watch_dir, said)

    def _trainer_state(self, args, state, status: str, **extra) -> None:
        write_json(self.watch_dir / TRAINER, {
            "status": status, "pid": os.getpid(), "host": socket.gethostname(),
            "output_dir": str(Path(args.output_dir).resolve()),
            "global_step": state.global_step, "max_steps": state.max_steps, "log_history": state.log_history,
            "save_steps": getattr(args, "save_steps", None), "save_total_limit": getattr(args, "save_total_limit", None),
            "updated": time.time(), **extra})
        self._status = status

    def on_train_begin(self, args, state, control, **kwargs):
        self._began = time.time()
        skip_alarms(self.watch_dir, self._seen)  # an earlier run's alarms (a resume) do not stop this one
        if state.is_world_process_zero:
            self._args, self._state = args, state
            self._guard("writing trainer.json", self._trainer_state, args, state, "running")
            if not self._at_exit:
                atexit.register(self._exited)
                self._at_exit = True
            if self.spawn and self.scorer is None:
                self.scorer = self._guard("starting the scorer", spawn_scorer, self.watch_dir, self.scorer_args,
                                          self.python)
        return control

    def on_save(self, args, state, control, **kwargs):
        """The trainer has written ``checkpoint-<global_step>`` and rotated the older ones: record the new one."""
        if not state.is_world_process_zero:
            return control
        src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        started = time.monotonic()
        if src.is_dir() and checkpoint_kind(src):
            self._guard(f"recording {src.name}", record, src, self.watch_dir, state.global_step, _state_dict(state))
        elif src.is_dir():  # e.g. DeepSpeed ZeRO-3 without its weights gathered (stage3_gather_16bit_weights_on_model_save)
            self._say(f"{src}: no model in it (expected adapter_config.json or config.json); not recorded")
        else:  # e.g. a hyperparameter search saves under run-N/
            self._say(f"{src}: not found where the trainer's output_dir says; not recorded")
        self.record_seconds.append(time.monotonic() - started)
        self._guard("writing trainer.json", self._trainer_state, args, state, "running")
        if self.max_lag is not None:
            self._guard("waiting for the scorer", wait_for_scorer, self.watch_dir, self.max_lag, 1.0, None,
                        self.scorer)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped is None:
            mine = self._guard("reading stop.json and alarms.jsonl", stop_reason, self.watch_dir, self.stop_on,
                               self._seen, self._began) if state.is_world_process_zero else None
            if getattr(args, "world_size", 1) > 1:  # one decision for every process: the first one's
                try:
                    mine = shared_stop(mine, args)
                except Exception as e:  # noqa: BLE001 - no process group (each process decides alone, as before)
                    self._guard("sharing the stop decision", _raise, e)
            self.stopped = mine
            if mine is not None:
                log.warning("drift watch (%s): training stops: %s", self.watch_dir, mine)
        if self.stopped is not None:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._guard("writing trainer.json", self._trainer_state, args, state,
                        "stopped" if self.stopped else "ended", **({"stop_reason": self.stopped} if self.stopped else {}))
        return control

    def _exited(self) -> None:
        """At the training process' exit: a run that never reached ``on_train_end`` (an error, an interrupt) is
        said to have stopped, so that a scorer beside it finishes its queue and ends instead of waiting forever."""
        if self._status == "running" and self._args is not None:
            self._guard("writing trainer.json", self._trainer_state, self._args, self._state, "stopped",
                        stop_reason="the training process exited before training ended (an error or an interrupt)")


def shared_stop(reason: str | None, args) -> str | None:
    """The first process' stop decision, for every process of a distributed run (each must stop at the same step:
    one that stops alone leaves the others waiting in a collective): an all-gather of one number a step."""
    from transformers.trainer_pt_utils import distributed_broadcast_scalars

    flags = distributed_broadcast_scalars([1.0 if reason else 0.0], device=getattr(args, "device", None))
    if float(flags[0]) > 0:
        return reason or "stop asked (the first process' watch)"
    return None


def _raise(e: Exception) -> None:
    raise e


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


def wait_for_scorer(watch_dir: Path, max_lag: int, poll: float = 1.0, timeout: float | None = None,
                    scorer: subprocess.Popen | None = None, grace: float = 300.0) -> str:
    """Block while more than ``max_lag`` recorded checkpoints are not scored yet (the scorer's ``status.json``),
    and only while a scorer runs: not once it has ended (done, failed, cancelled), its process is gone (killed;
    on this machine), the spawned ``scorer`` exited, or none has reported within ``grace`` seconds. Returns why
    it stopped waiting."""
    started = time.monotonic()
    while True:
        recorded = {p.name for p in (Path(watch_dir) / CHECKPOINTS).glob("checkpoint-*")}
        status = read_json(Path(watch_dir) / "status.json") or {}
        listed = status.get("scored")
        scored = {recorded_name(s) for s in (listed if isinstance(listed, list) else []) if isinstance(s, int)}
        if len(recorded - scored) <= max_lag:
            return "caught up"
        state = status.get("state")
        if scorer is not None and scorer.poll() is not None:
            return f"the scorer exited ({scorer.returncode})"
        if state is None:
            if time.monotonic() - started > grace:
                return f"no scorer reported within {grace:.0f} s"
        elif state not in LIVE:
            return f"the scorer is {state}"
        elif status.get("host", socket.gethostname()) == socket.gethostname() and not _running(status.get("pid")):
            return "the scorer's process is gone"
        if timeout is not None and time.monotonic() - started > timeout:
            return "timed out"
        time.sleep(poll)


def _running(pid) -> bool:
    """Whether a process ``pid`` runs on this machine (one of another user's counts)."""
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        return True
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False


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
