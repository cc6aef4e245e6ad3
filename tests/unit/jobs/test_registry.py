"""The job registry: every kind's command line built in one place, parsed back by the worker into the same config
and options, and a job of each kind started, reporting, cancelled and resumed the same way."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest

from core.config import ConfigBase
from core.jobs import registry, worker
from core.jobs import supervisor as jobs
from tests.conftest import ROOT
from tests.unit.test_config import EXAMPLES

RESERVED = {"config", "command", "world", "dataset"}  # the worker's and the command line's own flags


def _example_options(kind: registry.JobKind):
    return next(v for c, v in EXAMPLES.items() if c is kind.options_class())


@pytest.mark.parametrize("name", list(registry.KINDS))
def test_every_kind_names_a_config_options_and_a_run_function(name):
    kind = registry.KINDS[name]
    config, options = kind.config_class(), kind.options_class()
    assert issubclass(config, ConfigBase) and issubclass(options, ConfigBase) and callable(kind.run_function())
    clash = {f.name for f in dataclasses.fields(config)} & ({f.name for f in dataclasses.fields(options)} | RESERVED)
    assert not clash - ({"world", "dataset"} if not hasattr(config, "from_world") else set()), clash


@pytest.mark.parametrize("name", list(registry.KINDS))
def test_a_kinds_command_line_comes_from_one_place_and_parses_back(name, tmp_path):
    kind = registry.KINDS[name]
    cfg, options = EXAMPLES[kind.config_class()], _example_options(kind)
    argv, files = registry.command(name, cfg, options)
    assert argv == ["-m", "core.jobs.worker", name, "--config", "{job}/config.json", *options.to_argv()]
    assert files == {"config.json": cfg.to_json()}
    job = tmp_path / "job"
    job.mkdir()
    (job / "config.json").write_text(files["config.json"])
    args = worker.parser().parse_args([a.replace("{job}", str(job)) for a in argv[2:]])
    assert kind.config_class().from_args(args, kind.config_class().load(args.config)) == cfg
    assert kind.options_class().from_args(args) == options
    line = registry.shell_command(argv, files)  # the same job for a shell: the config, then the workbench command
    assert line.startswith("cat > config.json <<'EOF'\n{") and f"\nworkbench {name} --config config.json" in line
    run_folder = registry.command(name, options=options, config_path=tmp_path / "run.json")
    assert run_folder == (["-m", "core.jobs.worker", name, "--config", str(tmp_path / "run.json"), *options.to_argv()], {})


def test_no_other_module_builds_a_worker_command_line():
    """``core.jobs.worker`` argv is written in core/jobs/registry.py only; the rest calls command/launch. (The drift
    watch's callback is the one other: one file that runs in the trainer's environment and imports nothing of ours,
    it starts the scorer's job entry itself.)"""
    pattern = re.compile(r"""["']core\.jobs\.worker["']|["']-m["']\s*,\s*["']core\.(?!jobs\.supervisor)""")
    alone = ROOT / "core" / "watch" / "callback.py"
    hits = [f"{p.relative_to(ROOT)}" for folder in ("core", "workbench", "pages") for p in (ROOT / folder).rglob("*.py")
            if p.name != "registry.py" and p != alone and pattern.search(p.read_text())]
    assert hits == []


def test_an_unknown_kind_is_named():
    from core.errors import InputError

    with pytest.raises(InputError, match="job kind 'fly': expected one of score, perturb, visual, train, counterfactuals"):
        registry.get("fly")


class _Ws:
    def __init__(self, root):
        self.jobs_dir = root / "jobs"


def _cancel_each_once_it_reports(started: dict, timeout=300.0) -> None:
    """Cancel each job at its first progress report (all polled together: some kinds run for seconds only)."""
    waiting, deadline = dict(started), time.monotonic() + timeout
    while waiting:
        for name, job in list(waiting.items()):
            p = job.progress()
            if p["done"] > 0:
                assert job.state() == "running", f"{name} ended before it could be cancelled: {job.log_tail()}"
                assert p["done"] < 1 and p["message"], p
                assert job.cancel()
                del waiting[name]
            assert job.state() == "running" or name not in waiting, f"{name}: {job.log_tail()}"
        assert time.monotonic() < deadline, {n: j.log_tail() for n, j in waiting.items()}
        time.sleep(0.05)


def _configs(tmp_path, quick_world, sample_world):
    """A config of each kind, large enough to be cancelled while it runs."""
    from core.counterfactuals.batch import BatchConfig
    from core.cpo.config import TrainConfig
    from core.drift.config import AnalysisConfig
    from core.drift.job import ScoreOptions
    from core.perturb.job import PerturbOptions, VisualOptions
    from core.perturb.visual import VisualConfig
    from core.workspace.workspace import Workspace
    from tests.vl_world import make_vl_world
    from workbench.demo.preferences import build_preferences

    ws = Workspace.open(tmp_path / "ws")
    analysis = AnalysisConfig.from_world(quick_world, batch_size=1, limit=8)
    return ws, {
        "score": (analysis, ScoreOptions(out=str(tmp_path / "a"), cache=False)),
        "perturb": (analysis, PerturbOptions(out=str(tmp_path / "p.parquet"), find="opacity", replace="shadow")),
        "visual": (VisualConfig.from_world(make_vl_world(tmp_path / "vl"), kind="occlusion", grid=8, batch_size=1,
                                           device="cpu"), VisualOptions(out=str(tmp_path / "v.parquet"))),
        "train": (TrainConfig(base_model=str(quick_world / "model"), output_dir=str(tmp_path / "run"), max_steps=400,
                              data=str(build_preferences(quick_world, tmp_path / "pairs.jsonl", n=32)), batch_size=2,
                              base_names=["cxr-demo-tiny-llama"]), None),
        "counterfactuals": (BatchConfig(workspace=str(ws.root), world=str(sample_world), dataset="test", n=700,
                                        mode="all"), None),
    }


@pytest.mark.slow
def test_a_job_of_each_kind_starts_reports_cancels_and_resumes_the_same_way(tmp_path, quick_world, sample_world):
    ws, configs = _configs(tmp_path, quick_world, sample_world)
    started = {name: registry.launch(ws, name, cfg, options, title=f"a {name} job")
               for name, (cfg, options) in configs.items()}
    for name, job in started.items():
        assert job.kind == name and job.argv[:3] == ["-m", "core.jobs.worker", name]
    _cancel_each_once_it_reports(started)
    for name, job in started.items():
        assert job.wait(120) == "cancelled", f"{name}: {job.log_tail()}"
        assert [j.id for j in jobs.list_jobs(ws.jobs_dir, name)] == [job.id]
    again = registry.relaunch(ws, started["score"])  # resumed: the same kind, options and config, a new folder
    assert again.dir != started["score"].dir and again.kind == "score" and again.title == "a score job"
    assert again.argv == [a.replace(str(started["score"].dir), str(again.dir)) for a in started["score"].argv]
    assert (again.dir / "config.json").read_text() == (started["score"].dir / "config.json").read_text()
    assert again.wait(300) == "done", again.log_tail()


def test_job_folders_of_the_previous_version_still_list_and_resume(tmp_path):
    """Jobs written before the registry (kind "cpo", the batch's own entry, a score job's analysis.json) list and
    read as before; resuming one runs what it ran, its config file copied."""
    import json

    folders = {"cpo-1": ("cpo", ["-m", "core.jobs.worker", "train", "--config", str(tmp_path / "run.json")]),
               "counterfactuals-1": ("counterfactuals", ["-m", "core.counterfactuals.batch", str(tmp_path / "b.json")]),
               "score-1": ("score", ["-m", "core.jobs.worker", "score", "--config",
                                     str(tmp_path / "jobs" / "score-1" / "analysis.json"), "--out", "o"])}
    for i, (name, (kind, argv)) in enumerate(folders.items()):
        folder = tmp_path / "jobs" / name
        folder.mkdir(parents=True)
        (folder / "job.json").write_text(json.dumps({"kind": kind, "title": name, "argv": argv, "started_at": i,
                                                     "pid": None, "meta": {}}))
        (folder / "exit.json").write_text(json.dumps({"returncode": 0, "ended_at": i + 1}))
    (tmp_path / "jobs" / "score-1" / "analysis.json").write_text('{"base": "b", "data": "d"}')
    listed = jobs.list_jobs(tmp_path / "jobs")
    assert [j.id for j in listed] == ["score-1", "counterfactuals-1", "cpo-1"] and {j.state() for j in listed} == {"done"}
    again = registry.relaunch(_Ws(tmp_path), listed[0])
    assert again.argv[4] == str(again.dir / "analysis.json") and again.argv[5:] == ["--out", "o"]
    assert (again.dir / "analysis.json").read_text() == '{"base": "b", "data": "d"}'
    again.wait(120)
