"""The counterfactual batch as a background job (``core.jobs.supervisor``), like scoring: it outlives the browser tab,
reports progress and stops at the next trajectory on Cancel (SIGTERM), everything finished so far stored.

    cfg = BatchConfig(workspace=str(ws.root), world=str(world.root), dataset="held_out", n=50, mode="all")
    job = start(ws, cfg)                      # python -m core.counterfactuals.batch <config.json>
    run(cfg, progress, should_cancel)         # the same work in this process (a notebook, a test)

The config is saved under the workspace's ``cache/counterfactual-batches/`` and the worker runs from that
file, never from flags; the counterfactuals land in the workspace database, as from the page's single run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.counterfactuals.rewrite import TARGET_MODES
from core.errors import InputError
from core.progress import Progress

KIND = "counterfactuals"
METHODS = ("graph", "llm", "image_swap")


@dataclass
class BatchConfig:
    workspace: str = field(metadata={"help": "the workspace whose database stores the counterfactuals"})
    world: str = field(metadata={"help": "the world folder: its datasets, concept graph and models"})
    dataset: str = field(metadata={"help": "the world's dataset to rewrite"})
    n: int = field(default=50, metadata={"help": "trajectories, from the first"})
    mode: str = field(default="all", metadata={"help": "targets: " + " | ".join(TARGET_MODES)})
    target: str | None = field(default=None, metadata={"help": "the target disease when mode is 'one'"})
    method: str = field(default="graph", metadata={"help": "graph rules, a local LLM expert ('llm'), or another "
                                                           "study's image of the target ('image_swap')"})
    expert_checkpoint: str | None = field(default=None, metadata={"help": "the expert's checkpoint (llm)"})
    expert: dict = field(default_factory=dict, metadata={"help": "ExpertConfig fields (llm)"})

    def __post_init__(self) -> None:
        if self.mode not in TARGET_MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {TARGET_MODES}")
        if self.mode == "one" and not self.target:
            raise ValueError("mode 'one' needs a target disease")
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: expected one of {METHODS}")
        if self.method == "llm" and not self.expert_checkpoint:
            raise ValueError("method 'llm' needs expert_checkpoint")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    def save(self, path: str | Path) -> Path:
        from core.io.cache import atomic_write_text

        atomic_write_text(Path(path), json.dumps(asdict(self), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "BatchConfig":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise InputError(f"{path}: not a counterfactual batch config ({e})") from None


def source_of(world_name: str, dataset: str) -> str:
    """What stored counterfactuals name as their source: ``<world>:<dataset>``."""
    return f"{world_name}:{dataset}"


def run(cfg: BatchConfig, progress: Progress | None = None, should_cancel=None):
    """Generate and store the batch; returns the last ``BatchProgress`` (None for no record). Stops after the
    current trajectory when ``should_cancel()`` turns true."""
    from core.counterfactuals.rewrite import with_images
    from core.counterfactuals.store import generate_batch
    from core.graph.store import GraphStore
    from core.io.trajectories import read_jsonl
    from core.workspace.workspace import Workspace
    from core.workspace.world import load_world

    ws, world = Workspace.open(cfg.workspace), load_world(cfg.world)
    gs = GraphStore.open(ws.store, world.graph_path)
    version = gs.head()
    data = world.dataset_path(cfg.dataset)
    records = with_images(read_jsonl(str(data), cfg.n), data)
    donors = with_images(read_jsonl(str(data)), data) if cfg.method == "image_swap" else None  # the whole dataset
    last = None
    for last in generate_batch(ws.store, gs.graph(version), records, source_of(world.name, cfg.dataset), cfg.mode,
                               cfg.target, cfg.method, version, _expert(cfg, world), donors):
        if progress:
            progress(last.done, last.total, f"{last.done} of {last.total} trajectories, {last.stored} stored")
        if should_cancel and should_cancel():
            break
    return last


def _expert(cfg: BatchConfig, world):
    if cfg.method != "llm":
        return None
    from core.counterfactuals.expert import Expert, ExpertConfig
    from core.models.series import load_series

    arg = world.checkpoints_arg
    series = load_series(world.base_model_dir, arg,
                         base_names=[world.manifest.get("base_model_name", world.base_model_dir.name)])
    return Expert(series, cfg.expert_checkpoint, ExpertConfig(**cfg.expert))


def start(ws, cfg: BatchConfig, title: str = ""):
    """Start the batch as a job of kind ``KIND`` in ``ws.jobs_dir``, running from its saved config."""
    import uuid

    from core.jobs import supervisor as jobs

    path = cfg.save(ws.cache_dir / "counterfactual-batches" / f"{uuid.uuid4().hex}.json")
    return jobs.start(ws.jobs_dir, KIND, ["-m", "core.counterfactuals.batch", str(path)],
                      title=title or f"counterfactuals · {cfg.dataset} · {cfg.n} trajectories · {cfg.mode}",
                      meta={"config": str(path)})


def main(argv: list[str] | None = None) -> int:
    from core.jobs.supervisor import (
        CANCELLED,
        cancel_flag,
        record_worker_exit,
        report_progress,
    )

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m core.counterfactuals.batch CONFIG.json", file=sys.stderr)
        return 2
    should_cancel = cancel_flag()  # SIGTERM (the page's Cancel): stop after the current trajectory
    try:
        last = run(BatchConfig.load(args[0]), report_progress, should_cancel)
    except (InputError, ValueError) as e:
        print(f"counterfactuals: error: {e}", file=sys.stderr)
        record_worker_exit(1)
        return 1
    code = CANCELLED if should_cancel() else 0
    print(f"counterfactuals: {'cancelled' if code else 'finished'}: "
          + (f"{last.done} of {last.total} trajectories, {last.stored} counterfactuals stored" if last else "nothing to do"))
    record_worker_exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
