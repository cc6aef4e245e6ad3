"""Compare with "Evaluate on the first N" (issue 24): a run evaluated on the first N held-out studies is compared with
its start on the same N studies (evaluated by the run's job, cached per start, N and data), and the table says which
studies each row covers; a run evaluated before this keeps a note instead of a silent gap."""

import json

import pytest

from core.cpo import job, runs
from core.cpo.starts import START_FIGURES, STUDIES
from core.workspace import world as world_mod
from tests.conftest import SAMPLE_GRAPH


def _run(id_, name, evaluation):
    return runs.Run(id_, name, "cpo", {}, "d", None, "/w", "done", None, "/w", None, evaluation, float(id_), 0.0)


START = {"accuracy": 0.25, "flip_rate": 0.5, "malformed": 0.0, "studies": 4, "checkpoint": "checkpoint-2",
         "held_out_limit": 4, "held_out_span": "study-0 … study-3"}


def test_runs_on_the_first_n_compare_with_their_start_on_the_same_studies():
    quick = {"accuracy": 0.75, "flip_rate": 0.25, "studies": 4, "held_out_limit": 4, "held_out_span": "study-0 … study-3",
             START_FIGURES: START}
    again = {**quick, "accuracy": 0.5}
    full = {"accuracy": 0.6, "studies": 12}
    table = runs.comparison([_run(1, "quick", quick), _run(2, "again", again), _run(3, "full", full)],
                            {"accuracy": 0.4, "studies": 12})
    assert list(table["run"]) == ["before (start checkpoint)", "before (checkpoint-2, first 4)", "quick", "again", "full"]
    assert list(table[STUDIES]) == ["all", "first 4 (study-0 … study-3)", "first 4 (study-0 … study-3)",
                                    "first 4 (study-0 … study-3)", "all"]
    assert table.set_index("run").at["before (checkpoint-2, first 4)", "accuracy"] == 0.25
    assert "checkpoint" not in table and START_FIGURES not in table  # the start's figures are its own row
    assert runs.start_note([_run(1, "quick", quick)], None) is None  # every row has its start: nothing to say
    assert runs.worse_than_start(again, None) == []  # 0.5 > 0.25 on the same four studies
    assert runs.worse_than_start({**quick, "accuracy": 0.0}, None) == ["accuracy 0.000 < 0.250 at the start"]


def test_a_start_evaluated_again_with_other_figures_keeps_each_runs_own_start_row():
    """Two runs from one start on the same N whose start figures differ (the held-out file changed between them, or
    another pixel limit): each keeps its own start row, the second named for its run (it sat under the first's)."""
    quick = {"accuracy": 0.75, "studies": 4, "held_out_limit": 4, START_FIGURES: START}
    later = {**quick, START_FIGURES: {**START, "accuracy": 0.5, "held_out_span": "study-9 … study-12"}}
    table = runs.comparison([_run(1, "quick", quick), _run(2, "later", later)])
    assert list(table["run"]) == ["before (checkpoint-2, first 4)", "before (checkpoint-2, first 4, for later)",
                                  "quick", "later"]
    assert list(table["accuracy"][:2]) == [0.25, 0.5]


def test_a_run_evaluated_on_n_before_starts_were_says_why_it_has_no_start_row():
    old = _run(1, "old", {"accuracy": 0.5, "held_out_limit": 8})
    assert list(runs.comparison([old], {"accuracy": 0.4})["run"]) == ["old"]
    note = runs.start_note([old], {"accuracy": 0.4})
    assert "old (8 studies)" in note and "first studies only" in note and "run it again" in note
    assert runs.worse_than_start(old.evaluation, {"accuracy": 0.9}) == []  # the whole set's figures do not compare


@pytest.mark.slow
def test_the_start_is_evaluated_on_the_same_first_n_studies_once(foreign_run, tmp_path):
    """The foreign TRL run as a world with a held-out set: its checkpoint-2 on the first 4 studies, as a run from it
    evaluated on 4 is; cached, so a second run from that start on 4 decodes nothing again."""
    w = world_mod.create_world(tmp_path / "trl", "trl", foreign_run["base"], [foreign_run["run"]],
                               [foreign_run["train"]], SAMPLE_GRAPH, held_out=foreign_run["heldout"])
    start = next(c for c in w.checkpoints if c.name == "checkpoint-2").path
    cache = tmp_path / "cache"
    figures = job.start_figures(w.root, w.base_model_dir, start, 4, cache_dir=cache, name="checkpoint-2")
    direct = runs.evaluate_adapter(w.root, start, 4)
    assert {k: figures[k] for k in direct} == direct and figures["studies"] == 4  # the same evaluation, on 4
    first_ids = [json.loads(x).get("id") for x in foreign_run["heldout"].read_text().splitlines()[:4]]
    assert figures["held_out_span"] == f"{first_ids[0]} … {first_ids[3]}"
    [cached] = list(cache.iterdir())
    stamp = cached.stat().st_mtime_ns
    assert job.start_figures(w.root, w.base_model_dir, start, 4, cache_dir=cache, name="checkpoint-2") == figures
    assert cached.stat().st_mtime_ns == stamp  # read back, not evaluated again
    job.start_figures(w.root, w.base_model_dir, start, 2, cache_dir=cache)  # another N: its own entry
    job.start_figures(w.root, w.base_model_dir, None, 4, cache_dir=cache)  # another start (the base)
    assert len(list(cache.iterdir())) == 3


@pytest.mark.slow
def test_a_start_that_fails_to_evaluate_leaves_the_runs_own_figures(sample_world, tmp_path, monkeypatch, capsys):
    """The run's job evaluated on the first N: its start's evaluation failing with any error (out of memory, a
    model error while loading it) leaves the run's own figures in evaluation.json, the job done and a warning
    naming the error; Compare then says the start row is missing (it lost the run's figures: the job failed)."""
    from core.cpo.config import TrainConfig, TrainOptions
    from workbench.demo.preferences import build_preferences

    pairs = build_preferences(sample_world, tmp_path / "pairs.jsonl", n=8, seed=0)
    cfg = TrainConfig(base_model=str(sample_world / "model"), data=str(pairs), output_dir=str(tmp_path / "run"),
                      init_adapter=str(sample_world / "rft" / "checkpoint-160"), max_steps=1, batch_size=4,
                      learning_rate=1e-3,
                      base_names=[json.loads((sample_world / "world.json").read_text())["base_model_name"]])

    def out_of_memory(*args, **kwargs):  # what a start too large for the device left does while loading
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(job, "start_figures", out_of_memory)
    assert job.run_train(cfg, TrainOptions(evaluate=str(sample_world), evaluate_limit=3)) == 0
    evaluation = json.loads((tmp_path / "run" / runs.EVALUATION_FILE).read_text())
    assert evaluation["studies"] == 3 and evaluation["held_out_limit"] == 3 and "accuracy" in evaluation
    assert START_FIGURES not in evaluation
    assert "the start (checkpoint-160) was not evaluated on the same studies: RuntimeError: CUDA out of memory" \
        in capsys.readouterr().err
