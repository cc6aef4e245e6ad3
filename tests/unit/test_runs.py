"""The run registry: failure causes, joining the checkpoint series, comparison rows."""

import json

from core import runs
from core.checkpoints import read_checkpoint
from core.series import adapter_name


def test_failure_cause_names_the_exception_or_out_of_memory():
    log = "step 1\nTraceback (most recent call last):\n  File x\nValueError: pair 3: chosen is empty\n"
    assert runs.failure_cause(log) == "ValueError: pair 3: chosen is empty"
    oom = "step 4\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    assert runs.failure_cause(oom).startswith("out of memory: torch.OutOfMemoryError")
    assert runs.failure_cause("workbench: error: run.json: field 'lr' must be > 0\n") == \
        "workbench: error: run.json: field 'lr' must be > 0"
    assert runs.failure_cause("") == "the run ended without any output"


def _run(tmp_path, init: str | None) -> runs.Run:
    out = tmp_path / "runs" / "cpo" / "cpo-test"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_config.json").write_text("{}")
    (out / "adapter" / "trainer_state.json").write_text(json.dumps({"global_step": 30, "log_history": []}))
    return runs.Run(1, "cpo-test", "cpo", {"init_adapter": init}, "d.jsonl", None, None, "running", None, out,
                    None, None, 0.0, 0.0)


def test_a_finished_run_joins_the_series_after_the_checkpoint_it_repairs(tmp_path, sample_world):
    run = _run(tmp_path, str(sample_world / "rft" / "checkpoint-160"))
    assert runs.join_series(run) == 190
    assert runs.join_series(run) == 190  # once only
    info = read_checkpoint(run.adapter_dir)
    assert info.step == 190 and adapter_name(info) == "cpo-test"
    state = json.loads((run.adapter_dir / "trainer_state.json").read_text())
    assert state["run_steps"] == 30


def test_a_run_from_the_base_starts_at_step_zero(tmp_path):
    assert runs.join_series(_run(tmp_path, None)) == 30


def test_comparison_puts_the_start_first(sample_world):
    before = runs.start_metrics(sample_world, str(sample_world / "rft" / "checkpoint-160"))
    assert before["accuracy"] < 0.7 and before["opacity_to_lung_opacity"] == 1.0
    done = runs.Run(2, "cpo-a", "cpo", {}, "d", None, None, "done", None, sample_world, None,
                    {"accuracy": 0.8, "flip_rate": 0.05}, 0.0, 0.0)
    pending = runs.Run(3, "cpo-b", "cpo", {}, "d", None, None, "running", None, sample_world, None, None, 0.0, 0.0)
    table = runs.comparison([done, pending], before)
    assert list(table["run"]) == ["before (start checkpoint)", "cpo-a"]
    assert runs.start_metrics(sample_world, None)["accuracy"] > 0.9  # the SFT base's recorded row
