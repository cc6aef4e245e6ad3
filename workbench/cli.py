"""The ``workbench`` command: the UI, the engine's jobs (score, perturb, train) and the sample world's build.

    workbench demo [--world multimodal]         # the UI on an embedded sample world (both are in the picker)
    workbench app --workspace ~/cxr --port 8502 --world path/to/world
    workbench build-sample [--world text|multimodal] [--quick] [--out DIR]
    workbench score --base DIR --checkpoints DIR --data FILE --out DIR   (or: --world sample_data --out DIR)
    workbench score ... --out DIR --shard 0/2; ... --shard 1/2; workbench score --merge --out DIR
    accelerate launch -m workbench.cli score ... --out DIR      # a shard per process; rank 0 merges
    workbench perturb --world sample_data --find consolidation --replace "airspace opacity" --out pairs.parquet
    workbench train --config run.json           # a CPO run (core.cpo.train.TrainConfig as JSON)
    workbench evaluate --world DIR [--checkpoint NAME]... [--limit N] [--record]   # held-out figures per checkpoint
    workbench world create --name NAME --base DIR --checkpoints DIR... --data FILE... [--graph F] [--eval F]
    workbench watch --run DIR --base DIR --data FILE [--out DIR] [--once]   # drift watch of a running job
    workbench watch plugin --out cot_drift_watch.py     # the trainer callback / ms-swift plugin as one file
    workbench demo --watch                      # a live GRPO run with the watch attached (workbench.demo.watch_demo)
    accelerate launch -m core.jobs.worker train --config run.json     # the same on several GPUs or with DeepSpeed
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import webbrowser
from pathlib import Path

from core.errors import InputError
from core.io.paths import expand
from core.io.roots import ENV_VAR
from core.workspace import world as world_mod
from core.workspace.workspace import Workspace

APP = Path(__file__).resolve().parent / "app.py"
SAMPLE_WORLD_NAMES = ("text", "multimodal")  # workbench.demo.SAMPLE_WORLDS (not imported here: the CLI starts light)
WORLD_ENV = "WORKBENCH_WORLD"


def _open_workspace(path: Path | None) -> Workspace:
    ws = Workspace.open(path)
    if ws.store.notice:
        print(f"workbench: warning: {ws.store.notice}", file=sys.stderr)
    return ws


def _resolve_world(ws: Workspace, requested: Path | None) -> world_mod.World:
    """The world to open: the one asked for, else the workspace's last one, else the sample world."""
    last = ws.store.last_world()
    if not requested and last and not last.is_dir():
        print(f"workbench: warning: the last world {last} is gone; opening the sample world", file=sys.stderr)
        last = None
    world = world_mod.load_world(requested or last or world_mod.SAMPLE_WORLD)
    ws.store.register_world(world.name, world.root, world.fingerprint())
    return world


def _access(args: argparse.Namespace) -> dict[str, str]:
    """The environment that guards the server: none on this machine only (127.0.0.1, the default); a token
    (``--token``, ``$WORKBENCH_TOKEN`` or a new one, printed) when ``--host`` exposes it to others."""
    from workbench.auth import TOKEN_ENV, is_loopback, new_token

    if is_loopback(args.host):
        return {TOKEN_ENV: ""}
    token = args.token or os.environ.get(TOKEN_ENV) or new_token()
    print(f"workbench: WARNING: listening on {args.host}: anyone who can reach port {args.port} of this machine "
          "can use the workbench once they have its token. Use it on a trusted network only.", file=sys.stderr)
    if not args.token and not os.environ.get(TOKEN_ENV):
        print(f"workbench: access token {token} (give it once per browser session, or open "
              f"http://HOST:{args.port}/?token={token})", flush=True)
    return {TOKEN_ENV: token}


def _register_samples(ws: Workspace) -> None:
    """Register every embedded sample world that is present, so that the world picker offers each."""
    from workbench.demo import SAMPLE_WORLDS

    for path in SAMPLE_WORLDS.values():
        if (path / world_mod.MANIFEST).is_file():
            w = world_mod.load_world(path)
            ws.store.register_world(w.name, w.root, w.fingerprint())


def cmd_app(args: argparse.Namespace, world_path: Path | None = None) -> int:
    if args.token is not None and len(args.token) < 8:
        raise InputError("--token: use at least 8 characters")
    ws = _open_workspace(args.workspace)
    if args.command == "demo":
        _register_samples(ws)
    world = _resolve_world(ws, world_path or args.world)
    ws.store.close()
    env = {**os.environ, ENV_VAR: str(ws.root), WORLD_ENV: str(world.root), **_access(args)}
    # Always headless: otherwise Streamlit's first-run e-mail prompt blocks on stdin. We open the browser.
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(args.port),
           "--server.address", args.host, "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
           "--server.headless", "true"]
    url = f"http://localhost:{args.port}" + getattr(args, "open_path", "")
    print(f"workbench: world {world.root}\nworkbench: workspace {ws.root}\nworkbench: open {url}", flush=True)
    proc = subprocess.Popen(cmd, env=env)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stopping `workbench` stops its server, never orphans it
        signal.signal(sig, lambda *_: proc.terminate())
    if not args.headless:
        threading.Thread(target=_open_browser_when_up, args=(url, proc), daemon=True).start()
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


def _open_browser_when_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            webbrowser.open(url)
            return
        except OSError:
            time.sleep(0.3)


def cmd_build_sample(args: argparse.Namespace) -> int:
    from workbench.demo import SAMPLE_WORLDS, build, vlworld

    out = args.out or SAMPLE_WORLDS[args.world]
    argv = ["--out", str(out), "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
    return vlworld.main(argv) if args.world == "multimodal" else build.main(argv)


def _analysis_config(args: argparse.Namespace):
    from core.drift.analysis import AnalysisConfig

    opts = {k: v for k, v in dict(top_k=getattr(args, "top_k", None), batch_size=getattr(args, "batch_size", None),
                                  positions=getattr(args, "positions", None), limit=args.limit, device=args.device,
                                  dtype=args.dtype, min_pixels=getattr(args, "min_pixels", None),
                                  max_pixels=getattr(args, "max_pixels", None)).items() if v is not None}
    if getattr(args, "cot_only", False):
        opts["include_prompt"] = False
    if getattr(args, "no_chat_template", False):
        opts["chat_template"] = False
    try:
        if getattr(args, "config", None):  # a saved config (an analysis folder's config.json) runs as it was
            import dataclasses

            return dataclasses.replace(AnalysisConfig.load(args.config), **opts)
        if args.world:
            return AnalysisConfig.from_world(args.world, args.dataset, **opts)
        if not (args.base and args.data):
            raise InputError(f"{args.command}: give --world DIR, or --base DIR and --data FILE (and --checkpoints DIR)")
        return AnalysisConfig(base=str(args.base), data=str(args.data), graph=args.graph and str(args.graph),
                              checkpoints=[str(c) for c in args.checkpoints] if len(args.checkpoints or []) > 1
                              else (str(args.checkpoints[0]) if args.checkpoints else None),
                              base_names=args.base_name or [], **opts)
    except ValueError as e:
        raise InputError(str(e)) from None


def cmd_score(args: argparse.Namespace) -> int:
    from core.jobs import worker

    cfg = None if args.merge else _analysis_config(args)  # a merge runs from its shards' config
    cache = _open_workspace(args.workspace).cache_dir if not (args.no_cache or args.merge) else None
    return worker.score(cfg, args.out, cache, args.force, args.shard, args.merge)  # the job's entry (core.jobs.worker)


def cmd_perturb(args: argparse.Namespace) -> int:
    """Swap a span in every trajectory of a dataset and write the before/after answers per checkpoint."""
    from core.jobs import worker

    cfg = None if args.merge else _analysis_config(args)  # a merge runs from its shards' rows
    return worker.perturb(cfg, args.find, args.replace, args.mode, args.out, args.force, args.shard, args.merge)


def cmd_train(args: argparse.Namespace) -> int:
    """A CPO run from a TrainConfig JSON; under ``accelerate launch`` each process runs this same entry point
    (``accelerate launch -m core.jobs.worker train --config run.json``), and TRL's Trainer shards the batches."""
    from core.cpo.config import TrainConfig
    from core.jobs import worker

    cfg = TrainConfig.load(args.config)
    if args.resume:
        cfg.resume = True
    return worker.train(cfg, args.evaluate, args.evaluate_limit)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from core.cpo import runs

    world = world_mod.load_world(args.world)
    if args.record and world.root == world_mod.SAMPLE_WORLD.resolve():
        raise InputError(f"{world.root}: the sample world's metrics.json is its recorded build table; not rewritten")
    by_name = {c.name: c for c in world.checkpoints}
    rows = []
    for name in args.checkpoint or ["base", *by_name]:
        info = by_name.get(name)
        path = None if name == "base" else (info.path if info else Path(name))
        if path is not None and not Path(path).is_dir():
            raise InputError(f"--checkpoint {name}: not a checkpoint of {world.root} (known: {', '.join(by_name)})")
        figures = runs.evaluate_adapter(world.root, path, args.limit)
        if figures is None:
            raise InputError(f"{world.root}: no held-out set (world.json: evaluation; `world create --eval FILE`)")
        rows.append({"checkpoint": "base (SFT)" if name == "base" else name, "step": info.step if info else 0,
                     **figures})
        print(json.dumps(rows[-1]), flush=True)
    if args.record:
        path = world_mod.record_metrics(world, rows)
        print(f"workbench: recorded in {path}", file=sys.stderr)
    return 0


def cmd_world_create(args: argparse.Namespace) -> int:
    ws = Workspace.open(args.workspace)
    world = world_mod.create_world(world_mod.world_dir(ws.root, args.name), args.name, args.base, args.checkpoints,
                                   args.data, args.graph, args.eval)
    ws.store.register_world(world.name, world.root, world.fingerprint())
    for note in world.manifest.get("notes", []):
        print(f"workbench: warning: {note}", file=sys.stderr)
    steps = ", ".join(f"{c.name} (step {c.step})" for c in world.checkpoints) or "none"
    print(f"workbench: world {world.name!r} in {world.root}\nworkbench: checkpoints: {steps}\n"
          f"workbench: datasets: {', '.join(world.manifest['datasets'])}\n"
          f"workbench: open it with: workbench app --world {world.root}")
    return 0


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or auto, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="workbench", description="CoT Drift Workbench: see and repair concept "
                                 "drift in the chain of thought of RFT checkpoints.")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in (("app", "start the UI"), ("demo", "start the UI on the embedded sample world")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--workspace", type=expand, default=None,
                       help=f"folder for the database, caches and runs (default ${ENV_VAR} or ~/.cot-drift-workbench)")
        p.add_argument("--port", type=int, default=8501)
        p.add_argument("--headless", action="store_true", help="do not open a browser window")
        p.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only); 0.0.0.0 exposes the "
                            "workbench to the network and then requires a token")
        p.add_argument("--token", default=None,
                       help="with --host: the shared secret visitors give (default $WORKBENCH_TOKEN, else a new one, printed)")
        if name == "app":
            p.add_argument("--world", type=expand, default=None,
                           help="world folder with a world.json (default: the last one opened, else the sample world)")
        else:
            p.add_argument("--world", choices=SAMPLE_WORLD_NAMES, default="text",
                           help="which sample world opens first: the text one (default) or the multimodal one "
                                "(films and a tiny Qwen2.5-VL); the world picker offers both")
            p.add_argument("--watch", action="store_true", help="also start a short real RFT (TRL GRPOTrainer on the "
                           "text world's shifting stream, CPU) with the drift watch attached; opens the Watch page")
            p.add_argument("--watch-config", type=expand, default=None, help="with --watch: the run's settings, a JSON "
                           "of workbench.demo.watch_demo.WatchDemoConfig fields (steps, lr, save_steps, ...)")
    def series_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--world", type=expand, help="a world folder: fills --base, --checkpoints, --data and --graph")
        p.add_argument("--dataset", default=None, help="with --world: which dataset (default: the world's default)")
        p.add_argument("--base", type=expand, help="base model folder (config.json, weights, tokenizer)")
        p.add_argument("--checkpoints", type=expand, nargs="*", help="trainer output folder, or checkpoint folders in order")
        p.add_argument("--data", type=expand, help="trajectories JSONL with prompt, completion, label")
        p.add_argument("--graph", type=expand, help="concept graph JSON (labels and concept drivers)")
        p.add_argument("--base-name", action="append", help="another name of the base model in adapter configs")
        p.add_argument("--limit", type=int, help="first N trajectories only")
        p.add_argument("--device", choices=["cuda", "cpu", "mps"])
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
        p.add_argument("--no-chat-template", action="store_true",
                       help="encode conversations as plain prompt text, not through the tokenizer's chat template")
        p.add_argument("--min-pixels", type=int, help="vision-language models: fewest pixels an image is resized "
                       "to (ms-swift MIN_PIXELS); default: the checkpoint's preprocessor_config.json")
        p.add_argument("--max-pixels", type=int, help="vision-language models: most pixels an image is resized to "
                       "(ms-swift MAX_PIXELS; the authors used 1003520); default: the checkpoint's")

    p = sub.add_parser("score", help="score trajectories under a checkpoint series and write the drift tables")
    series_args(p)
    p.add_argument("--out", type=expand, required=True, help="folder for the parquet tables and config.json "
                   "(new or empty; a previous analysis is replaced only with --force, other files never)")
    p.add_argument("--force", action="store_true", help="replace the previous analysis in --out")
    p.add_argument("--config", type=expand, help="an AnalysisConfig JSON (e.g. an analysis's config.json) instead of "
                   "the series flags; flags given as well override it")
    p.add_argument("--shard", metavar="I/N", help="score only shard I of N of the trajectories (0-based) into a "
                   "folder beside --out; then `workbench score --merge --out DIR`. Under `accelerate launch` each "
                   "process takes its RANK/WORLD_SIZE and rank 0 merges by itself")
    p.add_argument("--merge", action="store_true", help="merge the finished shards of --out into one analysis")
    p.add_argument("--batch-size", type=_batch_size, help="trajectories per scoring pass, or auto (the default): "
                   "the most that the free device memory holds, by estimate (a run that cannot fit is refused first)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--positions", choices=["every", "sentence", "end"])
    p.add_argument("--cot-only", action="store_true", help="probe the CoT only, not the prompt")
    p.add_argument("--workspace", type=expand, default=None, help="its cache/ keeps results for a second run")
    p.add_argument("--no-cache", action="store_true")
    p = sub.add_parser("perturb", help="swap a span in every trajectory; answers before/after per checkpoint")
    series_args(p)
    p.add_argument("--config", type=expand, help="an AnalysisConfig JSON instead of the series flags")
    p.add_argument("--find", help='the span to replace, e.g. "consolidation" (required but with --merge)')
    p.add_argument("--replace", default="", help='its replacement, e.g. "airspace opacity"')
    p.add_argument("--shard", metavar="I/N", help="only shard I of N of the trajectories; then --merge (under "
                   "`accelerate launch`: RANK/WORLD_SIZE, and rank 0 merges)")
    p.add_argument("--merge", action="store_true", help="merge the finished shards of --out into one result file")
    p.add_argument("--mode", choices=["generate", "probe"], default="generate",
                   help="generate: the model writes its own CoT (default); probe: the CoT is teacher-forced")
    p.add_argument("--out", type=expand, required=True, help="parquet file for the per-trajectory rows (a new "
                   "file; a previous result is replaced only with --force, other files never)")
    p.add_argument("--force", action="store_true", help="replace the previous result in --out")
    p = sub.add_parser("train", help="a CPO run from a config JSON (also under `accelerate launch -m core.jobs.worker`)")
    p.add_argument("--config", type=expand, required=True, help="TrainConfig JSON (core.cpo.train), e.g. a run's config.json")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint-N in output_dir")
    p.add_argument("--evaluate", type=expand, metavar="WORLD",
                   help="afterwards, answer this world's held-out sets with the new adapter (evaluation.json)")
    p.add_argument("--evaluate-limit", type=int, help="with --evaluate: the first N held-out studies only")
    p = sub.add_parser("evaluate", help="a world's held-out figures for its base and checkpoints (JSON lines)")
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--checkpoint", action="append", help="checkpoint name or folder (repeatable; default: all and the base)")
    p.add_argument("--limit", type=int, help="the first N held-out studies only")
    p.add_argument("--record", action="store_true",
                   help="keep the figures as the world's metrics.json (the Home page's drift table, the runs page's "
                        "'before' row); not for the sample world")
    p = sub.add_parser("world", help="register your own run as a world (then: workbench app --world DIR)")
    w = p.add_subparsers(dest="world_command", required=True).add_parser(
        "create", help="a world from your base model, checkpoint series, trajectories, graph and held-out set")
    w.add_argument("--name", required=True, help="the world's name (also its folder under <workspace>/worlds/)")
    w.add_argument("--base", type=Path, required=True, help="base model folder (config.json, weights, tokenizer)")
    w.add_argument("--checkpoints", type=Path, nargs="*", default=[],
                   help="trainer output folders (TRL checkpoint-N/, ms-swift output/) or checkpoint folders, in order")
    w.add_argument("--data", type=Path, nargs="+", required=True,
                   help="trajectory files: JSONL/JSON (prompt/completion, messages, CCF), parquet, datasets folder")
    w.add_argument("--graph", type=Path, help="concept graph JSON (default: a copy of the sample graph, to edit)")
    w.add_argument("--eval", type=Path, help="held-out labelled trajectories for evaluating checkpoints and runs")
    w.add_argument("--workspace", type=Path, default=None, help="the workspace that keeps the world")
    from workbench import watch_cli

    watch_cli.add_parser(sub)
    p = sub.add_parser("build-sample", help="rebuild a sample world from scratch (seeded, about 5 minutes on CPU "
                       "for the text world, sample_data/; about 10 for the multimodal one, sample_data/multimodal/)")
    p.add_argument("--world", choices=SAMPLE_WORLD_NAMES, default="text", help="which sample world to build")
    p.add_argument("--out", type=expand, default=None,
                   help="where (default: sample_data/ for the text world, sample_data/multimodal/ for the other)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a miniature world for tests (seconds)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from core.jobs.supervisor import record_worker_exit

    code = 1
    try:
        code = _main(argv)
    except SystemExit as e:  # argparse errors and the like
        code = e.code if isinstance(e.code, int) else 2
        raise
    finally:
        record_worker_exit(code)  # a background job's state survives a killed supervisor
    return code


def _main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models and data load from local paths only
    # OpenMP threads that spin while they wait starve each other on shared or busy cores (greedy decoding of 60
    # studies: 60-70 s spinning, 0.3-1 s passive); set before torch loads, inherited by servers and jobs
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        if args.command == "app":
            return cmd_app(args)
        if args.command == "demo":
            from workbench.demo import SAMPLE_WORLDS

            if args.watch:  # a live run for the Watch page (workbench.demo.watch_demo)
                from workbench.demo import watch_demo

                watch_demo.start(_open_workspace(args.workspace), SAMPLE_WORLDS["text"],
                                 watch_demo.load_config(args.watch_config))
                args.open_path = "/watch"
            return cmd_app(args, world_path=SAMPLE_WORLDS[args.world])
        if args.command == "score":
            return cmd_score(args)
        if args.command == "perturb":
            return cmd_perturb(args)
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "world":
            return cmd_world_create(args)
        if args.command == "watch":
            from workbench import watch_cli

            return watch_cli.run(args, _open_workspace)
        return cmd_build_sample(args)
    except InputError as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
