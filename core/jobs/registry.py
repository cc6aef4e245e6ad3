"""The engine's job kinds, and the one way a job of any kind is started, tracked, cancelled and resumed.

Each kind is a config class (what the job does, saved as JSON), an options class (where its result goes and how
it runs: ``--out``, ``--force``...) and a run function ``run(cfg, options, progress, should_cancel) -> exit code``,
named by dotted paths and imported when a job runs: this wing sits below the wings whose work it runs.

    argv, files = command("score", cfg, ScoreOptions(out="out/"))   # python -m core.jobs.worker score --config ...
    job = launch(ws, "score", cfg, ScoreOptions(out="out/"), title="score test.jsonl")
    job.state(), job.progress(), job.cancel()                         # core.jobs.supervisor.Job, for every kind
    relaunch(ws, job)                                                 # the same kind, config and options again
    shell_command(argv, files)                                        # the same job as lines for a shell

A job runs ``python -m core.jobs.worker KIND --config {job}/config.json [options]`` (``core.jobs.worker``), from the
config saved in its folder, so no setting is lost on the way; a CPO run reads the config its run folder keeps
(``config_path``). ``accelerate launch -m core.jobs.worker train --config run.json`` runs the same entry.
"""

from __future__ import annotations

import importlib
import shlex
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError
from core.jobs import supervisor
from core.progress import JOB_DIR

WORKER = "core.jobs.worker"  # the entry every job runs (``python -m core.jobs.worker KIND ...``)
CONFIG_FILE = "config.json"  # the config a job runs from, in its folder


@dataclass(frozen=True)
class JobKind:
    name: str  # the worker's subcommand, the job's kind in its folder and the ``workbench`` command
    config: str  # "module:Class" of its config (a ``core.config.ConfigBase`` dataclass)
    options: str  # "module:Class" of its options (a ``ConfigBase`` dataclass: flags beside the config)
    run: str  # "module:function" of its body: run(cfg, options, progress, should_cancel) -> exit code
    help: str

    def config_class(self) -> type:
        return _resolve(self.config)

    def options_class(self) -> type:
        return _resolve(self.options)

    def run_function(self):
        return _resolve(self.run)


KINDS: dict[str, JobKind] = {k.name: k for k in (
    JobKind("score", "core.drift.config:AnalysisConfig", "core.drift.job:ScoreOptions", "core.drift.job:run_score",
            "score trajectories under a checkpoint series and write the drift tables"),
    JobKind("perturb", "core.drift.config:AnalysisConfig", "core.perturb.job:PerturbOptions",
            "core.perturb.job:run_perturb", "swap a span in every trajectory; answers before/after per checkpoint"),
    JobKind("visual", "core.perturb.visual:VisualConfig", "core.perturb.job:VisualOptions",
            "core.perturb.job:run_visual", "image swap or region occlusion on a vision-language series"),
    JobKind("train", "core.cpo.config:TrainConfig", "core.cpo.config:TrainOptions", "core.cpo.job:run_train",
            "a CPO run, then (with --evaluate) its held-out figures"),
    JobKind("counterfactuals", "core.counterfactuals.batch:BatchConfig", "core.counterfactuals.batch:BatchOptions",
            "core.counterfactuals.batch:run_job", "a batch of counterfactuals into the workspace database"),
    JobKind("watch", "core.watch.config:WatchConfig", "core.watch.job:WatchOptions", "core.watch.job:run_watch",
            "score each checkpoint of a running job as it is saved; alarms; the drift series"),
)}


def _resolve(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def get(kind: str) -> JobKind:
    if kind not in KINDS:
        raise InputError(f"job kind {kind!r}: expected one of {', '.join(KINDS)}")
    return KINDS[kind]


def command(kind: str, cfg=None, options=None, config_path: str | Path | None = None) -> tuple[list[str], dict[str, str]]:
    """What a job of ``kind`` runs (after ``python``) and the files its folder gets: ``cfg`` saved there as
    ``config.json`` (or, with ``config_path``, the config file the job reads where it is), then the options as
    flags. The one place a job's command line is built."""
    k = get(kind)
    options = options if options is not None else k.options_class()()
    if config_path is None and cfg is None:
        raise ValueError("command: give the config, or the path of its saved file")
    path = str(config_path) if config_path is not None else f"{JOB_DIR}/{CONFIG_FILE}"
    files = {} if config_path is not None else {CONFIG_FILE: cfg.to_json()}
    return ["-m", WORKER, k.name, "--config", path, *options.to_argv()], files


def launch(ws, kind: str, cfg=None, options=None, title: str = "", meta: dict | None = None,
           config_path: str | Path | None = None, world: str | Path | None = None) -> supervisor.Job:
    """Start a job of ``kind`` in the workspace's jobs folder (``ws.jobs_dir``): its command from ``command``,
    its process under ``core.jobs.supervisor``; the page, the command line and a notebook start jobs this way.
    The job belongs to ``world`` (a world folder; default: the config's ``world``, or the world a run is evaluated
    on), recorded in its ``meta`` so that a page lists its own world's jobs."""
    argv, files = command(kind, cfg, options, config_path)
    world = world or getattr(cfg, "world", None) or getattr(options, "evaluate", None)
    meta = {**(meta or {}), **({"world": supervisor.world_key(world)} if world else {})}
    return supervisor.start(ws.jobs_dir, kind, argv, title=title or kind, meta=meta, files=files)


def relaunch(ws, job: supervisor.Job, meta: dict | None = None, config_path: str | Path | None = None) -> supervisor.Job:
    """A new job running what ``job`` ran: its kind, argv and the files of its folder that argv reads (a cancelled
    or failed job resumed; a CPO run continues from its checkpoints, a scoring job from its cached parts);
    ``config_path``: another config file for it to read (a CPO run's resume config), the options unchanged."""
    old = f"{job.dir}/"
    files = {}
    for arg in job.argv:
        if str(arg).startswith(old) and (job.dir / str(arg)[len(old):]).is_file():
            files[str(arg)[len(old):]] = (job.dir / str(arg)[len(old):]).read_text(encoding="utf-8")
    argv = [str(a).replace(old, f"{JOB_DIR}/") for a in job.argv]
    if config_path is not None and "--config" in argv:
        argv[argv.index("--config") + 1] = str(config_path)
    return supervisor.start(ws.jobs_dir, job.kind, argv, title=job.title, meta=meta if meta is not None else job.meta,
                            files=files)


def shell_command(argv: list[str], files: dict[str, str] | None = None) -> str:
    """``argv`` (a job's, after ``python``) as lines to paste into a shell: each file the job reads written
    first (a here-document), then the ``workbench`` command of its kind (the worker's subcommands are the same)."""
    args = [str(a).replace(f"{JOB_DIR}/", "") for a in argv]
    args = args[2:] if args[:2] == ["-m", WORKER] else args
    heads = [f"cat > {shlex.quote(name)} <<'EOF'\n{text.rstrip()}\nEOF\n" for name, text in (files or {}).items()]
    return "".join(heads) + "workbench " + " ".join(shlex.quote(a) for a in args)
