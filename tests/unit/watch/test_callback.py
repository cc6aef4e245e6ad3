"""The trainer's side of the watch: one self-contained file, checkpoints recorded whole before rotation, Stop."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys

import pytest

from core.watch import callback, layout
from tests.conftest import ROOT

CALLBACK = ROOT / "core" / "watch" / "callback.py"


def test_the_callback_imports_the_standard_library_and_transformers_only():
    tree = ast.parse(CALLBACK.read_text())
    top = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    top |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    allowed = set(sys.stdlib_module_names) | {"transformers", "swift", "__future__"}
    assert top <= allowed, f"the callback imports {sorted(top - allowed)}"


def test_its_folder_names_are_the_layouts():
    for name in ("FORMAT", "MARKER", "CHECKPOINTS", "TRAINER", "STOP", "ALARMS", "RECORD", "KEEP"):
        assert getattr(callback, name) == getattr(layout, name), name


def test_the_plugin_file_is_the_module_and_imports_alone(tmp_path):
    from workbench import watch_cli
    from core.errors import InputError

    out = tmp_path / "plugins" / "cot_drift_watch.py"
    assert watch_cli.write_plugin(out) == 0
    assert out.read_text() == CALLBACK.read_text()
    assert watch_cli.write_plugin(out) == 0  # the same file again: nothing to refuse
    other = tmp_path / "mine.py"
    other.write_text("# a user's file\n")
    with pytest.raises(InputError, match="already exists"):
        watch_cli.write_plugin(other)
    assert other.read_text() == "# a user's file\n"
    spec = importlib.util.spec_from_file_location("cot_drift_watch_alone", out)  # as ms-swift imports a plugin
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert issubclass(module.DriftWatchCallback, __import__("transformers").TrainerCallback)


def _adapter(folder, payload=b"weights"):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(payload)
    (folder / "optimizer.pt").write_bytes(b"x" * 100)  # the resume state is not the model
    (folder / "rng_state_0.pth").write_bytes(b"r")
    return folder


def test_an_adapter_is_copied_a_full_checkpoint_linked_the_resume_state_left(tmp_path):
    watch = callback.init_watch(tmp_path / "watch")
    src = _adapter(tmp_path / "run" / "checkpoint-3")
    got = callback.record(src, watch, 3, {"global_step": 3, "log_history": [{"step": 3, "loss": 1.0}]})
    assert got == watch / "checkpoints" / "checkpoint-3"
    assert sorted(p.name for p in got.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "record.json",
                                                     "trainer_state.json"]
    assert os.stat(got / "adapter_model.safetensors").st_ino != os.stat(src / "adapter_model.safetensors").st_ino
    rec = json.loads((got / "record.json").read_text())
    assert (rec["kind"], rec["how"], rec["step"]) == ("adapter", "copy", 3)
    full = tmp_path / "run" / "checkpoint-6"
    full.mkdir()
    (full / "config.json").write_text("{}")
    (full / "model.safetensors").write_bytes(b"w" * 1000)
    linked = callback.record(full, watch, 6)
    assert os.stat(linked / "model.safetensors").st_ino == os.stat(full / "model.safetensors").st_ino
    import shutil

    shutil.rmtree(full)  # the trainer's rotation: the link keeps the weights
    assert (linked / "model.safetensors").read_bytes() == b"w" * 1000
    assert json.loads((linked / "record.json").read_text())["how"] == "link"
    (src / "adapter_model.safetensors").write_bytes(b"changed")
    assert callback.record(src, watch, 3) == got and (got / "adapter_model.safetensors").read_bytes() == b"weights"


def test_a_failed_recording_leaves_nothing_half_written(tmp_path, monkeypatch):
    watch = callback.init_watch(tmp_path / "watch")
    src = _adapter(tmp_path / "run" / "checkpoint-1")

    def broken(a, b, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(callback.shutil, "copy2", broken)
    with pytest.raises(OSError):
        callback.record(src, watch, 1)
    assert list((watch / "checkpoints").iterdir()) == []


def test_stop_from_the_page_or_from_an_alarm_in_stop_on(tmp_path):
    watch = callback.init_watch(tmp_path / "w", stop_on=["concept_surge"])
    seen: dict = {}
    assert callback.stop_reason(watch, ["concept_surge"], seen) is None
    with open(watch / "alarms.jsonl", "a") as f:
        f.write(json.dumps({"rule": "kl_jump", "step": 4, "message": "m"}) + "\n")
    assert callback.stop_reason(watch, ["concept_surge"], seen) is None  # not a rule it stops on
    with open(watch / "alarms.jsonl", "a") as f:
        f.write("not json\n" + json.dumps({"rule": "concept_surge", "step": 6, "message": "opacity"}) + "\n")
    assert callback.stop_reason(watch, ["concept_surge"], seen).startswith("alarm concept_surge at step 6")
    other = callback.init_watch(tmp_path / "v")
    (other / "stop.json").write_text(json.dumps({"by": "the Watch page"}))
    assert callback.stop_reason(other, [], {}) == "stop asked (the Watch page)"
    with pytest.raises(ValueError, match="keep"):
        callback.init_watch(tmp_path / "x", keep="some")
