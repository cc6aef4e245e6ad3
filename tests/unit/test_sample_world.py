"""The committed demo world: loads with transformers/peft, its checkpoints differ, and its documented drift
is real (a fresh evaluation reproduces the recorded table)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from core import concepts
from core.sample import evaluate, spec
from core.world import load_world


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
    for a, b in zip(weights, weights[1:]):
        assert keys == sorted(b)
        assert any(not torch.equal(a[k], b[k]) for k in keys)


@pytest.mark.slow
def test_documented_figures_match_a_fresh_evaluation(world, base):
    """Greedy-decode every held-out study under the base and every checkpoint; compare with metrics.json."""
    from peft import PeftModel

    model, tok = base
    test, perturbed = _records(world, "test"), _records(world, "test_perturbed")
    recorded = {r["step"]: r for r in world.metrics()}
    assert sorted(recorded) == [0] + [c.step for c in world.checkpoints]

    def check(m, step):
        p = evaluate.answer(m, tok, [r["prompt"] for r in test])
        pp = evaluate.answer(m, tok, [r["prompt"] for r in perturbed])
        fresh = evaluate.drift_table_row(test, p, perturbed, pp)
        for key in ("accuracy", "perturbed_accuracy", "flip_rate", "opacity_to_lung_opacity"):
            assert fresh[key] == pytest.approx(recorded[step][key], abs=0.02), (step, key)

    torch.set_num_threads(2)
    check(model, 0)
    peft_model = PeftModel.from_pretrained(model, world.checkpoints[0].path, adapter_name=world.checkpoints[0].name)
    for c in world.checkpoints[1:]:
        peft_model.load_adapter(c.path, adapter_name=c.name)
    for c in world.checkpoints:
        peft_model.set_adapter(c.name)
        check(peft_model, c.step)


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
