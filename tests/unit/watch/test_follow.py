"""The folder follower: any trainer's output folder, each checkpoint taken once complete (TRL, ms-swift, verl)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from core.watch import follow, scorer
from core.watch.config import WatchConfig


def test_a_trl_folder_is_followed_and_its_steps_scored(foreign_run, tmp_path):
    f = follow.Follower(foreign_run["run"], tmp_path / "watch", settle=0)
    got = f.poll()
    assert [p.name for p in got] == ["checkpoint-2", "checkpoint-4"] and f.poll() == []
    state = json.loads((got[1] / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["log_history"]
    cfg = WatchConfig(run=str(foreign_run["run"]), out=str(tmp_path / "watch"), base=str(foreign_run["base"]),
                      data=str(foreign_run["heldout"]), limit=4, decode=0, once=True, batch_size=4)
    assert scorer.run(cfg) == 2  # a conversational probe set through the chat template, labels from the answers
    view = __import__("core.watch.views", fromlist=["x"]).WatchView.open(tmp_path / "watch")
    assert [s["step"] for s in view.steps] == [2, 4] and not view.has_callback and view.trainer_state == "unknown"
    assert view.log_history()["step"].max() == 4  # the trainer's log, from the newest recorded checkpoint
    assert list(foreign_run["run"].iterdir())  # the trainer's folder is never written
    assert not (foreign_run["run"] / "watch.json").exists()


def test_an_ms_swift_folder_is_followed_without_its_merged_copy(foreign_run, tmp_path):
    f = follow.Follower(foreign_run["swift"], tmp_path / "watch", settle=0)
    assert [p.name for p in f.poll()] == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((tmp_path / "watch" / "checkpoints" / "checkpoint-4" / "record.json").read_text())["kind"] == "adapter"


def test_an_incomplete_checkpoint_waits_for_its_mark_or_for_its_files_to_settle(foreign_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(foreign_run["run"] / "checkpoint-2", run / "checkpoint-2")
    state = (run / "checkpoint-2" / "trainer_state.json").read_text()
    (run / "checkpoint-2" / "trainer_state.json").unlink()  # the trainer is still writing it
    f = follow.Follower(run, tmp_path / "watch", settle=3600)
    assert f.poll() == [] and f.poll() == []  # no mark, files not settled for an hour
    (run / "checkpoint-2" / "trainer_state.json").write_text(state)
    assert [p.name for p in f.poll()] == ["checkpoint-2"]
    other = tmp_path / "plain"
    shutil.copytree(foreign_run["run"] / "checkpoint-4", other / "checkpoint-4", ignore=shutil.ignore_patterns("trainer_state.json"))
    g = follow.Follower(other, tmp_path / "watch2", settle=0.2)
    assert g.poll() == []
    time.sleep(0.3)
    assert [p.name for p in g.poll()] == ["checkpoint-4"]  # unchanged for 0.2 s since the first look


def _verl_step(root, step: int, model_dir, adapter_dir=None, world_size: int = 1) -> None:
    """``global_step_N/actor/`` as verl's FSDP checkpoint manager writes it: per-rank model, optimizer and extra
    state shards, ``fsdp_config.json``, ``huggingface/`` (config and tokenizer; the full model with save_contents
    hf_model), a LoRA run's ``lora_adapter/``; then the tracker file once every rank is done."""
    actor = root / f"global_step_{step}" / "actor"
    hf = actor / "huggingface"
    hf.mkdir(parents=True)
    for rank in range(world_size):
        torch.save({"w": torch.zeros(2)}, actor / f"model_world_size_{world_size}_rank_{rank}.pt")
        torch.save({"state": {}}, actor / f"optim_world_size_{world_size}_rank_{rank}.pt")
        torch.save({"lr_scheduler": None, "rng": None}, actor / f"extra_state_world_size_{world_size}_rank_{rank}.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 1, "world_size": world_size}, indent=4))
    for f in model_dir.iterdir():
        if f.is_file() and (f.suffix == ".json" or f.name.startswith("tokenizer") or adapter_dir is None):
            shutil.copy2(f, hf / f.name)
    if adapter_dir is not None:
        shutil.copytree(adapter_dir, actor / "lora_adapter", ignore=shutil.ignore_patterns("trainer_state.json"))


def test_a_verl_folder_is_followed_once_its_tracker_names_the_step(foreign_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpts = tmp_path / "checkpoints" / "grpo-project" / "qwen-exp"
    for step in (2, 4):  # LoRA runs: the adapter in lora_adapter/
        _verl_step(ckpts, step, foreign_run["base"], foreign_run["run"] / f"checkpoint-{step}")
    merged = tmp_path / "merged"  # a full-weights run: the model in huggingface/
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(foreign_run["base"]),
                              foreign_run["run"] / "checkpoint-4").merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(foreign_run["base"]).save_pretrained(merged)
    full = tmp_path / "full-run"
    _verl_step(full, 6, merged)
    f = follow.Follower(ckpts.parent.parent, tmp_path / "watch", settle=3600)
    assert f.poll() == []  # no tracker yet: verl may still be writing a rank's files
    (ckpts / follow.VERL_TRACKER).write_text("2")
    assert [p.name for p in f.poll()] == ["checkpoint-2"]
    (ckpts / follow.VERL_TRACKER).write_text("4")
    assert [p.name for p in f.poll()] == ["checkpoint-4"]
    got = tmp_path / "watch" / "checkpoints"
    names = {p.name for p in (got / "checkpoint-4").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "record.json", "trainer_state.json"} <= names
    assert not [n for n in names if n.endswith(".pt")]  # verl's shards and optimizer stay where they are
    (full / follow.VERL_TRACKER).write_text("6")
    g = follow.Follower(full, tmp_path / "watch-full", settle=3600)
    assert [p.name for p in g.poll()] == ["checkpoint-6"]
    assert json.loads((tmp_path / "watch-full" / "checkpoints" / "checkpoint-6" / "record.json").read_text())["how"] == "link"
    cfg = WatchConfig(run=str(ckpts.parent.parent), out=str(tmp_path / "watch"), base=str(foreign_run["base"]),
                      data=str(foreign_run["heldout"]), limit=3, decode=0, once=True, batch_size=4)
    assert scorer.run(cfg) == 2
    cfg = WatchConfig(run=str(full), out=str(tmp_path / "watch-full"), base=str(foreign_run["base"]),
                      data=str(foreign_run["heldout"]), limit=3, decode=0, once=True, batch_size=4)
    assert scorer.run(cfg) == 1  # a full model, scored against the base


def test_shards_only_are_not_taken_and_the_trainers_folder_is_never_the_output(tmp_path):
    actor = tmp_path / "run" / "global_step_1" / "actor"
    actor.mkdir(parents=True)
    torch.save({}, actor / "model_world_size_1_rank_0.pt")
    (tmp_path / "run" / follow.VERL_TRACKER).write_text("1")
    assert follow.candidates(tmp_path / "run") == []  # FSDP shards need verl's merger: not a model we can load
    from core.errors import InputError

    with pytest.raises(InputError, match="inside the trainer's folder"):
        scorer.Watch.open(WatchConfig(run=str(tmp_path / "run"), out=str(tmp_path / "run" / "w"), base="b", data="d"))
    with pytest.raises(InputError, match="give --out"):
        scorer.Watch.open(WatchConfig(run=str(tmp_path / "run"), base="b", data="d"))


def _ckpt(folder, step, payload=b"w"):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(payload)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_of_several_ms_swift_runs_in_one_output_folder_the_newest_is_followed(tmp_path):
    """ms-swift's output/ holds v0-DATE/, v1-DATE/, ...: their step numbers start again, and an older run's
    checkpoint-2 is not this run's (it was taken for whichever the listing gave first)."""
    import os

    out = tmp_path / "output"
    for step in (2, 4):
        _ckpt(out / "v0-20261201-100000" / f"checkpoint-{step}", step, b"old")
        os.utime(out / "v0-20261201-100000" / f"checkpoint-{step}", (1e9, 1e9))
    _ckpt(out / "v1-20261206-100000" / "checkpoint-2", 2, b"new")
    assert [(c.step, c.folder.parent.name) for c in follow.candidates(out)] == [(2, "v1-20261206-100000")]
    done = follow.Follower(out, tmp_path / "watch", settle=0).poll()
    assert [(d.name, (d / "adapter_model.safetensors").read_bytes()) for d in done] == [("checkpoint-2", b"new")]


def test_a_checkpoint_that_cannot_be_recorded_is_missed_once_and_a_listing_race_waits(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "trainer_state.json").write_text("{}")  # complete, but no model in it (ZeRO-3 shards)
    f = follow.Follower(run, tmp_path / "watch", settle=0)
    for _ in range(3):
        assert f.poll() == []
    assert [m["step"] for m in f.missed] == [2]  # it grew by one entry a poll

    def rotated(run_dir):  # pathlib's glob on 3.10 / 3.11 when a rotation deletes a folder it is listing
        raise FileNotFoundError(2, "No such file or directory", str(run_dir / "checkpoint-1"))

    monkeypatch.setattr(follow, "candidates", rotated)
    assert f.poll() == []  # the scorer goes on; the next poll lists again
