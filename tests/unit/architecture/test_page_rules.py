"""Rules the pages used to hold, now in core where a notebook reaches them: data roots, uploads by content
hash, the series plus finished CPO runs, a run's start and defaults, driver lookup and order, swap lists."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from core.cpo import runs
from core.drift import explore
from core.drift import findings as drift
from core.errors import InputError
from core.graph import concepts
from core.io.roots import DATA_ROOTS_ENV, search_roots
from core.perturb import text as perturb
from core.workspace.workspace import Workspace
from core.workspace.world import load_world


@pytest.fixture
def ws(tmp_path):
    return Workspace.open(tmp_path / "ws")


def test_search_roots_world_first_then_workspace_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOTS_ENV, f"{tmp_path / 'a'}::{tmp_path / 'b'}")
    assert search_roots(tmp_path / "ws", tmp_path / "w") == [tmp_path / "w", tmp_path / "ws", tmp_path / "a",
                                                             tmp_path / "b"]
    assert search_roots(tmp_path / "ws") == [tmp_path / "ws", tmp_path / "a", tmp_path / "b"]


def test_an_upload_is_kept_once_under_its_content_hash(ws):
    first = ws.keep_upload("trajs.jsonl", b'{"id": 1}\n')
    assert first.parent == ws.uploads_dir and first.name.startswith("trajs-") and first.suffix == ".jsonl"
    assert ws.keep_upload("trajs.jsonl", b'{"id": 1}\n') == first  # same content: same file
    other = ws.keep_upload("trajs.jsonl", b'{"id": 2}\n')
    assert other != first and first.read_text() == '{"id": 1}\n'  # never overwritten
    with pytest.raises(InputError, match=r"bad\.jsonl: not UTF-8"):
        ws.keep_upload("bad.jsonl", b"\xff\xfe")
    assert len(list(ws.uploads_dir.iterdir())) == 2


def _register(ws, name: str, world, status: str, with_adapter: bool = True):
    out = ws.cpo_run_dir(name)
    (out / "adapter").mkdir(parents=True) if with_adapter else out.mkdir(parents=True)
    with ws.store.transaction() as con:
        con.execute("INSERT INTO runs (name, objective, config, data, snapshot, world, status, output_dir, "
                    "created_at, updated_at) VALUES (?, 'cpo', '{}', 'd', NULL, ?, ?, ?, ?, ?)",
                    (name, str(world), status, str(out), time.time(), time.time()))


def test_finished_runs_of_the_world_join_its_series_after_the_checkpoints(ws, sample_world, tmp_path):
    world = load_world(sample_world)
    _register(ws, "done-1", world.root, "done")
    _register(ws, "failed-1", world.root, "failed")
    _register(ws, "no-adapter", world.root, "done", with_adapter=False)
    _register(ws, "elsewhere", tmp_path / "other-world", "done")
    finished = runs.finished_for_world(ws.store, world.root)
    assert [r.name for r in finished] == ["done-1"]
    assert ws.cpo_run_dir("done-1") == ws.runs_dir / "cpo" / "done-1"
    series = runs.series_with_runs([c.path for c in world.checkpoints], finished).split(";")
    assert series[:-1] == [str(c.path) for c in world.checkpoints]
    assert series[-1] == str(ws.cpo_run_dir("done-1") / "adapter")


def test_a_run_starts_from_the_least_accurate_checkpoint_with_its_lora_rank(sample_world):
    world = load_world(sample_world)
    accuracy = {m["checkpoint"]: m["accuracy"] for m in world.metrics() if "accuracy" in m}
    start = runs.default_start(world)
    assert accuracy[start] == min(v for k, v in accuracy.items() if k in {c.name for c in world.checkpoints})
    assert runs.start_adapter(world, runs.START_BASE) is None
    assert runs.start_adapter(world, start).endswith(start)
    with pytest.raises(InputError, match="not a checkpoint"):
        runs.start_adapter(world, "checkpoint-999999")
    defaults = runs.train_defaults(world, start)
    info = next(c for c in world.checkpoints if c.name == start)
    assert defaults["lora_r"] == int(info.training.get("lora_rank") or runs.train_defaults()["lora_r"])
    assert defaults["learning_rate"] == getattr(world.plugin, "learning_rate", runs.train_defaults()["learning_rate"])
    assert {"max_steps", "batch_size", "beta", "seed"} <= set(defaults)


def test_a_concept_has_one_list_of_names(sample_world):
    graph = concepts.load_graph(load_world(sample_world).graph_path)
    finding = next(f for f in concepts.findings(graph) if len(concepts.names(graph, f)) > 1)
    named = explore.concept_names(graph, finding)
    assert named[0] == finding and set(named) == {finding, *concepts.names(graph, finding)}
    assert explore.concept_names(graph, "not in the graph") == ["not in the graph"]
    assert explore.concept_names(None, "x") == ["x"]
    surfaces = dict(drift.concept_surfaces(graph))  # surface -> concept: the same names, longest first
    assert all(surfaces[n] == finding for n in concepts.names(graph, finding))


def test_a_driver_row_finds_its_trajectories():
    import networkx as nx

    g = nx.DiGraph()
    g.add_node("opacity", kind="finding", label="opacity", synonyms=["lung opacity"])
    records = [{"id": "a", "completion": "a lung opacity here"}, {"id": "b", "completion": "opacity."},
               {"id": "c", "completion": "opacityless"}]
    assert explore.driver_trajectories("token", {"trajectories": ["x", "y"], "token": "op", "checkpoint": "c1"},
                                       records) == (["x", "y"], "token 'op' under c1")
    ids, note = explore.driver_trajectories("concept", {"concept": "opacity"}, records, g)
    assert ids == ["a", "b"] and note == "concept 'opacity'"
    ids, _ = explore.driver_trajectories("context", {"context": "lung  opacity", "checkpoint": "c1"}, records)
    assert ids == ["a"]  # the whole context, not its last word (issue 24)
    assert explore.driver_trajectories("context", {"context": "the lung opacity", "checkpoint": "c1"}, records)[0] == []
    with pytest.raises(ValueError, match="driver kind"):
        explore.driver_trajectories("word", {}, records)


def test_drivers_are_sorted_strongest_first():
    t = pd.DataFrame({"checkpoint": ["c1", "c1", "c2", "c1"], "direction": ["detrimental", "beneficial",
                                                                          "detrimental", "detrimental"],
                      "mean_effect_drift": [-0.1, 0.5, -0.9, -0.4], "mean_kl_base": [0.1, 0.2, 0.3, 0.05]})
    assert list(explore.sort_drivers(t, "token", "c1", "detrimental")["mean_effect_drift"]) == [-0.4, -0.1]
    assert list(explore.sort_drivers(t, "token", "all", "beneficial")["mean_effect_drift"]) == [0.5]
    assert list(explore.sort_drivers(t, "context", "all", "all")["mean_kl_base"]) == [0.3, 0.2, 0.1, 0.05]


def test_swap_pairs_offer_every_ordered_pair_preferred_first():
    import networkx as nx

    g = nx.DiGraph()
    g.add_node("effusion", kind="finding", label="effusion", synonyms=["fluid"])
    g.add_node("consolidation", kind="finding", label="consolidation", synonyms=["airspace opacity"])
    pairs = perturb.swap_pairs(g)
    assert pairs[0] == ("consolidation", "consolidation", "airspace opacity")
    assert sorted(pairs) == sorted([("effusion", "effusion", "fluid"), ("effusion", "fluid", "effusion"),
                                    ("consolidation", "consolidation", "airspace opacity"),
                                    ("consolidation", "airspace opacity", "consolidation")])


def test_a_batch_output_is_named_by_its_test(tmp_path):
    out = perturb.batch_output(tmp_path, "/d/held_out.jsonl", "lung opacity", "opacity", "probe", 0)
    assert out == tmp_path / "held-out-lung-opacity-opacity-probe-0.parquet"
    assert perturb.batch_output(tmp_path, "/d/held_out.jsonl", "lung opacity", "opacity", "generate", 0) != out


def test_counterfactuals_by_consistency_ties_by_id():
    from core.counterfactuals.store import by_consistency

    t = pd.DataFrame({"id": [3, 1, 2, 4], "consistency": [0.5, 0.5, 1.0, 0.0]})
    assert list(by_consistency(t)["id"]) == [4, 1, 3, 2]
    assert list(by_consistency(t, lowest_first=False)["id"]) == [2, 1, 3, 4]
