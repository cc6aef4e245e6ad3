"""``workbench build-sample``: deterministic, complete, and never leaves a half-written world."""

import filecmp
import json

import pytest

from core.workspace.world import load_world
from workbench.demo import SAMPLE_WORLDS, build, rft


def test_quick_world_has_the_sample_world_layout(quick_world):
    world = load_world(quick_world)
    assert [c.step for c in world.checkpoints] == [2, 4]
    # the build names the plug-in as the committed world does: an installed entry point, loaded from it
    assert world.manifest["plugin"] == load_world(SAMPLE_WORLDS["text"]).manifest["plugin"] == "cxr-demo"
    assert world.chart_metrics() == load_world(SAMPLE_WORLDS["text"]).chart_metrics() != {}
    assert [r["step"] for r in world.metrics()] == [0, 2, 4]
    state = json.loads((world.checkpoints[-1].path / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and len(state["log_history"]) == 4 and "reward" in state["log_history"][0]


@pytest.mark.slow
def test_same_seed_rebuilds_identical_weights_and_figures(quick_world, tmp_path):
    again = tmp_path / "again"
    build.build(again, build.BuildConfig.quick(), log=lambda m: None)
    for rel in ("model/model.safetensors", "rft/checkpoint-4/adapter_model.safetensors", "metrics.json",
                "data/test.jsonl", "concept_graph.json", "model/tokenizer.json"):
        assert filecmp.cmp(quick_world / rel, again / rel, shallow=False), rel


def test_a_failed_build_leaves_the_existing_world_untouched(quick_world, tmp_path, monkeypatch):
    import shutil

    target = tmp_path / "world"
    shutil.copytree(quick_world, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def crash(*a, **k):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(rft, "run", crash)
    with pytest.raises(RuntimeError):
        build.build(target, build.BuildConfig.quick(), log=lambda m: None)
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before
