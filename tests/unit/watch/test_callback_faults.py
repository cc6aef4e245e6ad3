"""The callback inside a user's training loop never ends or stalls the training on the watch's account: a full disk, a
damaged or half-written alarms file, an earlier run's Stop and alarms, a scorer that died or was cancelled (with
``max_lag``), a training process that exits without ``on_train_end``; and in a distributed run every process stops
at the same step (two processes over gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from core.watch import callback


def _adapter(folder):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def _run(tmp_path, **kw):
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    args = SimpleNamespace(output_dir=str(out), save_steps=1, save_total_limit=1, world_size=1, device=None)
    state = TrainerState()
    state.global_step, state.max_steps = 1, 10
    return callback.DriftWatchCallback(tmp_path / "watch", **kw), args, state, TrainerControl()


def _alarm(watch, rule="concept_surge", step=2):
    with open(watch / "alarms.jsonl", "a") as f:
        f.write(json.dumps({"rule": rule, "step": step, "message": "m"}) + "\n")


def test_a_full_disk_while_recording_is_said_and_training_goes_on(tmp_path, monkeypatch, caplog):
    cb, args, state, control = _run(tmp_path)
    cb.on_train_begin(args, state, control)
    _adapter(tmp_path / "run" / "checkpoint-1")

    def full(a, b, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(callback.shutil, "copy2", full)
    assert cb.on_save(args, state, control) is control  # no exception into the trainer
    assert cb.on_save(args, state, control) is control
    assert cb.problems == ["recording checkpoint-1: OSError: [Errno 28] No space left on device"]  # said once
    assert "training goes on" in caplog.text
    assert json.loads((cb.watch_dir / "trainer.json").read_text())["status"] == "running"
    monkeypatch.setattr(callback, "write_json", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    cb.on_train_end(args, state, control)  # trainer.json cannot be written either: the training still ends
    assert any(p.startswith("writing trainer.json: OSError") for p in cb.problems)


def test_a_save_it_cannot_record_is_said_once(tmp_path, caplog):
    cb, args, state, control = _run(tmp_path)
    cb.on_train_begin(args, state, control)
    (tmp_path / "run" / "checkpoint-1").mkdir()
    (tmp_path / "run" / "checkpoint-1" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"shard")
    cb.on_save(args, state, control)
    cb.on_save(args, state, control)
    state.global_step = 2  # saved somewhere else (a hyperparameter search's run-N/)
    cb.on_save(args, state, control)
    assert [p.split(": ", 1)[1] for p in cb.problems] == [
        "no model in it (expected adapter_config.json or config.json); not recorded",
        "not found where the trainer's output_dir says; not recorded"]
    assert caplog.text.count("not recorded") == 2


def test_damaged_and_half_written_alarm_lines_neither_raise_nor_get_lost(tmp_path):
    cb, args, state, control = _run(tmp_path, stop_on=["concept_surge"])
    cb.on_train_begin(args, state, control)
    watch = cb.watch_dir
    (watch / "alarms.jsonl").write_bytes(b"\xff\xfe not utf-8 \xc3\n")
    assert not cb.on_step_end(args, state, control).should_training_stop
    line = json.dumps({"rule": "concept_surge", "step": 4, "message": "opacity → Lung"}).encode()
    with open(watch / "alarms.jsonl", "ab") as f:
        f.write(line[:20])  # the scorer is mid-write: not read yet, not skipped either
    assert not cb.on_step_end(args, state, control).should_training_stop
    with open(watch / "alarms.jsonl", "ab") as f:
        f.write(line[20:] + b"\n")
    assert cb.on_step_end(args, state, control).should_training_stop
    assert cb.stopped == "alarm concept_surge at step 4: opacity → Lung"


def test_an_earlier_runs_stop_and_alarms_do_not_stop_a_resumed_run(tmp_path):
    cb, args, state, control = _run(tmp_path, stop_on=["concept_surge"])
    watch = cb.watch_dir
    _alarm(watch)
    (watch / "stop.json").write_text(json.dumps({"by": "the Watch page", "time": time.time() - 60}))
    cb.on_train_begin(args, state, control)  # the resume
    assert not cb.on_step_end(args, state, control).should_training_stop
    _alarm(watch, "kl_jump")  # a rule it does not stop on
    assert not cb.on_step_end(args, state, control).should_training_stop
    _alarm(watch, step=9)  # this run's own alarm
    assert cb.on_step_end(args, state, control).should_training_stop and "step 9" in cb.stopped
    again, args, state, control = _run(tmp_path)
    again.on_train_begin(args, state, control)
    (watch / "stop.json").write_text(json.dumps({"by": "the Watch page", "time": time.time() + 1}))
    assert again.on_step_end(args, state, control).should_training_stop  # a Stop pressed during this run


def _status(watch, **status):
    (watch / "status.json").write_text(json.dumps({"host": socket.gethostname(), **status}))


def test_max_lag_waits_only_while_a_scorer_runs(tmp_path):
    watch = callback.init_watch(tmp_path / "watch")
    for step in (1, 2, 3):
        callback.record(_adapter(tmp_path / "run" / f"checkpoint-{step}"), watch, step)
    fast = {"poll": 0.01, "timeout": 5}
    _status(watch, state="cancelled", pid=os.getpid(), scored=[1])  # stopped from the page (it waited for ever)
    assert callback.wait_for_scorer(watch, 0, **fast) == "the scorer is cancelled"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _status(watch, state="scoring", pid=dead.pid, scored=[1])  # killed: its state stays "scoring"
    assert callback.wait_for_scorer(watch, 0, **fast) == "the scorer's process is gone"
    (watch / "status.json").unlink()
    assert callback.wait_for_scorer(watch, 0, grace=0.2, **fast) == "no scorer reported within 0 s"
    assert callback.wait_for_scorer(watch, 0, scorer=dead, **fast) == "the scorer exited (0)"  # spawned, died early
    _status(watch, state="scoring", pid=os.getpid(), scored=[1, 2, 3])
    assert callback.wait_for_scorer(watch, 0, **fast) == "caught up"
    _status(watch, state="scoring", pid=os.getpid(), scored="all")  # not a list: nothing scored, no TypeError
    assert callback.wait_for_scorer(watch, 0, poll=0.01, timeout=0.1) == "timed out"  # a live scorer: waited


def test_a_training_process_that_exits_early_says_it_stopped(tmp_path):
    """An exception or an interrupt skips on_train_end: at exit the callback says the run stopped, so a scorer beside
    it ends; a killed trainer (no exit handler) is judged by its pid, by the scorer and the page."""
    from core.watch import views

    cb, args, state, control = _run(tmp_path)
    cb.on_train_begin(args, state, control)
    cb._exited()
    trainer = json.loads((cb.watch_dir / "trainer.json").read_text())
    assert trainer["status"] == "stopped" and "exited before training ended" in trainer["stop_reason"]
    ended, args, state, control = _run(tmp_path)
    ended.on_train_begin(args, state, control)
    ended.on_train_end(args, state, control)
    ended._exited()  # a run that ended: left as it said
    assert json.loads((cb.watch_dir / "trainer.json").read_text())["status"] == "ended"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trainer = {**trainer, "status": "running", "pid": dead.pid, "host": socket.gethostname()}
    (cb.watch_dir / "trainer.json").write_text(json.dumps(trainer))
    assert views.WatchView.open(cb.watch_dir).trainer_state == "stopped"
    (cb.watch_dir / "trainer.json").write_text(json.dumps({**trainer, "host": "another-machine"}))
    assert views.WatchView.open(cb.watch_dir).trainer_state == "running"  # its pid means nothing here


DISTRIBUTED = r"""
import json, os, sys
from types import SimpleNamespace
import torch.distributed as dist
from transformers import TrainerControl, TrainerState
from core.watch import callback

rank, watch = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", rank=rank, world_size=2)
cb = callback.DriftWatchCallback(watch, stop_on=["concept_surge"])
args = SimpleNamespace(output_dir=watch, world_size=2, device=None)
state = TrainerState()
state.is_world_process_zero = rank == 0
cb.on_train_begin(args, state, TrainerControl())
stops = []
for step in range(1, 6):
    if rank == 0 and step == 3:  # only the first process' watch folder shows the alarm (another node's would not)
        with open(os.path.join(watch, "alarms.jsonl"), "a") as f:
            f.write(json.dumps({"rule": "concept_surge", "step": 3, "message": "m"}) + "\n")
    stops.append(cb.on_step_end(args, state, TrainerControl()).should_training_stop)
print(json.dumps({"rank": rank, "stops": stops, "reason": cb.stopped}))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_every_process_of_a_distributed_run_stops_at_the_same_step(tmp_path, free_port):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port)}
    procs = [subprocess.Popen([sys.executable, "-c", DISTRIBUTED, str(rank), str(tmp_path / f"watch-{rank}")],
                              cwd=callback.Path(__file__).resolve().parents[3], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    got = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert [g["stops"] for g in got] == [[False, False, True, True, True]] * 2
    assert got[0]["reason"].startswith("alarm concept_surge at step 3") and got[1]["reason"] is not None
