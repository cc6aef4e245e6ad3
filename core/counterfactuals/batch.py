"""The counterfactual batch as a background job (kind ``counterfactuals`` of ``core.jobs.registry``), like scoring:
it outlives the browser tab, reports progress and stops at the next trajectory on Cancel (SIGTERM), everything
finished so far stored.

    cfg = BatchConfig(workspace=str(ws.root), world=str(world.root), dataset="held_out", n=50, mode="all")
    job = registry.launch(ws, "counterfactuals", cfg, title="...")   # python -m core.jobs.worker counterfactuals
    run(cfg, progress, should_cancel)         # the same work in this process (a notebook, a test)

The worker runs from the config saved in the job's folder, never from flags; the counterfactuals land in the
workspace database, as from the page's single run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.config import ConfigBase
from core.counterfactuals.rewrite import TARGET_MODES
from core.io.paths import expand_fields
from core.progress import CANCELLED, Progress

KIND = "counterfactuals"  # the job kind (core.jobs.registry)
METHODS = ("graph", "llm", "image_swap")


@dataclass
class BatchConfig(ConfigBase):
    """One batch of counterfactuals: which trajectories of which world, rewritten how."""

    what: ClassVar[str] = "counterfactual batch config"

    workspace: str = field(metadata={"help": "the workspace whose database stores the counterfactuals", "path": True})
    world: str = field(metadata={"help": "the world folder: its datasets, concept graph and models", "path": True})
    dataset: str = field(metadata={"help": "the world's dataset to rewrite"})
    n: int = field(default=50, metadata={"help": "trajectories, from the first", "min": 1})
    mode: str = field(default="all", metadata={"help": "targets: " + " | ".join(TARGET_MODES),
                                               "choices": TARGET_MODES})
    target: str | None = field(default=None, metadata={"help": "the target disease when mode is 'one'"})
    method: str = field(default="graph", metadata={"help": "graph rules, a local LLM expert ('llm'), or another "
                                                           "study's image of the target ('image_swap')",
                                                   "choices": METHODS})
    expert_checkpoint: str | None = field(default=None, metadata={"help": "the expert's checkpoint (llm)"})
    expert: dict = field(default_factory=dict, metadata={"help": "ExpertConfig fields (llm), as a JSON object"})

    def __post_init__(self) -> None:
        super().__post_init__()
        expand_fields(self)
        if self.mode == "one" and not self.target:
            raise ValueError("mode 'one' needs a target disease")
        if self.method == "llm" and not self.expert_checkpoint:
            raise ValueError("method 'llm' needs expert_checkpoint")


@dataclass
class BatchOptions(ConfigBase):
    """A batch job takes nothing beside its config."""

    what: ClassVar[str] = "counterfactual batch options"


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
                               cfg.target, cfg.method, version, _expert(cfg, world), donors, world.key):
        if progress:
            progress(last.done, last.total, last.summary())
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
    return Expert(series, cfg.expert_checkpoint, ExpertConfig.from_dict(cfg.expert, "the batch's expert settings"))


def run_job(cfg: BatchConfig, options: BatchOptions, progress: Progress | None = None, should_cancel=None) -> int:
    """The job's body (``python -m core.jobs.worker counterfactuals --config FILE``): the batch, then a line of what
    it stored; the exit code says whether Cancel stopped it."""
    last = run(cfg, progress, should_cancel)
    code = CANCELLED if should_cancel and should_cancel() else 0
    print(f"counterfactuals: {'cancelled' if code else 'finished'}: " + (last.summary() if last else "nothing to do"))
    return code
