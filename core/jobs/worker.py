"""The engine's job entry points: what a background job runs, always from a saved config file.

    python -m core.jobs.worker score --config analysis.json --out DIR [--workspace DIR] [--force] [--no-cache]
    python -m core.jobs.worker perturb --config analysis.json --find X --replace Y [--mode M] --out FILE [--force]
    python -m core.jobs.worker visual --config visual.json --out FILE [--force]     # image swap / occlusion (VL)
    python -m core.jobs.worker train --config run.json [--resume] [--evaluate WORLD] [--evaluate-limit N]
    accelerate launch -m core.jobs.worker train --config run.json     # the same on several GPUs

A job's config is the dataclass saved as JSON (``AnalysisConfig``, ``TrainConfig``), so no field is lost on
the way (labels, answer template, tau, chat template...). The console command (``workbench score``,
``perturb``, ``train``) builds the same configs from its flags and calls the same functions below.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import InputError
from core.io.paths import expand

if TYPE_CHECKING:  # the configs' modules import torch: loaded when a job runs, not for --help
    from core.cpo.config import TrainConfig
    from core.drift.analysis import AnalysisConfig


def progress_bar(desc: str):
    """A tqdm bar in per-mille, and a ``progress(done, total, message)`` that also reports to a job folder;
    ``warning: ...`` messages are written out in full (the log keeps them, not only the bar's tail)."""
    from tqdm import tqdm

    from core.jobs.supervisor import report_progress

    bar = tqdm(total=1000, unit="‰", desc=desc, mininterval=0.5,
               bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def progress(done: float, total: float, message: str) -> None:
        if message.startswith("warning: "):
            bar.write(f"workbench: {message}", file=sys.stderr)
        bar.update(int(1000 * done / max(total, 1e-12)) - bar.n)
        bar.set_postfix_str(message[:60])
        report_progress(done, total, message)

    return bar, progress


def score(cfg: AnalysisConfig | None, out: str | Path, cache_dir: str | Path | None = None, force: bool = False,
          shard: str | None = None, merge: bool = False) -> int:
    """Score ``cfg`` (an ``AnalysisConfig``) into the analysis folder ``out``; prints the summary. With ``shard``
    ("I/N", or RANK / WORLD_SIZE under ``accelerate launch``) only that share of the trajectories, into a folder
    beside ``out`` (core.drift.shards); ``merge`` builds the analysis from the finished shards (``cfg`` unused)."""
    from core.drift import shards
    from core.drift.analysis import run_analysis
    from core.io.outputs import check_analysis_folder
    from core.jobs.supervisor import CANCELLED, cancel_flag
    from core.progress import Cancelled

    out = expand(out)
    check_analysis_folder(out, force)  # before the compute: a refusal costs nothing
    if merge:
        return _save_analysis(shards.merge(out), out, merged=True)
    part = shards.Shard.parse(shard) if shard else shards.Shard.from_env()
    should_cancel = cancel_flag()  # SIGTERM (the page's Cancel) stops at the next batch
    bar, progress = progress_bar("analysis" if part is None else f"shard {part.index}/{part.count}")
    with bar:
        try:
            if part is not None:
                return _score_shard(cfg, part, bool(shard), out, cache_dir, progress, should_cancel)
            result = run_analysis(cfg, cache_dir=cache_dir, progress=progress, should_cancel=should_cancel)
        except (KeyboardInterrupt, Cancelled):
            print("\nworkbench: score cancelled; nothing written", file=sys.stderr)
            return CANCELLED
    return _save_analysis(result, out)


def _score_shard(cfg, part, explicit: bool, out: Path, cache, progress, should_cancel) -> int:
    """One shard into its folder; under accelerate (no explicit shard), rank 0 then waits for the others and merges."""
    from core.drift import shards

    if not explicit:
        _own_gpu(cfg)
    folder = shards.run_shard(cfg, part, out, cache, progress, should_cancel)
    print(f"\nworkbench: shard {part.index}/{part.count} written to {folder}", file=sys.stderr)
    if explicit or part.index != 0:
        if explicit:
            print(f"workbench: when all {part.count} shards are done: workbench score --merge --out {out}")
        return 0
    shards.wait_for(out, cfg, part.count, progress)
    return _save_analysis(shards.merge(out), out, merged=True)


def _own_gpu(cfg) -> None:
    """Under accelerate / torchrun, one GPU per process: "cuda" means this process's own (LOCAL_RANK)."""
    if os.environ.get("LOCAL_RANK") and cfg.device in (None, "cuda"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())


def _save_analysis(result, out: Path, merged: bool = False) -> int:
    from core.drift import shards
    from core.drift.probe import NO_LABELS
    from core.io.outputs import disk_full_named

    with disk_full_named(out):
        folder = result.save(out)
    if merged:
        shards.remove(out)  # saved: the shard folders are no longer needed
    print(result.summary.round(4).to_string(index=False))
    if not result.probed:
        print(f"workbench: note: {NO_LABELS}")
    print(f"workbench: wrote {', '.join(f.name for f in sorted(folder.glob('*')))} to {folder}")
    return 0


def perturb(cfg: AnalysisConfig | None, find: str, replace: str, mode: str, out: str | Path, force: bool = False,
            shard: str | None = None, merge: bool = False) -> int:
    """Swap ``find`` for ``replace`` in every trajectory of ``cfg``'s data; answers before/after per checkpoint.
    ``shard`` / ``merge`` as for ``score``."""
    from core.drift import shards
    from core.drift.analysis import resolve_labels
    from core.io.outputs import PERTURB_COLUMNS, check_result_file
    from core.io.trajectories import read_jsonl
    from core.jobs.supervisor import CANCELLED, cancel_flag
    from core.models.series import load_series
    from core.perturb.text import perturbation_test
    from core.progress import Cancelled

    out = expand(out)
    check_result_file(out, force, PERTURB_COLUMNS)
    if merge:
        return _write_perturbation(shards.merge_rows(out), out, merged=True)
    if not (find or "").strip():
        raise InputError("perturb: --find must name a non-empty span")
    part = shards.Shard.parse(shard) if shard else shards.Shard.from_env()
    records = read_jsonl(cfg.data, cfg.limit)
    labels, _ = resolve_labels(cfg, records)  # the whole data's labels, also in a shard
    records = part.take(records) if part else records
    if part and not shard:
        _own_gpu(cfg)
    should_cancel = cancel_flag()
    bar, progress = progress_bar("perturb")
    with bar:
        try:
            progress(0, 1, "loading the checkpoint series")
            series = load_series(cfg.base, cfg.checkpoints, device=cfg.device, dtype=cfg.dtype,
                                 base_names=cfg.base_names, vision=cfg.vision)  # a VL base: the pixel limits
            df = perturbation_test(series, records, find, replace, labels, mode=mode, progress=progress,
                                   should_cancel=should_cancel, chat_template=cfg.chat_template,
                                   template=cfg.template)  # the analysis's answer template, as its probe
        except (KeyboardInterrupt, Cancelled):
            print("\nworkbench: perturbation cancelled; nothing written", file=sys.stderr)
            return CANCELLED
    if part is not None:
        stamp = shards.rows_stamp(cfg, part.count, find=find, replace=replace, mode=mode)
        print(f"workbench: shard {part.index}/{part.count} written to {shards.write_rows(df, out, part, stamp)}",
              file=sys.stderr)
        if shard or part.index != 0:
            if shard:
                print(f"workbench: when all {part.count} shards are done: workbench perturb --merge --out {out}")
            return 0
        shards.wait_for_rows(out, stamp)
        return _write_perturbation(shards.merge_rows(out), out, merged=True)
    if df.empty:
        raise InputError(f"perturb: no trajectory in {cfg.data} contains {find!r}")
    return _write_perturbation(df, out)


def _write_perturbation(df, out: Path, merged: bool = False) -> int:
    from core.drift import shards
    from core.io.cache import write_parquet
    from core.io.outputs import disk_full_named
    from core.perturb.text import perturbation_summary

    if df.empty:
        raise InputError(f"perturb: no trajectory of the data contains the span; nothing written to {out}")
    with disk_full_named(out):
        write_parquet(df, out)
    if merged:
        shards.remove(out)
    print(perturbation_summary(df).round(4).to_string(index=False))
    print(f"workbench: wrote {len(df)} rows to {out}")
    return 0


def visual(cfg, out: str | Path, force: bool = False) -> int:
    """Image swap or region occlusion (a ``core.perturb.visual.VisualConfig``) into the parquet file ``out``."""
    from core.io.outputs import disk_full_named
    from core.jobs.supervisor import CANCELLED, cancel_flag
    from core.perturb import visual, visual_probe
    from core.progress import Cancelled

    out = expand(out)
    visual.check_output(out, force, cfg.kind)
    should_cancel = cancel_flag()
    bar, progress = progress_bar(cfg.kind)
    with bar:
        try:
            df = visual_probe.run(cfg, progress=progress, should_cancel=should_cancel)
        except (KeyboardInterrupt, Cancelled):
            print(f"\nworkbench: {cfg.kind} cancelled; nothing written", file=sys.stderr)
            return CANCELLED
    with disk_full_named(out):
        visual.write_result(df, cfg, out)
    if cfg.kind == "swap":
        print(visual.swap_flip_rates(df).round(4).to_string(index=False))
    print(f"workbench: wrote {len(df)} rows to {out}")
    return 0


def train(cfg: TrainConfig, evaluate: str | Path | None = None, evaluate_limit: int | None = None) -> int:
    """A CPO run from ``cfg`` (a ``TrainConfig``), then, with ``evaluate`` (a world), its held-out figures.
    Under ``accelerate launch`` each process runs this, and TRL's Trainer shards the batches."""
    from core.cpo import runs
    from core.cpo import train as cpo
    from core.jobs.supervisor import CANCELLED, cancel_flag
    from core.models.vision import VisionConfig

    should_cancel = cancel_flag()  # SIGTERM (the page's Cancel): save the adapter at the next step end, stop
    bar, progress = progress_bar("train")
    with bar:
        try:
            result = cpo.train(cfg, progress=progress, should_cancel=should_cancel)
        except RuntimeError as e:
            print(f"workbench: error: {e}", file=sys.stderr)
            return 1
    print(f"workbench: {'cancelled' if result.cancelled else 'finished'} at step {result.steps}; "
          f"adapter in {result.adapter_dir}, metrics in {result.metrics_path}")
    if result.cancelled:
        return CANCELLED
    if evaluate:  # the held-out figures the runs page compares (core.cpo.runs)
        progress(1, 1, "evaluating on the held-out sets")
        # the run's pixel limits: a VL run is evaluated at the resolution it was trained at (text: unused)
        evaluation = runs.evaluate_adapter(evaluate, result.adapter_dir, evaluate_limit, VisionConfig.of(cfg))
        if evaluation is None:
            print(f"workbench: {evaluate} has no held-out set (world.json: evaluation); not evaluated")
            return 0
        if evaluate_limit:
            evaluation["held_out_limit"] = evaluate_limit  # not comparable with full-set figures
        path = runs.write_evaluation(cfg.output_dir, evaluation)
        print("workbench: " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation.items() if isinstance(v, float))
              + f" (in {path})")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m core.jobs.worker", description="a workbench job, from its config file")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="an analysis from an AnalysisConfig JSON")
    p.add_argument("--config", type=expand, required=True, help="AnalysisConfig JSON (e.g. an analysis's config.json)")
    p.add_argument("--out", type=expand, required=True, help="the analysis folder (new or empty, else --force)")
    p.add_argument("--force", action="store_true", help="replace the previous analysis in --out")
    p.add_argument("--workspace", type=expand, default=None, help="its cache/ keeps results for a second run")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--shard", metavar="I/N", help="only shard I of N of the trajectories (see core.drift.shards)")
    p = sub.add_parser("perturb", help="a span swap over an AnalysisConfig's series and data")
    p.add_argument("--config", type=expand, required=True, help="AnalysisConfig JSON")
    p.add_argument("--find", required=True)
    p.add_argument("--replace", required=True)
    p.add_argument("--mode", choices=["generate", "probe"], default="generate")
    p.add_argument("--out", type=expand, required=True, help="parquet file (new, else --force)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--shard", metavar="I/N", help="only shard I of N of the trajectories (see core.drift.shards)")
    p = sub.add_parser("visual", help="image swap or region occlusion from a VisualConfig JSON (core.perturb.visual)")
    p.add_argument("--config", type=expand, required=True, help="VisualConfig JSON")
    p.add_argument("--out", type=expand, required=True, help="parquet file (new, else --force)")
    p.add_argument("--force", action="store_true", help="replace a previous result in --out")
    p = sub.add_parser("train", help="a CPO run from a TrainConfig JSON")
    p.add_argument("--config", type=expand, required=True, help="TrainConfig JSON (core.cpo.train), e.g. a run's config.json")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint-N in output_dir")
    p.add_argument("--evaluate", type=expand, metavar="WORLD", help="afterwards, answer this world's held-out sets")
    p.add_argument("--evaluate-limit", type=int, help="with --evaluate: the first N held-out studies only")
    return ap


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from core.cpo.config import TrainConfig

        cfg = TrainConfig.load(args.config)
        cfg.resume = cfg.resume or args.resume
        return train(cfg, args.evaluate, args.evaluate_limit)
    if args.command == "visual":
        from core.perturb.visual import VisualConfig

        return visual(VisualConfig.load(args.config), args.out, args.force)
    from core.drift.analysis import AnalysisConfig

    cfg = AnalysisConfig.load(args.config)
    if args.command == "perturb":
        return perturb(cfg, args.find, args.replace, args.mode, args.out, args.force, args.shard)
    cache = None
    if not args.no_cache:
        from core.workspace.workspace import Workspace

        ws = Workspace.open(args.workspace)
        if ws.store.notice:
            print(f"workbench: warning: {ws.store.notice}", file=sys.stderr)
        cache = ws.cache_dir
    return score(cfg, args.out, cache, args.force, args.shard)


def main(argv: list[str] | None = None) -> int:
    from core.jobs.supervisor import record_worker_exit

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
