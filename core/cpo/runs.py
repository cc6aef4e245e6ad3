"""CPO runs: a registry in the workspace database, each run a background job of kind ``train`` (started, cancelled
and resumed through ``core.jobs.registry``, like every job) that trains with ``core.cpo.train`` and then evaluates the new adapter on the world's held-out set (``core.perturb.evaluation``).

    run = runs.launch(ws, cfg, name="cpo-repair", world=world_path, snapshot="sft-pairs-v1")
    runs.refresh(ws, run.id)       # sync the registry with the job: running -> done | failed | cancelled
    runs.metrics(run)              # the trainer's metrics.jsonl as a table (live while it runs)
    runs.cancel(ws, run.id)        # graceful: the trainer stops at the next step and saves the adapter
    runs.resume(ws, run.id)        # a new job continuing from the run's last checkpoint-N

A run's folder is ``<workspace>/runs/cpo/<name>/``: ``config.json`` (the ``TrainConfig``), what the trainer
writes (``metrics.jsonl``, ``checkpoint-N/``, ``adapter/``) and ``evaluation.json``. The registry row
keeps the config, the dataset snapshot, the status, the evaluation and the cause of a failure; the job
folder keeps the log. Nothing depends on the browser: the page only reads and refreshes.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.cpo.config import TrainOptions
from core.cpo.starts import (  # noqa: F401 - where a run starts and how it compares: the pages call them here
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    START_BASE,
    START_FIGURES,
    comparison,
    default_start,
    start_adapter,
    start_metrics,
    start_name,
    start_note,
    start_point,
    worse_than_start,
)
from core.errors import InputError
from core.io.store import Store
from core.jobs import registry
from core.jobs import supervisor as jobs

EVALUATION_FILE = "evaluation.json"
START_CACHE = "start-figures"  # in the workspace cache: a start's figures on the first N studies (starts.start_figures)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Run:
    id: int
    name: str
    objective: str
    config: dict
    data: str
    snapshot: str | None
    world: str | None
    status: str
    job: str | None
    output_dir: Path
    error: str | None
    evaluation: dict | None
    created_at: float
    updated_at: float

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / "adapter"

    @property
    def config_path(self) -> Path:
        return self.output_dir / "config.json"

    def job_handle(self) -> jobs.Job | None:
        try:
            return jobs.Job.load(self.job) if self.job else None
        except InputError:
            return None


_COLUMNS = ("id, name, objective, config, data, snapshot, world, status, job, output_dir, error, evaluation, "
            "created_at, updated_at")


def _row(row: tuple) -> Run:
    (id_, name, objective, config, data, snapshot, world, status, job, output_dir, error, evaluation, c, u) = row
    return Run(id_, name, objective, json.loads(config), data, snapshot, world, status, job, Path(output_dir), error,
               json.loads(evaluation) if evaluation else None, c, u)


def get(store: Store, run_id: int) -> Run:
    row = store.query_one(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,))
    if row is None:
        raise InputError(f"run {run_id}: no such run in {store.path}")
    return _row(row)


def list_runs(store: Store, world: str | Path | None = None) -> list[Run]:
    """Every run, newest first; of the world at ``world`` only, when given (the runs page shows the open world's)."""
    rows = [_row(r) for r in store.query(f"SELECT {_COLUMNS} FROM runs ORDER BY created_at DESC, id DESC")]
    if world is None:
        return rows
    root = Path(world).resolve()
    return [r for r in rows if r.world and Path(r.world).resolve() == root]


def train_argv(config_path: str | Path, world: str | Path | None = None, evaluate_limit: int | None = None) -> list[str]:
    """What a run's job executes (after ``python``; ``core.jobs.registry.command``): train from the run folder's
    config, then evaluate on the world's held-out sets (the first ``evaluate_limit`` studies, or all)."""
    return registry.command("train", options=_options(world, evaluate_limit), config_path=config_path)[0]


def train_command(cfg, world: str | Path | None = None, evaluate_limit: int | None = None) -> tuple[list[str], dict]:
    """What a run of ``cfg`` runs and the files it needs (its config.json, written first by the shell lines of
    ``registry.shell_command``): a command that works before the run exists."""
    return registry.command("train", cfg, _options(world, evaluate_limit))


def _options(world: str | Path | None, evaluate_limit: int | None, cache: str | Path | None = None):
    return TrainOptions(evaluate=str(world) if world else None, evaluate_limit=evaluate_limit if world else None,
                        evaluate_cache=str(cache) if cache and world and evaluate_limit else None)


def launch(ws, cfg, name: str, world: str | Path | None = None, snapshot: str | None = None,
           evaluate_limit: int | None = None) -> Run:
    """Register a run and start its job. ``cfg`` is a ``core.cpo.train.TrainConfig``; its ``output_dir`` is set
    to the run's folder. The name must be new (letters, digits, ``_.-``)."""
    if not _NAME.match(name):
        raise InputError(f"run name {name!r}: use 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)")
    if ws.store.query_one("SELECT 1 FROM runs WHERE name = ?", (name,)):
        raise InputError(f"run name {name!r} is taken; choose another")
    out = ws.cpo_run_dir(name)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: a run folder of that name already exists; choose another name")
    cfg.output_dir = str(out)
    now = time.time()
    try:  # the row claims the name (UNIQUE): of two tabs launching the same name, the second is told, and
        # writes nothing (the folder and its config.json come after the claim)
        with ws.store.transaction() as con:
            cur = con.execute("INSERT INTO runs (name, objective, config, data, snapshot, world, status, "
                              "output_dir, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                              (name, cfg.objective, cfg.to_json(), cfg.data, snapshot,
                               str(world) if world else None, str(out), now, now))
            run_id = cur.lastrowid
    except sqlite3.IntegrityError:
        raise InputError(f"run name {name!r} is taken (another tab started it just now); choose another") from None
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.json")
    run = get(ws.store, run_id)
    options = _options(world, evaluate_limit, ws.cache_dir / START_CACHE)  # the start's figures on the same N
    return _started(ws, run, registry.launch(ws, "train", options=options,
                                             config_path=run.config_path, **_job_labels(run)))


def finished_for_world(store: Store, world_root: str | Path) -> list[Run]:
    """The done runs of the world at ``world_root`` whose adapter exists: what can join its series."""
    root = Path(world_root).resolve()
    return [r for r in list_runs(store) if r.status == "done" and r.adapter_dir.is_dir()
            and r.world and Path(r.world).resolve() == root]


def series_with_runs(checkpoints: list[str | Path], runs: list[Run]) -> str:
    """The series as ``AnalysisConfig.checkpoints`` takes it (``;``-separated): the RFT checkpoints in their
    order, then each run's adapter, oldest run first (``core.models.branches`` places a run as a branch of its
    start, and measures it against that start only when the start comes before it: a run started from another
    run, listed newest first, was measured against the base under the name "KL to start")."""
    ordered = sorted(runs, key=lambda r: (r.created_at, r.id))
    return ";".join([str(c) for c in checkpoints] + [str(r.adapter_dir) for r in ordered])


def train_defaults(world=None, start: str | None = None) -> dict:
    """``TrainConfig``'s field defaults as a launch form shows them: the world plug-in's learning rate, and
    the start adapter's LoRA rank (a run continues that adapter, so r must match)."""
    import dataclasses

    from core.cpo.config import TrainConfig

    out = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    out["learning_rate"] = getattr(world.plugin if world else None, "learning_rate", out["learning_rate"])
    info = next((c for c in world.checkpoints if c.name == start), None) if world else None
    if info is not None and info.training.get("lora_rank"):
        out["lora_r"] = int(info.training["lora_rank"])
    return out


def _job_labels(run: Run) -> dict:
    return {"title": f"{run.objective} · {run.name}", "meta": {"run": run.id}}


def _started(ws, run: Run, job: jobs.Job) -> Run:
    _update(ws.store, run.id, status="running", job=str(job.dir), error=None)
    return get(ws.store, run.id)


def _update(store: Store, run_id: int, **fields) -> None:
    sets = ", ".join(f"{k} = ?" for k in fields)
    with store.transaction() as con:
        con.execute(f"UPDATE runs SET {sets}, updated_at = ? WHERE id = ?", (*fields.values(), time.time(), run_id))


def failure_cause(log: str, ending: str | None = None) -> str:
    """Why a worker failed: ``ending`` (exit code or signal, ``Job.ending``) and the log's error line: the
    exception's last line, out of memory said plainly; a log without one gives no line (not a progress bar)."""
    line = _error_line(log)
    if ending is None:
        return line or ("the run ended without any output" if not log.strip() else "no error message in the log")
    return f"{ending}: {line}" if line else f"{ending}; no error message in the log"


def _error_line(log: str) -> str | None:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    if any("out of memory" in line.lower() or "OutOfMemoryError" in line for line in lines):
        return "out of memory: " + next(line for line in reversed(lines)
                                        if "out of memory" in line.lower() or "OutOfMemoryError" in line)
    for line in reversed(lines):
        if line.startswith("workbench: error:") or re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
            return line
    return None


def refresh(ws, run_id: int) -> Run:
    """Bring a run's row in line with its job: a finished job becomes done (with its evaluation), failed
    (with the cause from its log) or cancelled. Safe to call from any number of pages at once."""
    run = get(ws.store, run_id)
    if run.status != "running":
        return run
    job = run.job_handle()
    state = job.state() if job else "died"
    if state == "running":
        return run
    if state == "done":
        join_series(run)
        evaluation = _read_json(run.output_dir / EVALUATION_FILE)
        _update(ws.store, run_id, status="done", evaluation=json.dumps(evaluation) if evaluation else None)
    elif state == "cancelled":
        _update(ws.store, run_id, status="cancelled", error="cancelled: the adapter of the last finished step was saved")
    else:
        cause = failure_cause(job.log_tail(40), job.ending()) if job else "the run's job folder is gone"
        _update(ws.store, run_id, status="failed", error=cause)
    return get(ws.store, run_id)


def join_series(run: Run) -> int | None:
    """Give the run's adapter its place in the checkpoint series: the step of the checkpoint it started from
    plus the steps it trained (``trainer_state.json`` ``global_step``; the run's own count stays as
    ``run_steps``), so drift views order it after the checkpoint it repairs. Returns that step."""
    from core.io.cache import atomic_write_text
    from core.models.checkpoints import read_checkpoint

    state_file = run.adapter_dir / "trainer_state.json"
    state = _read_json(state_file)
    if state is None:
        return None
    if "run_steps" in state:  # joined already
        return state.get("global_step")
    init = run.config.get("init_adapter")
    start = read_checkpoint(Path(init)).step if init and Path(init).is_dir() else 0
    state["run_steps"] = int(state.get("global_step") or 0)
    state["global_step"] = start + state["run_steps"]
    atomic_write_text(state_file, json.dumps(state, indent=1))
    return state["global_step"]


def refresh_all(ws) -> list[Run]:
    return [refresh(ws, r.id) if r.status == "running" else r for r in list_runs(ws.store)]


def cancel(ws, run_id: int) -> bool:
    run = get(ws.store, run_id)
    job = run.job_handle()
    return bool(job and job.cancel())


def resume(ws, run_id: int) -> Run:
    """Continue a cancelled or failed run from its last checkpoint in a new job."""
    from core.cpo.config import TrainConfig

    run = refresh(ws, run_id)
    if run.status not in ("cancelled", "failed"):
        raise InputError(f"run {run.name}: only a cancelled or failed run can be resumed (it is {run.status})")
    previous = run.job_handle()
    if previous and _still_running(previous):  # e.g. the trainer of a run whose supervisor was killed
        raise InputError(f"run {run.name}: its trainer (pid {', '.join(map(str, previous.live_pids()))}) still "
                         "runs; cancel it or wait for it to end before resuming")
    cfg = TrainConfig.load(run.config_path)
    cfg.resume = True  # in a file of its own: config.json stays the run's config, reusable as it is
    again = cfg.save(run.output_dir / RESUME_CONFIG)
    if previous:  # the same job again (core.jobs.registry.relaunch): its options, the resume config
        return _started(ws, run, registry.relaunch(ws, previous, meta={"run": run.id}, config_path=again))
    return _started(ws, run, registry.launch(ws, "train", options=_options(run.world, None),
                                             config_path=again, **_job_labels(run)))


RESUME_CONFIG = "resume.json"  # a resumed run's config: config.json with "resume": true


def _still_running(job, grace: float = 15.0) -> bool:
    """Whether any of ``job``'s processes still lives after ``grace`` seconds: a worker that has written its
    exit record goes on for a moment (interpreter shutdown, the supervisor's own exit record) and is waited for;
    one that keeps running (its supervisor killed, say) is not."""
    import time

    deadline = time.monotonic() + (grace if job.exit_info() is not None else 0.0)  # ended: let it finish exiting
    while job.live_pids():
        if time.monotonic() > deadline:
            return True
        time.sleep(0.2)
    return False


def metrics(run: Run) -> pd.DataFrame:
    """The trainer's metrics.jsonl (one row per logged step); empty before the first step. A line being
    written at the moment is skipped."""
    path = run.output_dir / "metrics.jsonl"
    rows = []
    try:
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    except OSError:
        pass
    return pd.DataFrame(rows)


def examples(run: Run, n: int = 3, scan: int = 200) -> list[dict]:
    """A few pairs the run trains on (``core.io.pairs.read_pair``: texts, source, images as absolute paths), the
    first of each source first, so a visual pair (``image_swap``) shows when the data has any. Reads the first
    ``scan`` records only: the page shows them on every refresh while the run goes on."""
    from itertools import islice

    from core.io.pairs import read_pair
    from core.io.trajectories import json_lines

    path = Path(run.data)
    if not path.is_file():
        raise InputError(f"{path}: the run's preference data file is gone")
    roots = run.config.get("image_roots")  # a run launched from the UI shows only images under its data roots
    roots = None if roots is None else [Path(r) for r in roots]
    pairs = [read_pair(rec, f"{path}, line {line}", path, line, roots=roots)
             for line, rec in islice(json_lines(path), scan)]
    firsts = {}
    for i, pair in enumerate(pairs):
        firsts.setdefault(pair["source"], i)
    order = sorted(firsts.values()) + [i for i in range(len(pairs)) if i not in firsts.values()]
    return [pairs[i] for i in order[:n]]


def evaluate_adapter(world_path: str | Path, adapter: str | Path | None, limit: int | None = None,
                     vision=None, base: str | Path | None = None) -> dict | None:
    """Load the world's base model (with ``adapter`` merged in, when given; ``adapter`` may also be a full
    checkpoint, which is loaded as it is) and evaluate it on the world's
    held-out set (``core.perturb.evaluation``: accuracy, per category, malformed, flip rate, plus the world plug-in's
    own figures); None when the world has no held-out set. The base's family loads the model and its processor:
    a vision-language model decodes each study with its images (``vision``: a ``core.models.vision.VisionConfig``
    with the pixel limits; None: the checkpoint's own). ``base``: the model ``adapter`` was trained over (a run
    started from a merged full checkpoint); default: the world's base."""
    from core.models.families import family_for
    from core.perturb.evaluation import evaluate_model, held_out
    from core.workspace.world import load_world

    world = load_world(world_path)
    held = held_out(world, limit)
    if held is None:
        return None
    full = adapter and not (Path(adapter) / "adapter_config.json").is_file() and (Path(adapter) / "config.json").is_file()
    under = Path(base) if base else world.base_model_dir
    family = family_for(world.base_model_dir)
    processor = family.load_processor(world.base_model_dir, vision)  # the base's tokenizer (and image processor)
    model = family.load_model(adapter if full else under)  # a full checkpoint (-merged) as it is
    if adapter and not full:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()  # merged: plain speed
    return evaluate_model(model, processor, held, world.answer_format, world.plugin, family=family)


def write_evaluation(output_dir: str | Path, evaluation: dict) -> Path:
    from core.io.cache import atomic_write_text

    path = Path(output_dir) / EVALUATION_FILE
    atomic_write_text(path, json.dumps(evaluation, indent=1))
    return path


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
