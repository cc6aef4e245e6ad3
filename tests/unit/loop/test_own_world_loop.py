"""The whole loop on a foreign world (a TRL-made run, conversational data, adapters naming a base path that
does not exist): register -> score -> explorer -> counterfactuals -> curation -> CPO run -> evaluation -> the
adapter joins the series -> drift before and after."""

import dataclasses
import time

import pytest

from core.counterfactuals.store import generate_batch
from core.cpo import runs
from core.cpo.config import TrainConfig
from core.cpo.starts import STUDIES
from core.curation import queue as curation
from core.curation import snapshots
from core.curation.snapshots import ExportConfig
from core.drift import explore
from core.drift.analysis import Analysis, AnalysisConfig, run_analysis
from core.graph import concepts
from core.io.trajectories import read_trajectories
from core.workspace import world as world_mod
from core.workspace.workspace import Workspace
from tests.conftest import SAMPLE_GRAPH


@pytest.mark.slow
def test_the_loop_on_a_foreign_world(foreign_run, tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    w = world_mod.create_world(ws.root / "worlds" / "trl", "trl", foreign_run["base"], [foreign_run["run"]],
                               [foreign_run["train"]], SAMPLE_GRAPH, held_out=foreign_run["heldout"])
    ws.store.register_world(w.name, w.root, w.fingerprint())
    assert w.root in world_mod.known_worlds(ws.root, ws.store)

    # score (the chat template is used: the records are conversations) and open the result in the explorer
    cfg = AnalysisConfig.from_world(w.root, dataset="held_out", limit=4, positions="sentence", batch_size=4)
    analysis = run_analysis(cfg, cache_dir=ws.cache_dir)
    assert set(analysis.tokens["checkpoint"]) == {"base", "checkpoint-2", "checkpoint-4"}
    assert not analysis.beliefs.empty and "p:Pneumonia" in analysis.beliefs  # labels: the world graph's diseases
    analysis.save(tmp_path / "analysis")
    loaded = Analysis.load(tmp_path / "analysis")
    table = explore.trajectory_table(loaded.beliefs, loaded.effects)
    assert len(table) == 4

    # counterfactuals by the (copied, editable) sample graph, then curation and a TRL export
    graph = concepts.load_graph(w.graph_path)
    records = read_trajectories(w.dataset_path("train"))[:8]
    progress = list(generate_batch(ws.store, graph, records, "trl-run", "confusable"))
    assert progress[-1].stored > 0
    for item_id in curation.queue(ws.store)["id"]:
        curation.annotate(ws.store, int(item_id), "ada", "accept")
    snap = snapshots.export_snapshot(ws.store, ws.root / "datasets", ExportConfig("trl", conversational=True,
                                                                                  system=records[0]["chat"][0]["content"]))
    assert snapshots.trainable(snap)

    # a CPO run from the foreign checkpoint-2, as the runs page launches it (a background job)
    start = next(c for c in w.checkpoints if c.name == "checkpoint-2")
    train_cfg = TrainConfig(base_model=str(w.base_model_dir), data=str(snap.path / "train.jsonl"),
                            output_dir=str(tmp_path / "unused"), init_adapter=str(start.path), max_steps=2,
                            batch_size=2, lora_r=start.training["lora_rank"], lora_alpha=8, learning_rate=1e-3)
    run = runs.launch(ws, train_cfg, "repair", world=w.root, snapshot=snap.name, evaluate_limit=4)
    deadline = time.monotonic() + 300
    while (run := runs.refresh(ws, run.id)).status == "running":
        assert time.monotonic() < deadline, run.job_handle().log_tail()
        time.sleep(0.5)
    assert run.status == "done", run.error
    assert set(run.evaluation) >= {"accuracy", "malformed", "flip_rate", "per_category"}
    # evaluated on the first 4 studies: its start too, on the same 4 (issue 24), cached in the workspace
    start_figures = run.evaluation[runs.START_FIGURES]
    assert start_figures["checkpoint"] == "checkpoint-2" and start_figures["studies"] == run.evaluation["studies"] == 4
    table = runs.comparison([run])
    assert list(table["run"]) == ["before (checkpoint-2, first 4)", "repair"] and table[STUDIES].nunique() == 1
    assert len(list((ws.cache_dir / runs.START_CACHE).iterdir())) == 1

    # the adapter joins the series after its start checkpoint: drift before and after
    joined = [str(c.path) for c in w.checkpoints] + [str(run.adapter_dir)]
    after = run_analysis(dataclasses.replace(cfg, checkpoints=joined, positions="end"), cache_dir=ws.cache_dir)
    steps = after.summary.set_index("checkpoint")["step"]
    assert steps["repair"] == start.step + 2 and len(steps) == 4
    assert after.tokens.query("checkpoint == 'repair'")["kl_prev"].notna().any()  # drift against its start
    assert after.changes.set_index("to_checkpoint").at["repair", "from_checkpoint"] == "checkpoint-2"  # a branch
    ws.store.close()
