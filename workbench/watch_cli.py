"""``workbench watch``: the drift watch from the command line (its flags generated from ``WatchConfig``).

    workbench watch --run runs/grpo/watch --base /models/Qwen2.5-0.5B --data probe.jsonl     # a callback's folder
    workbench watch --run /runs/verl/ckpts --out runs/verl-watch --world W --device cuda:1    # follow any trainer
    workbench watch ... --once                      # score what is there, then exit
    workbench watch ... --job                       # as a background job of the workspace (Watch page: progress, Cancel)
    workbench watch plugin --out cot_drift_watch.py # the callback as one file (TRL / HF Trainer / ms-swift plugin)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import InputError
from core.io.paths import expand
from core.watch.config import from_args

def add_parser(sub) -> None:
    """The ``watch`` subcommand (and ``watch plugin``) on the command line's subparsers."""
    from core.watch.config import add_arguments

    p = sub.add_parser("watch", help="score each checkpoint of a running job as it is saved; alarms; the drift series")
    add_arguments(p)  # one flag per WatchConfig field, with its help
    p.add_argument("--job", action="store_true", help="run the scorer as a background job of the workspace "
                   "(the Watch page shows its progress and cancels it)")
    p.add_argument("--workspace", type=expand, default=None, help="the workspace whose Watch page lists this watch")
    w = p.add_subparsers(dest="watch_command")
    plug = w.add_parser("plugin", help="write the trainer callback as one file: TRL / HF Trainer callback and "
                                       "ms-swift plugin (--external_plugins FILE --callbacks cot_drift_watch)")
    plug.add_argument("--out", type=expand, required=True, help="the .py file to write (a new file)")


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


def run(args: argparse.Namespace, open_workspace) -> int:
    """``workbench watch``: the scorer in this process (progress bar; Ctrl-C stops it), or ``--job`` in the background."""
    from core.watch import scorer, views

    if getattr(args, "watch_command", None) == "plugin":
        return write_plugin(args.out)
    cfg = scorer.resolve(from_args(args))
    ws = open_workspace(args.workspace)
    out = scorer.Watch.open(cfg).out
    views.register(ws.root, out)
    if args.job:
        job = start_job(ws, cfg)
        print(f"workbench: watch job {job.id} ({job.dir}); the Watch page shows it")
        return 0
    from core.jobs.supervisor import cancel_flag
    from core.jobs.worker import progress_bar
    from core.progress import Cancelled

    bar, progress = progress_bar("watch")
    with bar:
        try:
            n = scorer.run(cfg, progress, cancel_flag())
        except (KeyboardInterrupt, Cancelled):
            print("\nworkbench: watch stopped; every step scored so far is kept (run it again to resume)", file=sys.stderr)
            return 130
    alarms = scorer.read_alarms(out)
    print(f"workbench: scored {n} step(s) into {out / 'analysis'}; {len(alarms)} alarm(s)")
    for a in alarms:
        print(f"  step {a['step']}: {a['rule']}: {a['message']}")
    return 0


def start_job(ws, cfg):
    """The scorer as a background job of workspace ``ws`` (kind "watch": its config saved in the job's folder)."""
    from core.jobs import supervisor as jobs
    from core.watch import scorer

    argv, files = scorer.job_files(cfg)
    return jobs.start(ws.jobs_dir, "watch", argv, title=f"watch {Path(cfg.run).name}",
                      meta={"out": str(scorer.Watch.open(cfg).out)}, files=files)

