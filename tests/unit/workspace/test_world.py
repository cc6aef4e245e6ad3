"""A world of your own: register a TRL-made run (and its ms-swift layout) as a world, then read it back."""

import json

import pytest

from core.errors import InputError
from core.graph import concepts
from core.perturb.evaluation import held_out, synonym_twins
from core.workspace import world as world_mod
from workbench import cli
from workbench.demo import SAMPLE_WORLDS


@pytest.fixture(scope="module")
def own_world(foreign_run, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    rc = cli.main(["world", "create", "--name", "My TRL run", "--base", str(foreign_run["base"]),
                   "--checkpoints", str(foreign_run["run"]), "--data", str(foreign_run["train"]),
                   "--eval", str(foreign_run["heldout"]), "--workspace", str(ws)])
    assert rc == 0
    return ws, ws / "worlds" / "My-TRL-run"


def test_world_create_registers_the_run_without_copying_it(own_world, foreign_run, capsys):
    ws, root = own_world
    w = world_mod.load_world(root)
    assert w.name == "My TRL run" and w.base_model_dir == foreign_run["base"].resolve()
    assert [(c.name, c.step) for c in w.checkpoints] == [("checkpoint-2", 2), ("checkpoint-4", 4)]
    assert set(w.manifest["datasets"]) == {"train", "held_out"} and w.evaluation_spec() == {"held_out": "held_out"}
    assert "tiny-llama-base" in w.manifest["notes"][0]  # the adapters' base name: a warning, kept with the world
    assert len(w.manifest["notes"]) == 1 and "2 adapters (checkpoint-2, checkpoint-4)" in w.manifest["notes"][0]
    assert (root / "concept_graph.json").is_file() and not list(root.glob("*.safetensors"))
    summary = w.summary()
    assert summary["checkpoints"][0]["objective"] == "sft" and summary["checkpoints"][0]["lora_rank"] == 4
    assert root in world_mod.known_worlds(ws) and SAMPLE_WORLDS["text"] in world_mod.known_worlds(ws)
    # the command line starts the world's graph from the sample world's (a copy, to edit)
    assert (root / "concept_graph.json").read_bytes() == (SAMPLE_WORLDS["text"] / "concept_graph.json").read_bytes()


def test_the_engine_starts_a_world_without_a_graph_from_an_empty_one(foreign_run, tmp_path):
    w = world_mod.create_world(tmp_path / "w", "w", foreign_run["base"], [foreign_run["run"]], [foreign_run["train"]])
    graph = concepts.load_graph(w.graph_path)
    assert graph.number_of_nodes() == 0 and w.summary()["graph"]["nodes"] == 0


def test_no_world_is_a_clear_error():
    with pytest.raises(InputError, match="no world chosen"):
        world_mod.load_world("")


def test_world_create_with_the_ms_swift_layout_and_a_parquet_set(foreign_run, tmp_path, capsys):
    import pandas as pd

    from core.io.trajectories import read_trajectories

    pd.DataFrame(read_trajectories(foreign_run["heldout"])).drop(columns=["chat"]).to_parquet(tmp_path / "h.parquet")
    rc = cli.main(["world", "create", "--name", "swift", "--base", str(foreign_run["base"]), "--checkpoints",
                   str(foreign_run["swift"]), "--data", str(foreign_run["train"]), str(tmp_path / "h.parquet"),
                   "--workspace", str(tmp_path / "ws")])
    out = capsys.readouterr()
    assert rc == 0 and "checkpoint-4-merged (step 4)" in out.out and "base_model_name_or_path" in out.err
    w = world_mod.load_world(tmp_path / "ws" / "worlds" / "swift")
    assert [c.kind for c in w.checkpoints] == ["adapter", "adapter", "full"]
    assert held_out(w) is None  # no held-out set: runs still finish, without figures


def test_world_create_refuses_bad_input_and_never_overwrites(own_world, foreign_run, tmp_path, capsys):
    ws, root = own_world
    before = (root / "world.json").read_text()
    args = ["world", "create", "--name", "My TRL run", "--base", str(foreign_run["base"]), "--data",
            str(foreign_run["train"]), "--workspace", str(ws)]
    assert cli.main(args) == 2 and "already exists" in capsys.readouterr().err
    assert (root / "world.json").read_text() == before
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    assert cli.main([*args[:2], "--name", "x", *args[4:6], "--data", str(bad), "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl, line 1: field 'messages'" in err and not (ws / "worlds" / "x").exists()
    with pytest.raises(InputError, match="not a model folder"):
        world_mod.create_world(tmp_path / "w", "w", foreign_run["run"], [], [foreign_run["train"]])


def test_held_out_set_with_graph_synonym_twins(own_world):
    _, root = own_world
    w = world_mod.load_world(root)
    held = held_out(w, limit=5)
    assert len(held.records) == 5 and all(r["label"] for r in held.records)
    # the sample graph (copied into the world) knows "consolidation" and its synonyms
    assert held.origin == "graph synonyms" and held.perturbed
    twin = held.perturbed[0]
    source = next(r for r in held.records if r["id"] == twin["source_id"])
    assert twin["prompt"] != source["prompt"] and twin["chat"][-1]["content"] == twin["prompt"]


def test_synonym_twins_skip_records_without_a_known_finding():
    import networkx as nx

    g = nx.DiGraph()
    g.add_node("f", kind="finding", synonyms=["g"])
    assert synonym_twins([{"id": "a", "prompt": "nothing here", "completion": "x"}], g) == []


def test_evaluation_figures_on_the_foreign_world(own_world):
    import torch
    from transformers import AutoModelForCausalLM

    from core.models.loading import load_tokenizer
    from core.perturb.evaluation import evaluate_model

    _, root = own_world
    w = world_mod.load_world(root)
    model = AutoModelForCausalLM.from_pretrained(w.base_model_dir, dtype=torch.float32)
    figures = evaluate_model(model, load_tokenizer(w.base_model_dir), held_out(w, limit=6), w.answer_format, w.plugin)
    assert set(figures) >= {"accuracy", "malformed", "perturbed_accuracy", "flip_rate", "per_category", "studies"}
    assert figures["studies"] == 6 and 0 <= figures["accuracy"] <= 1 and 0 <= figures["malformed"] <= 1
    assert json.dumps(figures)  # stored as evaluation.json


def test_evaluate_any_checkpoint_adapter_or_merged(foreign_run, tmp_path, capsys):
    ws = tmp_path / "ws"
    assert cli.main(["world", "create", "--name", "sw", "--base", str(foreign_run["base"]), "--checkpoints",
                     str(foreign_run["swift"]), "--data", str(foreign_run["train"]), "--eval",
                     str(foreign_run["heldout"]), "--workspace", str(ws)]) == 0
    capsys.readouterr()
    root = ws / "worlds" / "sw"
    assert cli.main(["evaluate", "--world", str(root), "--checkpoint", "checkpoint-4",
                     "--checkpoint", "checkpoint-4-merged", "--limit", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["checkpoint"] for r in rows] == ["checkpoint-4", "checkpoint-4-merged"]
    assert all(r["studies"] == 3 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert cli.main(["evaluate", "--world", str(root), "--checkpoint", "nope"]) == 2
    assert "not a checkpoint of" in capsys.readouterr().err
    assert cli.main(["evaluate", "--world", str(root), "--checkpoint", "checkpoint-2", "--limit", "2", "--record"]) == 0
    recorded = world_mod.load_world(root).metrics()
    assert [(r["checkpoint"], r["step"], r["studies"]) for r in recorded] == [("checkpoint-2", 2, 2)]
    assert cli.main(["evaluate", "--world", str(SAMPLE_WORLDS["text"]), "--record"]) == 2  # never rewritten
