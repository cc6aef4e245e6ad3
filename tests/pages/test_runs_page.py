"""AppTest for the CPO runs page: the launch form on the sample world, and a real short run on the quick
world launched, watched to the end, evaluated and compared."""

import time

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from workbench import state


def page(world, workspace) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=300)
    at.session_state[state.WORLD_PATH] = str(world)
    at.session_state[state.WORKSPACE_PATH] = str(workspace)
    return at


def test_launch_form_defaults_to_the_drifted_checkpoint(sample_world, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path))
    at = page(sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception and not at.error
    assert at.selectbox(key="run_start").value == "checkpoint-160"  # the world's least accurate checkpoint
    command = at.code[0].value
    assert command.startswith("cat > config.json <<'EOF'\n")  # the config it names is written first (issue 24)
    assert f"workbench train --config config.json --evaluate {sample_world}" in command
    assert any("Pre-flight:" in c.value and "pairs" in c.value for c in at.caption)
    at.selectbox(key="run_data").set_value("a TRL preference file").run()
    at.text_input(key="run_file").input(str(tmp_path / "missing.jsonl")).run()
    assert not at.exception and any("missing.jsonl" in e.value for e in at.error)
    assert not [b for b in at.button if b.key == "run_launch"]


@pytest.mark.slow
def test_a_short_run_finishes_is_evaluated_and_compared(quick_world, tmp_path):
    at = page(quick_world, tmp_path / "ws")
    at.run()
    at.selectbox(key="run_start").set_value("checkpoint-4")
    at.number_input(key="run_max_steps").set_value(2)
    at.number_input(key="run_batch_size").set_value(4)
    at.text_input(key="run_name").input("cpo-quick").run()
    assert not at.exception and not at.error
    at.button(key="run_launch").click().run()
    assert not at.exception
    fresh = at.text_input(key="run_name").value
    assert fresh and fresh != "cpo-quick"  # the field shows the next run's name, as the command below it does
    command = at.code[0].value  # writes the config.json it names, whose output_dir is the next run's folder
    assert "cat > config.json" in command and f'/cpo/{fresh}"' in command and "--config config.json" in command
    deadline = time.monotonic() + 300
    while True:
        at.run()
        status = " ".join(m.value for m in at.markdown)
        if "cpo-quick: running" not in status and "cpo-quick:" in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert "**cpo-quick: done**" in status, [c.value for c in at.code]
    assert len(at.get("plotly_chart")) >= 1  # the run's curves
    table = at.dataframe[-1].value
    assert list(table["run"]) == ["before (start checkpoint)", "cpo-quick"]
    assert 0 <= table.iloc[1]["accuracy"] <= 1 and "flip_rate" in table.columns


def _tiny_snapshot(workspace) -> str:
    from core.curation import queue as curation
    from core.curation import snapshots
    from core.workspace.workspace import Workspace
    from tests.curation_data import write_ccf
    from workbench.demo import SAMPLE_WORLDS

    ws = Workspace.open(workspace)
    world = str(SAMPLE_WORLDS["text"].resolve())  # the world the runs page opens
    snapshots.import_file(ws.store, write_ccf(workspace.parent / "ccf.json", n=1), world=world)
    curation.annotate(ws.store, 1, "ada", "accept")
    snap = snapshots.export_snapshot(ws.store, ws.root / "exports", snapshots.ExportConfig(format="trl", name="one"),
                                     world=world)
    return f"snapshot: {snap.name} ({snap.row_count} pairs)"


def test_a_tiny_snapshot_is_not_preselected_warns_and_a_choice_survives_other_pages(sample_world, tmp_path):
    label = _tiny_snapshot(tmp_path / "ws")
    at = page(sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception and label in at.selectbox(key="run_data").options
    assert at.selectbox(key="run_data").value == "the sample preference set (SFT split)"
    at.selectbox(key="run_data").set_value(label).run()
    assert any("only 1 pairs" in w.value for w in at.warning)
    again = page(sample_world, tmp_path / "ws")  # back from another page: widget state gone, the rest kept
    again.session_state[state.RUN_DATA] = at.session_state[state.RUN_DATA]
    again.run()
    assert again.selectbox(key="run_data").value == label


def _fake_run(workspace, world, status: str, evaluation: dict | None = None, metrics: list[dict] = ()):
    """A run row as core.cpo.runs writes it; a running one gets a real (sleeping) job."""
    import json

    from core.jobs import supervisor as jobs
    from core.workspace.workspace import Workspace

    ws = Workspace.open(workspace)
    out = ws.runs_dir / "cpo" / "r1"
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    job = jobs.start(ws.runs_dir, "cpo", ["-c", "import time; time.sleep(120)"]) if status == "running" else None
    config = {"init_adapter": str(world / "rft" / "checkpoint-160")}
    with ws.store.transaction() as con:
        con.execute("INSERT INTO runs (name, objective, config, data, snapshot, world, status, job, output_dir, "
                    "evaluation, created_at, updated_at) VALUES ('r1', 'cpo', ?, 'x', NULL, ?, ?, ?, ?, ?, 0, 0)",
                    (json.dumps(config), str(world), status, str(job.dir) if job else None, str(out),
                     json.dumps(evaluation) if evaluation else None))
    return job


def test_a_running_run_whose_first_metrics_have_no_speed_renders(sample_world, tmp_path):
    job = _fake_run(tmp_path / "ws", sample_world, "running",
                    metrics=[{"step": 1, "loss": 0.7, "tokens_per_second": None, "gpu_memory_gb": None}])
    try:
        at = page(sample_world, tmp_path / "ws")
        at.run()
        assert not at.exception
        text = at.get("progress")[0].proto.text
        assert "r1: running" in text and "tokens/s" not in text and "GPU" not in text
    finally:
        job.cancel()


def test_a_run_worse_than_its_start_says_so(sample_world, tmp_path):
    _fake_run(tmp_path / "ws", sample_world, "done", evaluation={"accuracy": 0.527, "flip_rate": 0.05})
    at = page(sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception
    warned = [w.value for w in at.warning if "worse than its start" in w.value]
    assert warned and "checkpoint-160" in warned[0] and "accuracy 0.527 < 0.587" in warned[0]
    assert "flip rate" not in warned[0]  # 0.05 is better than the start's 0.104


@pytest.mark.slow
def test_a_vl_runs_examples_show_each_sides_image_beside_its_text(tmp_path, monkeypatch):
    """A run on a vision-language world: its examples show the study's X-ray beside the chosen and rejected
    texts, and a visual pair (same CoT, another image) shows each side with its own image."""
    from core.cpo import runs
    from core.cpo.config import TrainConfig
    from core.workspace.workspace import Workspace
    from tests.vl_pairs import write_vl_pairs
    from tests.vl_world import HUB_ID, make_vl_world

    world = make_vl_world(tmp_path / "vl")
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path))
    data = write_vl_pairs(tmp_path / "vl", tmp_path / "vl" / "pairs" / "train.jsonl", n=4)
    ws = Workspace.open(tmp_path / "ws")
    cfg = TrainConfig(base_model=str(tmp_path / "vl" / "Qwen2.5-VL-tiny"), data=str(data), output_dir="unused",
                      max_steps=1, batch_size=2, base_names=[HUB_ID])
    run = runs.launch(ws, cfg, "vl-run", world=world)
    deadline = time.monotonic() + 120
    while (run := runs.refresh(ws, run.id)).status == "running":
        assert time.monotonic() < deadline, run.job_handle().log_tail()
        time.sleep(0.5)
    assert run.status == "done", run.error
    ws.store.close()
    at = page(world, tmp_path / "ws")
    at.run()
    assert not at.exception
    captions = [img.proto.imgs[0].caption for img in at.get("image")]
    assert captions.count("the study's image") == 2  # the two text pairs: one image beside both texts
    assert captions.count("Chosen side's image") == 1 and captions.count("Rejected side's image") == 1
    shown = " ".join(m.value for m in at.markdown)
    assert "visual pair: same chain of thought" in shown and "**Rejected:** \\<think\\>" in shown


def test_the_launch_form_checks_pairs_with_images_on_a_vl_world(tmp_path, monkeypatch):
    """On a vision-language world the pre-flight reads the pairs' images and tokenizes their prompts with the
    image tokens; a missing image is named with its line and path, and nothing can be launched."""
    import json

    from tests.vl_pairs import write_vl_pairs
    from tests.vl_world import make_vl_world

    world = make_vl_world(tmp_path / "vl")
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path))
    data = write_vl_pairs(tmp_path / "vl", tmp_path / "vl" / "pairs" / "train.jsonl", n=4)
    at = page(world, tmp_path / "ws")
    at.run()
    at.selectbox(key="run_data").set_value("a TRL preference file").run()
    at.text_input(key="run_file").input(str(data)).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Pre-flight: 4 pairs" in c.value for c in at.caption)
    assert [b for b in at.button if b.key == "run_launch"]
    at.number_input(key="run_visual_weight").set_value(2.5).run()  # the visual pairs' own CPO++ weight
    launch = at.button(key="run_launch").click().run()
    assert not launch.exception
    from core.cpo import runs
    from core.workspace.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    (run,) = runs.list_runs(ws.store)
    assert run.config["source_weights"] == {"image_swap": 2.5}
    runs.cancel(ws, run.id)  # the form is what is tested here, not the run
    _wait(lambda: runs.refresh(ws, run.id).status != "running", 120)
    ws.store.close()
    broken = data.with_name("broken.jsonl")
    rec = json.loads(data.read_text().splitlines()[0])
    broken.write_text(json.dumps({**rec, "images": ["gone.jpg"]}) + "\n")
    at.text_input(key="run_file").input(str(broken)).run()
    shown = [e.value.replace("\\", "") for e in at.error]  # as rendered: markdown escapes (inert) resolved
    assert not at.exception and any("line 1, images[0]: image not found" in e and "gone.jpg" in e for e in shown)
    assert not [b for b in at.button if b.key == "run_launch"]


def _wait(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.3)


@pytest.mark.slow  # a real CPO step and evaluation job on the tiny VL model: ~18 s on 2 cores
def test_a_vl_run_is_evaluated_on_its_held_out_x_rays_and_compared(tmp_path, monkeypatch):
    """A CPO run on a vision-language world with a held-out set: the job evaluates the new adapter with each
    study's X-ray (core.models.vl_generation), and the runs page shows its held-out figures and the comparison."""
    import json

    from core.cpo import runs
    from core.cpo.config import TrainConfig
    from core.workspace.workspace import Workspace
    from tests.vl_pairs import write_vl_pairs
    from tests.vl_world import HUB_ID, make_vl_world

    world = make_vl_world(tmp_path / "vl", held_out=4)
    monkeypatch.setenv("WORKBENCH_DATA_ROOTS", str(tmp_path))
    data = write_vl_pairs(tmp_path / "vl", tmp_path / "vl" / "pairs" / "train.jsonl", n=4)
    ws = Workspace.open(tmp_path / "ws")
    cfg = TrainConfig(base_model=str(tmp_path / "vl" / "Qwen2.5-VL-tiny"), data=str(data), output_dir="unused",
                      max_steps=1, batch_size=2, base_names=[HUB_ID])
    run = runs.launch(ws, cfg, "vl-eval-run", world=world)
    _wait(lambda: runs.refresh(ws, run.id).status != "running", 180)
    run = runs.refresh(ws, run.id)
    assert run.status == "done", run.error
    log = run.job_handle().log_tail(40)
    assert "has no held-out set" not in log and "accuracy" in log, log  # figures printed, not the old excuse
    saved = json.loads((run.output_dir / runs.EVALUATION_FILE).read_text())
    assert saved == run.evaluation and saved["studies"] == 4 and saved["perturbation"] == "graph synonyms"
    # the tiny model answers nothing readable: a malformed answer is not a flip, so no flip rate is claimed
    assert "malformed" in saved and (saved["flip_rate"] is None) == (saved["malformed"] == 1.0)
    ws.store.close()
    at = page(world, tmp_path / "ws")
    at.run()
    assert not at.exception
    assert any("On the held-out sets" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table["run"]) == ["vl-eval-run"] and 0 <= table.iloc[0]["accuracy"] <= 1
    assert "flip_rate" in table.columns and "perturbed_accuracy" in table.columns
    assert any(s.value == "Compare" for s in at.subheader)


def _widget_keys(at) -> set[str]:
    kinds = ("number_input", "selectbox", "toggle", "text_input", "radio", "checkbox")
    return {w.key for kind in kinds for w in at.get(kind) if w.key}


def test_every_config_field_has_a_widget_from_the_form_helper(sample_world, tmp_path):
    """The settings forms are generated from the configs (workbench.forms): every field a page does not set itself
    has its widget, so a field added to a config appears on its page without a page change."""
    import dataclasses

    from core.cpo.config import TrainConfig
    from core.drift.config import AnalysisConfig

    for name, cls, form, own in (("runs", TrainConfig, "run", {"base_model", "data", "output_dir", "init_adapter",
                                                                "resume", "base_names", "source_weights",
                                                                "image_roots"}),
                                 ("checkpoints", AnalysisConfig, "ck", {"base", "checkpoints", "base_names", "data",
                                                                         "graph", "limit", "trust_remote_code"})):
        at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=120)
        at.session_state[state.WORLD_PATH] = str(sample_world)
        at.session_state[state.WORKSPACE_PATH] = str(tmp_path / "ws")
        at.run()
        assert not at.exception
        vl_only = {"min_pixels", "max_pixels"}  # a text world: no image settings
        expected = {state.setting(form, f.name) for f in dataclasses.fields(cls)} - {
            state.setting(form, n) for n in own | vl_only}
        assert expected <= _widget_keys(at), sorted(expected - _widget_keys(at))


def test_the_page_shows_the_open_worlds_runs_and_snapshots_only(sample_world, tmp_path):
    """Two worlds in one workspace (issue 24): the sample world's run, and a run and a snapshot of a researcher's
    TRL world; the sample world's page lists, compares and offers only its own."""
    import json

    from core.workspace.workspace import Workspace

    _fake_run(tmp_path / "ws", sample_world, "done", evaluation={"accuracy": 0.9, "flip_rate": 0.05})
    ws = Workspace.open(tmp_path / "ws")
    other = tmp_path / "worlds" / "trl-run"
    other_snapshot = tmp_path / "datasets" / "theirs"
    other_snapshot.mkdir(parents=True)
    (other_snapshot / "train.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    with ws.store.transaction() as con:
        con.execute("INSERT INTO runs (name, objective, config, data, snapshot, world, status, output_dir, evaluation, "
                    "created_at, updated_at) VALUES ('theirs', 'cpo', '{}', 'x', NULL, ?, 'done', ?, ?, 1, 1)",
                    (str(other), str(tmp_path / "o"), json.dumps({"accuracy": 0.1})))
        con.execute("INSERT INTO dataset_snapshots (name, path, format, split, row_count, content_hash, config, "
                    "created_at, world) VALUES ('theirs', ?, 'trl', '{\"rows\": {}}', 1, 'h', '{}', 0, ?)",
                    (str(other_snapshot), str(other)))
    at = page(sample_world, tmp_path / "ws")
    at.run()
    assert not at.exception
    assert at.selectbox(key=state.RUN_SELECTED).options == ["r1 · cpo"]  # not the other world's run
    assert not any("theirs" in o for o in at.selectbox(key="run_data").options)
    assert "theirs" not in list(at.dataframe[-1].value["run"])  # Compare: this world's runs beside its start
