"""The watch wing's background job: the scorer beside a running trainer (kind ``watch`` of ``core.jobs.registry``).

    python -m core.jobs.worker watch --config watch.json [--workspace DIR]   # a background job (the Watch page)
    python -m core.jobs.worker watch --config DIR/scorer.json               # what the callback's ``spawn`` runs
    run_watch(cfg, WatchOptions(), progress, should_cancel)                  # the same in this process

Light to import (the scorer and torch load when the job runs): the worker's and the command line's flags come from
``WatchConfig``'s and ``WatchOptions``' fields.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from core.config import ConfigBase
from core.io.paths import expand_fields
from core.progress import Progress

if TYPE_CHECKING:
    from core.watch.config import WatchConfig


@dataclass
class WatchOptions(ConfigBase):
    """How a watch job runs (flags beside its ``WatchConfig``)."""

    what: ClassVar[str] = "watch options"

    workspace: str | None = field(default=None, metadata={
        "help": "the workspace whose Watch page lists this watch (default $WORKBENCH_WORKSPACE or the default one)",
        "path": True})

    def __post_init__(self) -> None:
        super().__post_init__()
        expand_fields(self)


def run_watch(cfg: WatchConfig, options: WatchOptions, progress: Progress | None = None, should_cancel=None) -> int:
    """Score the watch ``cfg`` step by step until its trainer ends (``core.watch.scorer.run``), listed on the
    workspace's Watch page; prints what it scored and the alarms raised. A cancel keeps every step scored so far
    (the worker reports it): the next run resumes at the first unscored step."""
    from core.watch import scorer

    cfg = scorer.resolve(cfg)
    out = scorer.Watch.open(cfg).out
    register(out, options.workspace)
    n = scorer.run(cfg, progress, should_cancel)
    alarms = scorer.read_alarms(out)
    print(f"workbench: watch scored {n} step(s) into {out / 'analysis'}; {len(alarms)} alarm(s)", flush=True)
    for a in alarms:
        print(f"  step {a['step']}: {a['rule']}: {a['message']}")
    return 0


def register(out, workspace: str | None) -> None:
    """List the watch folder ``out`` on the workspace's Watch page (the named workspace, else the default one)."""
    from core.watch.views import register as add
    from core.workspace.workspace import Workspace

    ws = Workspace.open(workspace)
    try:
        if ws.store.notice:
            print(f"workbench: warning: {ws.store.notice}", file=sys.stderr)
        add(ws.root, out)
    finally:
        ws.store.close()


def launch(ws, cfg: WatchConfig):
    """The scorer as a background job of workspace ``ws`` (kind ``watch`` of ``core.jobs.registry``: progress and
    Cancel like every job), the watch listed on its Watch page; the job's meta names the watch's output folder."""
    from pathlib import Path

    from core.jobs import registry
    from core.watch import scorer

    cfg = scorer.resolve(cfg)
    out = scorer.Watch.open(cfg).out
    register(out, str(ws.root))
    return registry.launch(ws, "watch", cfg, WatchOptions(workspace=str(ws.root)), title=f"watch {Path(cfg.run).name}",
                           meta={"out": str(out)})
