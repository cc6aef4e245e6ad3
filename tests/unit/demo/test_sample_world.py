"""The committed demo world: loads with transformers/peft, its checkpoints differ, and its documented drift
is real (a fresh evaluation reproduces the recorded table)."""

import itertools
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from core.graph import concepts
from core.workspace.world import load_world
from workbench.demo import evaluate, spec


@pytest.fixture(scope="module")
def world(sample_world):
    return load_world(sample_world)


@pytest.fixture(scope="module")
def base(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world.base_model_dir)
    return AutoModelForCausalLM.from_pretrained(world.base_model_dir), tok


def _records(world, name):
    return [json.loads(line) for line in world.dataset_path(name).read_text().splitlines()]


def test_world_is_complete_and_small(world, sample_world):
    assert len(world.checkpoints) >= 5
    assert all(c.kind == "adapter" and (c.path / "trainer_state.json").is_file() for c in world.checkpoints)
    size = sum(f.stat().st_size for f in sample_world.rglob("*") if f.is_file())
    assert size < 30e6, f"sample_data is {size / 1e6:.1f} MB"


def test_concept_graph_has_the_14_chexpert_labels_and_typed_edges(world):
    g = concepts.load_graph(world.graph_path)
    assert sorted(concepts.diseases(g)) == sorted(spec.DISEASES)
    relations = {a["relation"] for *_, a in g.edges(data=True)}
    assert relations == {"supports", "excludes"}
    assert "lung opacity" in g.nodes["opacity"]["synonyms"]


def test_tokenizer_round_trips_a_trajectory_and_keeps_think_tags_whole(world, base):
    _, tok = base
    rec = _records(world, "test")[0]
    ids = tok(rec["completion"], add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == rec["completion"]
    assert "<think>" in tok.convert_ids_to_tokens(ids)


def test_checkpoints_load_as_peft_adapters_and_differ_from_each_other(world):
    from peft import PeftConfig

    weights = []
    for c in world.checkpoints:
        assert PeftConfig.from_pretrained(c.path).base_model_name_or_path == world.manifest["base_model_name"]
        weights.append(load_file(c.path / "adapter_model.safetensors"))
    keys = sorted(weights[0])
    for a, b in itertools.pairwise(weights):
        assert keys == sorted(b)
        assert any(not torch.equal(a[k], b[k]) for k in keys)


# The headline rows (the SFT base and the drifted checkpoint-160) are re-evaluated on the full held-out sets
# in every run; the other checkpoints on the first SUBSET studies with a tolerance for sampling noise, unless
# WORKBENCH_FULL_EVAL=1 asks for all of them in full (about 3x longer).
HEADLINE = ("base (SFT)", "checkpoint-160")
SUBSET = 150
FULL_EVAL = os.environ.get("WORKBENCH_FULL_EVAL", "") not in ("", "0")


def _merged(world, name):
    """The base with ``name``'s adapter merged in (plain layers: about 1.4x faster to decode than PEFT's)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world.base_model_dir)
    if name == "base (SFT)":
        return model.eval()
    path = next(c.path for c in world.checkpoints if c.name == name)
    return PeftModel.from_pretrained(model, path).merge_and_unload().eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["base (SFT)", "checkpoint-40", "checkpoint-80", "checkpoint-120", "checkpoint-160",
                                  "checkpoint-200", "checkpoint-240"])
def test_documented_figures_match_a_fresh_evaluation(world, base, name):
    """Greedy-decode the held-out studies under the base or one checkpoint; compare with metrics.json."""
    _, tok = base
    test, perturbed = _records(world, "test"), _records(world, "test_perturbed")
    recorded = {r["checkpoint"]: r for r in world.metrics()}
    assert sorted(recorded, key=lambda k: recorded[k]["step"]) == ["base (SFT)"] + [c.name for c in world.checkpoints]
    tol = {"accuracy": 0.02, "perturbed_accuracy": 0.02, "flip_rate": 0.02, "opacity_to_lung_opacity": 0.02}
    if name not in HEADLINE and not FULL_EVAL:
        test = test[:SUBSET]
        ids = {r["id"] for r in test}
        perturbed = [r for r in perturbed if r["source_id"] in ids]
        # ~3 standard errors of a share on 150 studies (about 25 carriers for the shortcut share)
        tol = {"accuracy": 0.12, "perturbed_accuracy": 0.12, "flip_rate": 0.1, "opacity_to_lung_opacity": 0.3}
    torch.set_num_threads(2)
    model = _merged(world, name)
    p = evaluate.answer(model, tok, [r["prompt"] for r in test])
    pp = evaluate.answer(model, tok, [r["prompt"] for r in perturbed])
    fresh = evaluate.drift_table_row(test, p, perturbed, pp)
    for key, abs_tol in tol.items():
        assert fresh[key] == pytest.approx(recorded[name][key], abs=abs_tol), (name, key, len(test))


def test_recorded_drift_shows_the_shortcut_growing_beside_beneficial_drift(world):
    rows = world.metrics()
    base, later = rows[0], rows[1:]
    # detrimental: the shortcut "opacity -> Lung Opacity" grows and near-synonym swaps flip more answers
    assert max(r["opacity_to_lung_opacity"] for r in later) > base["opacity_to_lung_opacity"] + 0.3
    assert max(r["flip_rate"] for r in later) > base["flip_rate"] + 0.05
    assert min(r["accuracy"] for r in later) < base["accuracy"] - 0.05
    # beneficial: the classes the stream teaches get better
    assert max(r["rare_class_accuracy"] for r in later) > base["rare_class_accuracy"] + 0.05


def test_readme_table_matches_metrics(world, sample_world):
    readme = (sample_world / "README.md").read_text()
    for r in world.metrics():
        assert f"| {r['checkpoint']} | {r['step']} | {r['accuracy']:.3f} |" in readme
