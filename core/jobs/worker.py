"""The engine's job entry: what every background job runs, always from a saved config file.

    python -m core.jobs.worker score --config config.json --out DIR [--workspace DIR] [--force] [--no-cache]
    python -m core.jobs.worker perturb --config config.json --find X --replace Y [--mode M] --out FILE [--force]
    python -m core.jobs.worker visual --config config.json --out FILE [--force]       # image swap / occlusion (VL)
    python -m core.jobs.worker train --config run.json [--resume] [--evaluate WORLD] [--evaluate-limit N]
    python -m core.jobs.worker counterfactuals --config config.json                  # a counterfactual batch
    python -m core.jobs.worker watch --config watch.json [--workspace DIR]           # the drift watch's scorer
    accelerate launch -m core.jobs.worker train --config run.json     # the same on several GPUs

Each subcommand is a kind of ``core.jobs.registry``: its config read from ``--config`` (the flags of the config's
fields, given as well, override it), its options from their flags (both generated from the dataclasses'
fields), then its run function, with a progress bar that also reports to the job's folder and a cancel flag that
SIGTERM (the page's Cancel) sets. The ``workbench`` command runs the same kinds through ``execute``.
"""

from __future__ import annotations

import argparse
import os
import sys

from core.errors import InputError
from core.io.paths import expand
from core.jobs import registry
from core.progress import CANCELLED, Cancelled, cancel_flag, flush_progress, record_worker_exit, report_progress


def progress_bar(desc: str):
    """A tqdm bar in per-mille, and a ``progress(done, total, message)`` that also reports to a job folder;
    ``warning: ...`` messages are written out in full (the log keeps them, not only the bar's tail). The bar
    closes when the work is done, so that what a job prints afterwards (its summary) starts on a line of its own."""
    from tqdm import tqdm

    bar = tqdm(total=1000, unit="‰", desc=desc, mininterval=0.5,
               bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def progress(done: float, total: float, message: str) -> None:
        if message.startswith("warning: "):
            bar.write(f"workbench: {message}", file=sys.stderr)
        bar.update(int(1000 * done / max(total, 1e-12)) - bar.n)
        bar.set_postfix_str(message[:60])
        if total and done >= total:
            bar.close()
        report_progress(done, total, message)

    return bar, progress


def execute(kind: str, cfg, options) -> int:
    """Run a job's body in this process (a background job's worker, or the ``workbench`` command): SIGTERM or
    Ctrl-C stop it at its next check, with nothing half-written, and exit code ``CANCELLED``."""
    k = registry.get(kind)
    should_cancel = cancel_flag()
    bar, progress = progress_bar(kind)
    with bar:
        try:
            return k.run_function()(cfg, options, progress, should_cancel)
        except (KeyboardInterrupt, Cancelled):
            print(f"\nworkbench: {kind} cancelled; nothing written", file=sys.stderr)
            return CANCELLED
        finally:  # the last report, also when the rate limit held it back: what the job did when it stopped
            flush_progress()


def add_job_arguments(p: argparse.ArgumentParser, kind: str, config_required: bool = True) -> None:
    """``--config``, the kind's options and its config's fields as flags (``core.config.ConfigBase``)."""
    k = registry.get(kind)
    cls = k.config_class()
    p.add_argument("--config", type=expand, required=config_required, metavar="FILE",
                   help=f"the {cls.what} as JSON ({cls.__name__}; e.g. a job's or a run's config.json)")
    k.options_class().add_arguments(p, overrides=False)
    cls.add_arguments(p.add_argument_group(f"{cls.__name__} fields", "each overrides the --config file's value"))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m core.jobs.worker", description="a workbench job, from its config file")
    sub = ap.add_subparsers(dest="command", required=True)
    for kind in registry.KINDS.values():
        add_job_arguments(sub.add_parser(kind.name, help=kind.help), kind.name)
    return ap


def run(args: argparse.Namespace) -> int:
    k = registry.get(args.command)
    cfg = k.config_class().from_args(args, k.config_class().load(args.config))
    return execute(k.name, cfg, k.options_class().from_args(args))


def main(argv: list[str] | None = None) -> int:
    code = 1
    try:
        args = parser().parse_args(argv)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models and data load from local paths only
        code = run(args)
    except SystemExit as e:  # argparse errors
        code = e.code if isinstance(e.code, int) else 2
        raise
    except InputError as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        code = 2
    finally:
        record_worker_exit(code)  # a background job's state survives a killed supervisor
    return code


if __name__ == "__main__":
    sys.exit(main())
