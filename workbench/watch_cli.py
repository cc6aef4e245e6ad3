"""``workbench watch``: the drift watch from the command line (job kind ``watch``: its flags generated from
``WatchConfig`` and ``WatchOptions``, as for every job of ``core.jobs.registry``).

    workbench watch --run runs/grpo/watch --base /models/Qwen2.5-0.5B --data probe.jsonl     # a callback's folder
    workbench watch --run /runs/verl/ckpts --out runs/verl-watch --world W --device cuda:1    # follow any trainer
    workbench watch ... --once                      # score what is there, then exit
    workbench watch ... --job                       # as a background job of the workspace (Watch page: progress, Cancel)
    workbench watch plugin --out cot_drift_watch.py # the callback as one file (TRL / HF Trainer / ms-swift plugin)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import InputError
from core.io.paths import expand
from core.jobs import registry


def add_parser(sub) -> None:
    """The ``watch`` subcommand (and ``watch plugin``) on the command line's subparsers."""
    from core.jobs import worker

    p = sub.add_parser("watch", help=registry.get("watch").help)
    worker.add_job_arguments(p, "watch", config_required=False)  # --config, --workspace, a flag per WatchConfig field
    p.add_argument("--job", action="store_true", help="run the scorer as a background job of the workspace "
                   "(the Watch page shows its progress and cancels it)")
    w = p.add_subparsers(dest="watch_command")
    plug = w.add_parser("plugin", help="write the trainer callback as one file: TRL / HF Trainer callback and "
                                       "ms-swift plugin (--external_plugins FILE --callbacks cot_drift_watch)")
    plug.add_argument("--out", dest="plugin_out", type=expand, required=True, help="the .py file to write (a new file)")


def write_plugin(out: Path) -> int:
    """The callback's file, as it is in the engine (one self-contained file); never over another file."""
    from core.watch import callback

    text = Path(callback.__file__).read_text(encoding="utf-8")
    if out.exists() and out.read_text(encoding="utf-8", errors="replace") != text:
        raise InputError(f"{out}: already exists; choose another file (nothing is overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"workbench: wrote {out}\n"
          f"  TRL / HF Trainer: from {out.stem} import DriftWatchCallback; Trainer(..., callbacks=[DriftWatchCallback(DIR)])\n"
          f"  ms-swift: swift rlhf ... --external_plugins {out} --callbacks cot_drift_watch")
    return 0


def config(args: argparse.Namespace):
    """The watch's config: ``--config FILE`` with the flags given over it, else the flags alone (``--run`` needed)."""
    from core.watch.config import WatchConfig

    base = WatchConfig.load(args.config) if args.config else None
    return WatchConfig.from_args(args, base, hint="watch: or give --config FILE")


def run(args: argparse.Namespace, open_workspace) -> int:
    """``workbench watch``: the scorer in this process (the worker's progress bar; Ctrl-C stops it, keeping every
    step scored), or ``--job`` in the background; ``watch plugin`` writes the callback's file."""
    from core.jobs import worker
    from core.watch import scorer
    from core.watch.job import WatchOptions

    if getattr(args, "watch_command", None) == "plugin":
        return write_plugin(args.plugin_out)
    cfg = scorer.resolve(config(args))
    options = WatchOptions.from_args(args)
    if args.job:
        job = start_job(open_workspace(options.workspace), cfg)
        print(f"workbench: watch job {job.id} ({job.dir}); the Watch page shows it")
        return 0
    return worker.execute("watch", cfg, options)


def start_job(ws, cfg):
    """The scorer as a background job of workspace ``ws`` (``core.watch.job.launch``: kind ``watch``)."""
    from core.watch.job import launch

    return launch(ws, cfg)
