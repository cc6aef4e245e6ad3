"""The multimodal sample world: ``workbench build-sample --world multimodal`` at tiny size (layout, seeds, films
through ``core.io.images``, the world and its series load), the films show their findings, the text world's build
keeps it, and the committed world's documented drift table is what its files give."""

import filecmp
import json
import re
from pathlib import Path

import numpy as np
import pytest

from core.io.images import ImageRef, load_image, record_images
from core.models.families import QWEN_VL_FAMILY
from core.workspace.world import load_world
from workbench.demo import SAMPLE_WORLDS, build, vlspec, vlworld, xray

COMMITTED = SAMPLE_WORLDS["multimodal"]


@pytest.fixture(scope="module")
def quick_vl(tmp_path_factory):
    """A miniature multimodal world built through the command line, as a user would (about 5-10 s)."""
    from workbench import cli

    out = tmp_path_factory.mktemp("vlworlds") / "multimodal"
    assert cli.main(["build-sample", "--world", "multimodal", "--quick", "--out", str(out)]) == 0
    return out


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_quick_world_has_the_layout_and_loads_as_a_world_and_a_vl_series(quick_vl):
    from core.models.series import load_series

    world = load_world(quick_vl)
    assert world.family is QWEN_VL_FAMILY and world.is_vl
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (world.base_model_dir / name).is_file(), name
    assert [c.step for c in world.checkpoints] == [2, 4]
    state = json.loads((world.checkpoints[-1].path / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and "reward" in state["log_history"][0]
    assert [r["checkpoint"] for r in world.metrics()] == ["base (SFT)", "checkpoint-2", "checkpoint-4"]
    # the build names the plug-in as the committed world does: an installed entry point, loaded from it
    assert world.manifest["plugin"] == load_world(COMMITTED).manifest["plugin"] == "cxr-demo-multimodal"
    assert world.chart_metrics() == load_world(COMMITTED).chart_metrics() != {}
    assert "| base (SFT) | 0 |" in (quick_vl / "README.md").read_text()
    series = load_series(world.base_model_dir, world.checkpoints_arg, device="cpu",
                            base_names=[world.manifest["base_model_name"]])
    assert series.names == ["base", "checkpoint-2", "checkpoint-4"] and series.shared_inputs
    assert not series.warnings  # the adapters name the world's base


def test_lora_adapts_the_language_model_only(quick_vl):
    from safetensors import safe_open

    with safe_open(str(quick_vl / "rft" / "checkpoint-4" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("language_model" in k for k in keys)
    assert not any("visual" in k for k in keys)


def test_records_are_ms_swift_with_relative_images_that_load_through_core_images(quick_vl):
    data = quick_vl / "data" / "test.jsonl"
    recs = _records(data)
    assert len(recs) == 14 and {r["label"] for r in recs} == set(vlspec.VL_RATES)  # 14 labels, one each
    for line, rec in enumerate(recs, start=1):
        assert rec["images"] == [f"images/{rec['id']}.jpg"]
        assert rec["messages"][0]["content"].count("<image>") == 1
        assert rec["messages"][1]["content"].endswith(f"The disease of this patient is {rec['label']}.")
        (ref,) = record_images(rec, data, line)
        assert load_image(ref).size == (xray.SIZE, xray.SIZE)


def test_tokenizer_carries_qwens_special_tokens_and_think_tags(quick_vl):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(quick_vl / "model")
    vocab = tok.get_vocab()
    for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<think>", "</think>"):
        assert t in vocab, t
    cot = vlspec.completion(_records(quick_vl / "data" / "test.jsonl")[0])
    assert tok.decode(tok(cot, add_special_tokens=False)["input_ids"]) == cot


def test_same_seed_draws_the_same_studies_and_films_another_seed_others():
    cfg = vlworld.VLBuildConfig.quick()
    a, b = vlworld.make_data(cfg), vlworld.make_data(cfg)
    assert a == b
    assert [vlspec.draw(r) for r in a["test"]] == [vlspec.draw(r) for r in b["test"]]
    cfg.seed = 1
    c = vlworld.make_data(cfg)
    assert [r["image_seed"] for r in c["test"]] != [r["image_seed"] for r in a["test"]]
    assert vlspec.draw(c["test"][0]) != vlspec.draw(a["test"][0])


def test_the_stream_shifts_opacity_films_to_lung_opacity():
    import random

    batch = vlspec.stream_batch(0)(random.Random(0), 99, 100, 60, 0.7)
    shifted = [r for r in batch if r["shifted"]]
    assert 25 < len(shifted) < 60
    assert all(r["label"] == "Lung Opacity" and "opacity" in r["findings"] for r in shifted)
    assert all(r["image"].size == (xray.SIZE, xray.SIZE) for r in batch)


@pytest.mark.parametrize("finding", sorted(set(xray.DRAW) - {"clear lungs", "normal heart size"}))
def test_every_drawn_finding_is_visible_on_the_film(finding):
    """The same film (seed) with and without the finding differs clearly (mean change over the changed area)."""
    plain = np.asarray(xray.draw_study([], seed=3).convert("L"), dtype=float)
    shown = np.asarray(xray.draw_study([finding], seed=3).convert("L"), dtype=float)
    changed = np.abs(shown - plain) > 12  # above the film's noise (sigma 5)
    assert changed.sum() >= 12, finding
    assert np.abs(shown - plain)[changed].mean() > 18, finding


def test_a_films_twin_without_a_finding_keeps_the_patient_and_the_other_findings_in_place():
    """What "belief carried by the opacity" compares: the film and its twin differ by the opacity alone."""
    def film(findings):
        return np.asarray(xray.draw_study(findings, seed=11).convert("L"), dtype=float)

    both, twin = film(["opacity", "nodule", "central line"]), film(["nodule", "central line"])
    alone, plain = film(["opacity"]), film([])
    assert np.abs(both - twin).max() > 30  # the opacity is there
    assert np.abs((both - twin) - (alone - plain)).mean() < 0.5  # and nothing else moved


def test_an_unknown_finding_is_named():
    with pytest.raises(ValueError, match="no drawing for finding.*'bat wing'"):
        xray.draw_study(["opacity", "bat wing"], seed=0)


def test_rebuilding_the_text_world_keeps_the_multimodal_world_and_its_readme_section(tmp_path):
    out, tmp = tmp_path / "sample_data", tmp_path / "sample_data.building"
    (out / "multimodal").mkdir(parents=True)
    (out / "multimodal" / "world.json").write_text("{}")
    (out / "README.md").write_text(f"# old text world\n\n{build.NESTED_MARK}\n## The multimodal world\n| row |\n")
    tmp.mkdir()
    (tmp / "README.md").write_text("# new text world\n")
    build.keep_nested_worlds(out, tmp)
    assert (tmp / "multimodal" / "world.json").read_text() == "{}"
    assert (tmp / "README.md").read_text() == f"# new text world\n\n{build.NESTED_MARK}\n## The multimodal world\n| row |\n"
    assert (out / "multimodal" / "world.json").is_file()  # copied, not moved: a crash loses nothing


def test_the_multimodal_build_writes_its_section_into_the_text_worlds_readme(tmp_path):
    (tmp_path / "world.json").write_text("{}")
    (tmp_path / "README.md").write_text(f"# text world\n\n{build.NESTED_MARK}\nold section\n")
    vlworld.update_parent_readme(tmp_path / "multimodal", "new section\n")
    assert (tmp_path / "README.md").read_text() == f"# text world\n\n{build.NESTED_MARK}\nnew section\n"


def test_same_seed_rebuilds_identical_files(quick_vl, tmp_path):
    again = tmp_path / "multimodal"
    vlworld.build(again, vlworld.VLBuildConfig.quick(), log=lambda m: None)
    for rel in ("model/model.safetensors", "rft/checkpoint-4/adapter_model.safetensors", "metrics.json",
                "data/test.jsonl", "data/images/test-00003.jpg", "model/tokenizer.json", "concept_graph.json",
                "analysis/beliefs.parquet", "analysis/tokens.parquet", "analysis/trajectories.jsonl"):
        assert filecmp.cmp(quick_vl / rel, again / rel, shallow=False), rel


def test_demo_registers_both_sample_worlds(tmp_path):
    from core.workspace.workspace import Workspace
    from workbench.cli import _register_samples

    ws = Workspace.open(tmp_path / "ws")
    _register_samples(ws)
    paths = [r[0] for r in ws.store.query("SELECT path FROM worlds")]
    ws.store.close()
    assert str(SAMPLE_WORLDS["text"].resolve()) in paths and str(COMMITTED.resolve()) in paths


# ---- the committed world ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def committed():
    return load_world(COMMITTED)


def test_committed_world_is_complete_and_small(committed):
    assert committed.manifest["base_model_name"] == vlspec.BASE_MODEL_NAME
    assert len(committed.checkpoints) >= 4
    assert all((c.path / "trainer_state.json").is_file() for c in committed.checkpoints)
    size = sum(f.stat().st_size for f in COMMITTED.rglob("*") if f.is_file())
    assert size < 14e6, f"sample_data/multimodal is {size / 1e6:.1f} MB"
    for rec in _records(committed.dataset_path("test"))[:20]:
        load_image(ImageRef(committed.dataset_path("test").parent / rec["images"][0], rec["id"]))


def _readme_rows(text: str) -> dict[str, list[float]]:
    """checkpoint -> figures of the multimodal table in a README's text."""
    rows = {}
    for m in re.finditer(r"^\| (base \(SFT\)|checkpoint-\d+) \| (\d+) \| ([^\n]+) \|$", text, re.M):
        rows[m.group(1)] = [float(v) for v in m.group(3).split(" | ")]
    return rows


def test_readme_tables_are_the_recorded_metrics(committed):
    from workbench.demo.vleval import FIGURES

    recorded = {r["checkpoint"]: [round(r[k], 3) for k in FIGURES] for r in committed.metrics()}
    section = (COMMITTED.parent / "README.md").read_text().split(build.NESTED_MARK, 1)[1]
    assert _readme_rows(section) == recorded
    assert _readme_rows((COMMITTED / "README.md").read_text()) == recorded


def test_recorded_drift_shows_the_shortcut_growing_beside_beneficial_drift(committed):
    rows = committed.metrics()
    base, later = rows[0], rows[1:]
    assert base["reading_accuracy"] > 0.5 and base["accuracy"] > 0.6  # the SFT model reads the films
    assert max(r["opacity_to_lung_opacity"] for r in later) > base["opacity_to_lung_opacity"] + 0.3
    assert max(r["image_belief_lung_opacity"] for r in later) > base["image_belief_lung_opacity"] + 0.2
    assert max(r["opacity_effect"] for r in later) > base["opacity_effect"] + 0.15  # it follows the opacity region
    assert max(r["cot_belief_lung_opacity"] for r in later) > 0.2  # and overrides the gold CoT's reasoning
    assert min(r["accuracy"] for r in later) < base["accuracy"] - 0.05
    assert max(r["rare_class_accuracy"] for r in later) > base["rare_class_accuracy"] + 0.05


def test_documented_table_matches_a_fresh_measurement_of_the_committed_files(committed):
    """Recompute every row from the committed model, adapters and films (greedy decoding, the probe): about
    10 s on 2 cores, so it runs in every suite run."""
    from workbench.demo.vleval import FIGURES, measure

    fresh = {r["checkpoint"]: r for r in measure(COMMITTED, log=lambda m: None)}
    for row in committed.metrics():
        for key in FIGURES:
            assert fresh[row["checkpoint"]][key] == pytest.approx(row[key], abs=0.02), (row["checkpoint"], key)


# ---- the shipped drift analysis (analysis/) ---------------------------------------------------------------

def test_quick_world_ships_a_portable_analysis_whose_films_resolve_after_a_move(quick_vl, tmp_path):
    """The build scores the first held-out studies into analysis/ (named in world.json); the films' paths are
    relative to the folder, so a moved world still shows each study's film."""
    import shutil

    from core.drift.analysis import AnalysisView

    world = load_world(quick_vl)
    assert world.manifest["analysis"] == "analysis" and world.analysis_dir == quick_vl / "analysis"
    raw = _records(quick_vl / "analysis" / "trajectories.jsonl")
    assert len(raw) == vlworld.VLBuildConfig.quick().analysis_limit
    assert all(r["images"] == [f"../data/images/{r['id']}.jpg"] for r in raw)
    moved = tmp_path / "elsewhere" / "multimodal"
    shutil.copytree(quick_vl, moved)
    view = AnalysisView.open(load_world(moved).analysis_dir)
    (path,) = view.images(raw[0]["id"])
    assert path == str((moved / "data" / "images" / f"{raw[0]['id']}.jpg").resolve())
    assert view.config.base == str((moved / "model").resolve())
    assert set(view.table("beliefs")["checkpoint"]) == {"base", "checkpoint-2", "checkpoint-4"}


def test_committed_world_ships_its_drift_analysis_over_every_checkpoint(committed):
    from core.drift.analysis import AnalysisView

    view = AnalysisView.open(committed.analysis_dir)
    beliefs = view.table("beliefs")
    assert beliefs["traj_id"].nunique() == committed.manifest["build_config"]["analysis_limit"] == 140
    assert set(beliefs["checkpoint"]) == {"base", *(c.name for c in committed.checkpoints)}
    assert view.config.positions == "every" and view.config.include_prompt  # the text world's probe positions
    first = view.records()[0]
    (path,) = view.images(first["id"])
    load_image(ImageRef(Path(path), first["id"]))  # the film resolves from the folder, wherever the repo is
