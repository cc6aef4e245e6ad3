"""The analysis orchestrator, its disk cache, and ``workbench score``."""

import json
import subprocess
import sys

import pytest

from core.drift import analysis as an
from core.errors import InputError
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def cfg(quick_world, adapters):
    return an.AnalysisConfig(base=str(quick_world / "model"), checkpoints=str(adapters),
                             data=str(quick_world / "data" / "test.jsonl"), graph=str(quick_world / "concept_graph.json"),
                             base_names=["cxr-demo-tiny-llama"], limit=6, positions="sentence")


def test_run_save_load_round_trip(cfg, tmp_path):
    result = an.run_analysis(cfg)
    assert set(result.summary["checkpoint"]) == {"base", "checkpoint-2", "checkpoint-4"}
    assert result.tokens["traj_id"].nunique() == 6
    back = an.Analysis.load(result.save(tmp_path / "out"))
    assert back.config == cfg
    for name in an.TABLES:
        assert len(getattr(back, name)) == len(getattr(result, name)), name


def test_second_run_comes_from_the_cache_without_loading_models(cfg, tmp_path, monkeypatch):
    first = an.run_analysis(cfg, cache_dir=tmp_path)

    def no_models(*a, **k):
        raise AssertionError("models were loaded although the tables are cached")

    monkeypatch.setattr(an, "load_series", no_models)
    second = an.run_analysis(cfg, cache_dir=tmp_path)
    assert second.tokens.equals(first.tokens) and second.beliefs.equals(first.beliefs)


def test_config_validation_and_old_configs_load():
    with pytest.raises(ValueError, match="positions"):
        an.AnalysisConfig(base="b", data="d", positions="often")
    with pytest.raises(ValueError, match="batch_size"):
        an.AnalysisConfig(base="b", data="d", batch_size=0)
    old = an.AnalysisConfig.from_dict({"base": "b", "data": "d"}, "old.json")  # fields added since: their defaults
    assert old.top_k == 5 and old.chat_template is True and old.max_pixels is None
    with pytest.raises(InputError, match=r"old\.json: unknown field 'removed_field' in the analysis config"):
        an.AnalysisConfig.from_dict({"base": "b", "data": "d", "removed_field": 1}, "old.json")  # one rule: refused


def test_loading_a_folder_that_is_no_analysis_is_named(tmp_path):
    with pytest.raises(InputError, match="not an analysis folder"):
        an.Analysis.load(tmp_path)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "workbench.cli", "score", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli_score_writes_the_tables(quick_world, tmp_path):
    out = _cli("--world", str(quick_world), "--limit", "3", "--positions", "end", "--out", str(tmp_path / "o"),
               "--workspace", str(tmp_path / "ws"))
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp_path / "o").iterdir()} == {f"{t}.parquet" for t in an.TABLES} | {
        "config.json", an.TEXTS, "trajectories.parquet", "by_category.parquet",  # self-contained: texts, ranking
        ".workbench-files.json"}  # what --force may replace
    assert json.loads((tmp_path / "o" / "config.json").read_text())["limit"] == 3


def test_cli_score_bad_inputs_are_named(quick_world, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": "c"}\nnot json\n')
    out = _cli("--base", str(quick_world / "model"), "--data", str(bad), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "bad.jsonl, line 2: not valid JSON" in out.stderr
    out = _cli("--base", str(tmp_path / "nope"), "--data", str(quick_world / "data" / "test.jsonl"),
               "--out", str(tmp_path / "o"), "--no-cache")
    assert out.returncode == 2 and "nope" in out.stderr
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def result(cfg):
    return an.run_analysis(cfg)


def test_portable_save_resolves_paths_against_the_folder(cfg, result, tmp_path):
    import shutil

    world = tmp_path / "world"
    shutil.copytree(ROOT / "sample_data" / "model", world / "model")  # any files at the config's relative spots
    out = result.save(tmp_path / "shipped", portable=True)
    written = json.loads((out / "config.json").read_text())
    assert not written["base"].startswith("/") and written["base"].startswith("..")
    assert an.Analysis.load(out).config.base == cfg.base  # resolved back to the same absolute path


def test_list_analyses_newest_first_skipping_broken_folders(result, tmp_path):
    import os

    older = result.save(tmp_path / "runs" / "older")
    newer = result.save(tmp_path / "runs" / "newer")
    os.utime(older / "config.json", (1, 1))
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "config.json").write_text("{nope")
    found = an.list_analyses(tmp_path / "runs", None, older)  # a folder given twice is listed once
    assert [f.path for f in found] == [newer, older]
    assert "first 6 of test.jsonl" in found[0].describe() and found[0].stamp != found[1].stamp


def test_a_score_job_runs_from_its_saved_config_with_every_field(cfg, tmp_path, monkeypatch):
    """No field is lost on the way to the worker: the job reads the config it was given, whole."""
    from core.drift.job import ScoreOptions
    from core.jobs import registry, worker
    from core.perturb.job import PerturbOptions
    from workbench.cli import job_config, parser

    custom = an.AnalysisConfig(**{**cfg.__dict__, "top_k": 7, "include_prompt": False, "dtype": "float32",
                                  "labels": ["Edema", "Pneumonia"], "template": " </think> Answer:", "tau": 0.2,
                                  "chat_template": False})
    argv, files = registry.command("score", custom, ScoreOptions(out=str(tmp_path / "out"), workspace=str(tmp_path / "ws")))
    assert argv[:3] == ["-m", "core.jobs.worker", "score"]
    job = tmp_path / "job"
    job.mkdir()
    for name, text in files.items():
        (job / name).write_text(text)
    args = worker.parser().parse_args([a.replace("{job}", str(job)) for a in argv[2:]])
    assert an.AnalysisConfig.load(args.config) == custom and args.out == str(tmp_path / "out")
    line = registry.shell_command(argv, files)  # what the page shows: the config, then the console command on it
    assert line.startswith("cat > config.json <<'EOF'\n{") and "\nworkbench score --config config.json --out " in line
    cli_args = parser().parse_args(line.split("\n")[-1].split()[1:])
    (tmp_path / "config.json").write_text(files["config.json"])
    monkeypatch.chdir(tmp_path)
    assert job_config(cli_args, "score") == custom
    pargv, pfiles = registry.command("perturb", cfg, PerturbOptions(out=str(tmp_path / "p.parquet"), find="opacity",
                                                                    replace="lung opacity", mode="probe"))
    pargs = worker.parser().parse_args(pargv[2:])
    assert (pargs.find, pargs.replace, pargs.mode) == ("opacity", "lung opacity", "probe")
    assert json.loads(pfiles["config.json"])["limit"] == 6


def test_core_never_names_the_ui_package():
    import re

    hits = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "core").rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"\bworkbench\.(?!db\b)[A-Za-z_]", line)]
    assert hits == []


def test_a_cancelled_run_keeps_its_finished_batches_and_resumes(cfg, tmp_path, monkeypatch):
    """Scores are stored batch by batch: after a cancel the finished batches stay on disk and the next run
    computes only the rest, with the same tables as a run that was never interrupted."""
    import dataclasses

    from core.drift import scoring
    from core.progress import Cancelled

    small = dataclasses.replace(cfg, batch_size=2)  # 3 batches of 2 trajectories
    asked = []

    def cancel_after_two_batches():
        asked.append(1)
        return len(asked) > 2 * 3  # 3 checkpoints per batch: the third batch is cancelled

    with pytest.raises(Cancelled):
        an.run_analysis(small, cache_dir=tmp_path, should_cancel=cancel_after_two_batches)
    parts = list(tmp_path.glob("tokens-*.parts/*.parquet"))
    assert len(parts) == 2 * 3  # two batches, each under the 3 checkpoints (a folder per checkpoint)
    scored = []
    real = scoring.batch_hidden  # a batch's forward pass under one checkpoint
    monkeypatch.setattr(scoring, "batch_hidden", lambda *a, **k: scored.append(a[3]) or real(*a, **k))  # a[3]: idx
    resumed = an.run_analysis(small, cache_dir=tmp_path)
    assert len({tuple(idx) for idx in scored}) == 1  # only the missing batch ran
    assert len(list(tmp_path.glob("tokens-*.parts/*.parquet"))) == 3 * 3  # kept in parts: the drift step reads
    assert not list(tmp_path.glob("tokens-*.parquet"))  # one at a time, never the whole table
    fresh = an.run_analysis(small)
    assert resumed.tokens[["traj_id", "checkpoint", "position"]].equals(fresh.tokens[["traj_id", "checkpoint", "position"]])
    assert (resumed.tokens["logprob"] - fresh.tokens["logprob"]).abs().max() < 1e-5
    assert resumed.beliefs[["traj_id", "checkpoint", "position"]].equals(fresh.beliefs[["traj_id", "checkpoint", "position"]])
    staged = resumed.folder
    del resumed
    assert not staged.exists()  # the staged tables go with the result


def test_cli_score_runs_from_a_saved_config(cfg, tmp_path):
    import dataclasses

    saved = tmp_path / "analysis.json"
    saved.write_text(json.dumps(dataclasses.asdict(dataclasses.replace(cfg, limit=2, positions="end"))))
    out = tmp_path / "from-config"
    run = subprocess.run([sys.executable, "-m", "workbench.cli", "score", "--config", str(saved), "--out", str(out),
                          "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    back = an.Analysis.load(out)
    assert back.config == dataclasses.replace(cfg, limit=2, positions="end")
    assert back.tokens["traj_id"].nunique() == 2 and (out / "trajectories.jsonl").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    run = subprocess.run([sys.executable, "-m", "workbench.cli", "score", "--config", str(bad), "--out", str(out),
                          "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode != 0 and "bad.json" in run.stderr and "not a valid analysis config" in run.stderr


def test_adding_a_cpo_run_scores_and_probes_it_alone_with_the_same_numbers(cfg, adapters, tmp_path, monkeypatch):
    """The cache is per checkpoint: a run joining a scored analysis is probed alone and scored with only the base
    and its start as references (KL to them); every other checkpoint's parts are read back. The tables equal a
    fresh run of the whole series, bit for bit."""
    import dataclasses
    import shutil

    from core.drift import parts, scoring

    run = tmp_path / "runs" / "fix" / "adapter"  # a CPO run from checkpoint-2, as core.cpo writes one
    shutil.copytree(adapters / "checkpoint-4", run)
    (run / "trainer_state.json").write_text(json.dumps({"global_step": 6, "run_steps": 2}))
    (run.parent / "config.json").write_text(json.dumps({"init_adapter": str(adapters / "checkpoint-2")}))
    before = dataclasses.replace(cfg, batch_size=2,  # 3 batches of the 6 trajectories
                                 checkpoints=[str(adapters / "checkpoint-2"), str(adapters / "checkpoint-4")])
    grown = dataclasses.replace(before, checkpoints=[*before.checkpoints, str(run)])
    cache = tmp_path / "cache"
    an.run_analysis(before, cache_dir=cache)
    probed, scored, kept = [], [], []
    real_probe, real_batches = parts.probe, parts.score_batches
    monkeypatch.setattr(parts, "probe", lambda series, part, *a, **k: probed.append(list(series.names)) or
                        real_probe(series, part, *a, **k))
    monkeypatch.setattr(parts, "score_batches", lambda series, *a, **k: scored.append(list(series.names)) or
                        real_batches(series, *a, **k))
    real_forward = scoring.batch_hidden
    monkeypatch.setattr(scoring, "batch_hidden", lambda *a, **k: kept.append(1) or real_forward(*a, **k))
    result = an.run_analysis(grown, cache_dir=cache)
    assert probed and all(names == ["fix"] for names in probed)  # the probe ran under the new run only
    assert scored == [["base", "checkpoint-2", "fix"]]  # checkpoint-4 is not needed as a reference
    assert len(kept) == 3 * 3  # the forward passes: 3 batches x (base, start, run), not x 4 models
    assert len(list(cache.glob("beliefs-*.parts"))) == 4 and len(list(cache.glob("tokens-*.parts"))) == 4
    monkeypatch.undo()
    fresh = an.run_analysis(grown)  # no cache: the whole series at once
    assert result.tokens.equals(fresh.tokens) and result.beliefs.equals(fresh.beliefs)
    assert result.summary.equals(fresh.summary) and result.changes.equals(fresh.changes)


def test_a_worlds_analysis_probes_with_the_worlds_answer_template(sample_world, tmp_path):
    """A world whose completions answer "Answer: X" is probed with its own template (it kept the default
    " </think> The disease of this patient is", asking in words the model never wrote)."""
    import json
    import shutil

    world = tmp_path / "world"
    shutil.copytree(sample_world, world, ignore=shutil.ignore_patterns("multimodal", "analysis"))
    manifest = json.loads((world / "world.json").read_text())
    manifest["answer_format"] = {"pattern": r"Answer: (?P<answer>.+)", "sentence": "Answer: {}",
                                 "template": " </think> Answer:"}
    (world / "world.json").write_text(json.dumps(manifest))
    assert an.AnalysisConfig.from_world(world).template == " </think> Answer:"
    assert an.AnalysisConfig.from_world(sample_world).template == " </think> The disease of this patient is"
    assert an.AnalysisConfig.from_world(world, template=" X").template == " X"  # what the caller asks wins
