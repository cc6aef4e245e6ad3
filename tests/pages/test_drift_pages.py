"""AppTests for the drift pages: Checkpoints, Drift explorer, Perturbation lab (state set first, real data)."""

import time

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from workbench import state


def page(name: str, world, workspace) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=120)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    return at


def texts(at) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


# ---- Drift explorer --------------------------------------------------------------------------------------
def test_explorer_overview_on_the_shipped_analysis(sample_world, tmp_path):
    at = page("explorer", sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception
    facts = {m.label: m.value for m in at.metric}
    assert any("teacher-forced" in c.value and "greedily" in c.value for c in at.caption)  # which accuracy this is
    assert facts["Trajectories"] == "200"
    assert facts["Worst checkpoint"] == "step 160" and facts["Detrimental change"] == "step 160"
    assert len(at.get("plotly_chart")) == 2  # summary over steps, accuracy per category
    drivers = at.dataframe(key="drivers-token").value
    assert len(drivers) > 0 and set(drivers["direction"]) == {"detrimental"}
    assert drivers["mean_effect_drift"].is_monotonic_increasing  # most detrimental first
    at.radio(key="driver_kind").set_value("concept").run()
    concepts = at.dataframe(key="drivers-concept").value
    assert not at.exception and len(concepts) > 0 and "concept" in concepts.columns


def test_explorer_trajectory_view_switches_trajectories_and_metrics(sample_world, tmp_path):
    at = page("explorer", sample_world, tmp_path / "ws")
    at.run()
    at.segmented_control[0].set_value("Trajectory").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2  # heatmap, belief lines
    picker = at.selectbox(key="explorer_trajectory")
    assert picker.options[0].startswith(picker.value + " · ") and "Lung Lesion" in picker.options[0]
    heat = at.get("plotly_chart")[0].proto.spec
    assert "checkpoint-160" in heat and "&lt;think&gt;" in heat  # rows by checkpoint, tokens escaped
    # the default colouring names itself, and each belief is said to be the gold answer's
    label = at.selectbox(key="traj_metric").format_func(at.selectbox(key="traj_metric").value)
    assert label.startswith("effect drift:") and "that change" not in label
    assert any(m.value.count("· belief in the gold answer") == 2 for m in at.markdown)
    picker.set_value(picker.options[5].split(" · ")[0]).run()
    assert not at.exception and at.session_state[state.TRAJECTORY] == picker.value
    at.segmented_control(key="traj_belief_view").set_value("Every answer, one checkpoint").run()
    assert not at.exception and at.select_slider(key="traj_checkpoint").value == "checkpoint-160"
    assert "Lung Opacity" in at.get("plotly_chart")[1].proto.spec  # the answer it drifted to is drawn
    for metric in ("prob", "kl_prev", "effect"):
        at.selectbox(key="traj_metric").set_value(metric).run()
        assert not at.exception
    at.multiselect(key="traj_labels").set_value(["Edema"]).run()
    assert all("Edema" in o for o in at.selectbox(key="explorer_trajectory").options)
    at.text_input(key="traj_contains").input("no such words anywhere").run()
    assert "No trajectory matches" in at.warning[0].value


def test_explorer_without_any_analysis_points_to_checkpoints(tmp_path):
    at = page("explorer", tmp_path / "no-world", tmp_path / "ws")
    at.run()
    assert not at.exception
    assert "Cannot open the world" in at.warning[0].value
    assert "No drift analysis yet" in at.info[0].value


# ---- Checkpoints -----------------------------------------------------------------------------------------
def test_checkpoints_page_shows_the_sample_series_and_the_command(sample_world, tmp_path):
    at = page("checkpoints", sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception and not at.error
    series = at.dataframe[0].value
    assert list(series["step"]) == [40, 80, 120, 160, 200, 240] and series["reward"].notna().all()
    command = at.code[0].value
    # the job's config, written out, then the command that runs from it
    assert command.startswith("cat > config.json <<'EOF'") and '"limit": 50' in command
    assert "\nworkbench score --config config.json --out " in command
    assert not at.button(key="ck_run").disabled
    # the limit is beside the Score button, not in the collapsed settings, and says how much of the data it takes
    assert not any(n.key == "ck_limit" for e in at.expander for n in e.number_input)
    assert any("first **50** of **700** trajectories" in c.value for c in at.caption)


def test_checkpoints_bad_folders_and_files_get_clear_messages(sample_world, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path))
    at = page("checkpoints", sample_world, tmp_path / "ws")
    at.run()
    at.radio(key="ck_source").set_value("Local folders").run()
    at.text_input(key="ck_base").input(str(sample_world / "model")).run()
    at.text_input(key="ck_series").input(str(sample_world / "data")).run()
    assert not at.exception
    assert "no checkpoint-N/ folders found" in at.error[0].value and str(sample_world / "data") in at.error[0].value
    at.text_input(key="ck_base").input(str(sample_world / "rft" / "checkpoint-40")).run()
    assert "looks like an adapter" in at.error[0].value
    bert = tmp_path / "bert-base"  # a model folder of a family the workbench does not have
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert", "hidden_size": 32}')
    (bert / "model.safetensors").write_bytes(b"")  # never read: the config's model_type is refused first
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bert / name).write_bytes((sample_world / "model" / name).read_bytes())
    at.text_input(key="ck_base").input(str(bert)).run()
    assert not at.exception
    assert "model_type 'bert' is not a supported model family" in at.error[0].value
    assert "qwen_vl (vision-language: qwen2_vl, qwen2_5_vl, qwen3_vl)" in at.error[0].value
    at.text_input(key="ck_base").input(str(sample_world / "model")).run()
    at.text_input(key="ck_series").input(str(sample_world / "rft")).run()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    at.radio(key="ck_data_kind").set_value("A JSONL file").run()
    at.text_input(key="ck_data").input(str(empty)).run()
    assert not at.exception
    assert any("no trajectories" in e.value and str(empty) in e.value for e in at.error)
    assert not [b for b in at.button if b.key == "ck_run"] and not at.code  # nothing to run until it is fixed


@pytest.mark.slow
def test_checkpoints_scores_in_the_background_and_lists_the_result(quick_world, tmp_path):
    at = page("checkpoints", quick_world, tmp_path / "ws")
    at.run()
    at.number_input(key="ck_limit").set_value(3).run()
    at.button(key="ck_run").click().run()
    assert not at.exception
    deadline = time.monotonic() + 120
    while "· running ·" in texts(at) or "· done ·" not in texts(at):
        assert time.monotonic() < deadline, texts(at)
        time.sleep(1)
        at.run()
    assert "· done ·" in texts(at)
    listed = at.dataframe(key="ck_analyses").value
    assert "test-" in listed.iloc[0]["analysis"] and listed.iloc[0]["trajectories"] == 3


# ---- Perturbation lab ------------------------------------------------------------------------------------
def test_perturbation_lab_swaps_a_finding_in_one_trajectory(sample_world, tmp_path):
    at = page("perturbation", sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception
    at.selectbox(key="lab_trajectory").set_value("test-00119").run()
    finding = at.selectbox(key="lab_pick")
    assert "masslike density" in finding.format_func(finding.value)
    at.button(key="lab_run").click().run()
    assert not at.exception
    summary = [m.value for m in at.markdown if "→" in m.value][0]
    assert "masslike density → mass" in summary and "of 7 checkpoints" in summary
    rows = at.dataframe[0].value
    assert len(rows) == 7 and {"answer_before", "answer_after", "flip"} <= set(rows.columns)
    # before the swap, the report reads "masslike density": the base answers Lung Lesion, step 160 Lung Opacity
    by = rows.set_index("checkpoint")
    assert by.at["base", "answer_before"] == "Lung Lesion" and by.at["checkpoint-160", "answer_before"] == "Lung Opacity"
    default_pair = at.selectbox(key="lab_pair")
    assert default_pair.format_func(default_pair.value) == "consolidation → airspace opacity"
    assert "--find consolidation --replace 'airspace opacity'" in at.code[0].value


def _analysis_with_a_branch(sample_world, ws):
    """The shipped analysis, with checkpoint-240's rows standing in for a CPO run 'fix-1' from checkpoint-160
    (a real run's adapter folder layout, real tables): what the explorer gets after scoring a joined run."""
    import json
    import shutil

    import pandas as pd

    out = ws / "analyses" / "with-run"
    shutil.copytree(sample_world / "analysis", out)
    adapter = ws / "runs" / "cpo" / "fix-1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "trainer_state.json").write_text(json.dumps({"global_step": 220, "run_steps": 60}))
    (adapter.parent / "config.json").write_text(json.dumps({"init_adapter": str(sample_world / "rft" / "checkpoint-160")}))
    for f in out.glob("*.parquet"):
        t = pd.read_parquet(f)
        if "checkpoint" in t:
            t["checkpoint"] = t["checkpoint"].replace("checkpoint-240", "fix-1")
            t.to_parquet(f)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(base=str(sample_world / "model"), data=str(sample_world / "data" / "test.jsonl"),
               graph=str(sample_world / "concept_graph.json"),
               checkpoints=[str(sample_world / "rft" / f"checkpoint-{s}") for s in (40, 80, 120, 160, 200)] + [str(adapter)])
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_explorer_shows_a_cpo_run_as_a_branch_with_start_vs_repaired(sample_world, tmp_path):
    out = _analysis_with_a_branch(sample_world, tmp_path / "ws")
    at = page("explorer", sample_world, tmp_path / "ws")
    at.session_state[state.ANALYSIS] = str(out)
    at.run()
    assert not at.exception
    assert at.selectbox(key="branch_run").value == "fix-1"
    frames = [d.value for d in at.dataframe]
    summary = next(f for f in frames if "model" in f.columns)
    assert summary["model"].tolist() == ["start: checkpoint-160", "repaired: fix-1"]
    flips = next(f for f in frames if "flip" in f.columns)
    assert set(flips["flip"]) <= {"fixed", "broken", "changed"} and len(flips) > 0
    assert any("mean_logprob_change" in f.columns for f in frames)
    assert any(("fixed" in m.value and "broken" in m.value) for m in at.markdown)
    spec = at.get("plotly_chart")[0].proto.spec
    assert "CPO run fix-1 (from checkpoint-160" in spec
    table = next(f for f in frames if "branch_of" in f.columns)
    assert table.set_index("checkpoint").at["fix-1", "branch_of"] == "checkpoint-160"
    at.session_state[state.EXPLORER_VIEW] = "Trajectory"
    at.run()
    assert not at.exception and at.selectbox(key="traj_branch_run").value == "fix-1"
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("start: checkpoint-160" in s and "repaired: fix-1" in s for s in specs)


def test_checkpoints_page_reads_a_typed_path_with_tilde(sample_world, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path / "home"))  # typed paths stay inside the data roots
    shutil.copytree(sample_world / "data", tmp_path / "home" / "data")
    at = page("checkpoints", sample_world, tmp_path / "ws")
    at.run()
    at.radio(key="ck_data_kind").set_value("A JSONL file").run()
    at.text_input(key="ck_data").input("~/data/test.jsonl").run()
    assert not at.exception and not at.error
    assert f'"data": "{tmp_path / "home" / "data" / "test.jsonl"}"' in at.code[0].value  # the job's config


def test_checkpoints_page_lists_a_joined_cpo_run_as_a_branch_of_its_start(sample_world, tmp_path):
    import json
    import shutil

    from core.workspace.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    adapter = ws.runs_dir / "cpo" / "fix-1" / "adapter"
    shutil.copytree(sample_world / "rft" / "checkpoint-240", adapter)  # any adapter of this base
    (adapter / "trainer_state.json").write_text(json.dumps({"global_step": 220, "run_steps": 60}))
    config = {"init_adapter": str(sample_world / "rft" / "checkpoint-160")}
    (adapter.parent / "config.json").write_text(json.dumps(config))
    with ws.store.transaction() as con:
        con.execute("INSERT INTO runs (name, objective, config, data, snapshot, world, status, job, output_dir, "
                    "evaluation, created_at, updated_at) VALUES ('fix-1', 'cpo', ?, 'x', NULL, ?, 'done', NULL, ?, "
                    "NULL, 0, 0)", (json.dumps(config), str(sample_world), str(adapter.parent)))
    at = page("checkpoints", sample_world, tmp_path / "ws")
    at.run()
    at.multiselect(key="ck_runs").set_value(["fix-1"]).run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value.set_index("checkpoint")
    assert table.at["fix-1", "branch_of"] == "checkpoint-160 + 60 CPO steps"
    assert table.at["checkpoint-200", "branch_of"] == ""


def test_explorer_names_no_worst_checkpoint_when_all_are_equal(sample_world, tmp_path):
    """A run whose probe accuracy is the same at every checkpoint (a tiny foreign run reads 0.00 everywhere) has no
    worst checkpoint: the first one is not named as if it were worse."""
    import shutil

    import pandas as pd

    world = tmp_path / "world"
    shutil.copytree(sample_world, world, ignore=shutil.ignore_patterns("multimodal"))
    summary = pd.read_parquet(world / "analysis" / "summary.parquet")
    summary["accuracy"] = 0.0
    summary.to_parquet(world / "analysis" / "summary.parquet")
    at = page("explorer", world, tmp_path / "ws")
    at.run()
    assert not at.exception
    worst = next(m for m in at.metric if m.label == "Worst checkpoint")
    assert worst.value == "none worse"


def test_explorer_without_a_probed_gold_answer_names_the_worst_checkpoint_by_kl(sample_world, tmp_path):
    """No trajectory's gold answer was probed (every gold unread, or none among the probe's labels): accuracy is
    NaN at every checkpoint, and the overview names the worst checkpoint by KL to base (idxmin over all-NaN
    accuracies raised ValueError)."""
    import shutil

    import pandas as pd

    world = tmp_path / "world"
    shutil.copytree(sample_world, world, ignore=shutil.ignore_patterns("multimodal"))
    summary = pd.read_parquet(world / "analysis" / "summary.parquet")
    summary["accuracy"] = float("nan")
    summary.to_parquet(world / "analysis" / "summary.parquet")
    at = page("explorer", world, tmp_path / "ws")
    at.run()
    assert not at.exception, at.exception[0].value
    worst = next(m for m in at.metric if m.label == "Worst checkpoint")
    top = summary.loc[summary["kl_base"].idxmax()]
    assert worst.value == f"step {int(top['step'])}" and "KL to base" in worst.delta
