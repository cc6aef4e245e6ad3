"""The ``workbench`` command: the UI, the engine's jobs (score, perturb, visual, train, counterfactuals: the kinds
of ``core.jobs.registry``, their flags generated from their configs) and the sample world's build.

    workbench demo [--world multimodal]         # the UI on a provided world (the demo's text one by default)
    workbench app --workspace ~/cxr --port 8502 --world path/to/world
    workbench build-sample [--world text|multimodal] [--quick] [--out DIR]
    workbench score --base DIR --checkpoints DIR --data FILE --out DIR   (or: --world sample_data --out DIR)
    workbench score ... --out DIR --shard 0/2; ... --shard 1/2; workbench score --merge --out DIR
    accelerate launch -m workbench.cli score ... --out DIR      # a shard per process; rank 0 merges
    workbench perturb --world sample_data --find consolidation --replace "airspace opacity" --out pairs.parquet
    workbench visual --world sample_data/multimodal --kind occlusion --traj-id ID --out occlusion.parquet
    workbench train --config run.json           # a CPO run (core.cpo.config.TrainConfig as JSON, or its flags)
    workbench counterfactuals --workspace DIR --world DIR --dataset test --n 50   # a counterfactual batch
    workbench evaluate --world DIR [--checkpoint NAME]... [--limit N] [--record]   # held-out figures per checkpoint
    workbench world create --name NAME --base DIR --checkpoints DIR... --data FILE... [--graph F] [--eval F]
    workbench families [--markdown]             # the model families served and what is tested on each
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
from core.jobs import registry
from core.workspace import plugins
from core.workspace import world as world_mod
from core.workspace.workspace import Workspace

APP = Path(__file__).resolve().parent / "app.py"
SAMPLE_WORLD_NAMES = ("text", "multimodal")  # workbench.demo.SAMPLE_WORLDS (not imported here: the CLI starts light)
DEMO_WORLD = "text"  # the provided world `workbench demo` and a first `workbench app` open (pyproject entry points)
WORLD_ENV = "WORKBENCH_WORLD"


def _open_workspace(path: Path | None) -> Workspace:
    ws = Workspace.open(path)
    if ws.store.notice:
        print(f"workbench: warning: {ws.store.notice}", file=sys.stderr)
    return ws


def _resolve_world(ws: Workspace, requested: Path | None) -> world_mod.World:
    """The world to open: the one asked for, else the workspace's last one, else a provided world (the demo's)."""
    last = ws.store.last_world()
    if not requested and last and not last.is_dir():
        print(f"workbench: warning: the last world {last} is gone; opening the sample world", file=sys.stderr)
        last = None
    world = world_mod.load_world(requested or last or _default_world())
    ws.store.register_world(world.name, world.root, world.fingerprint())
    return world


def _default_world() -> Path:
    """The demo's text world, else the first world an installed package provides (``core.workspace.plugins``)."""
    provided = plugins.provided_worlds()
    if not provided:
        raise InputError("no world: give --world DIR (a folder with a world.json; `workbench world create` "
                         "writes one); no installed package provides a world")
    return provided.get(DEMO_WORLD) or next(iter(provided.values()))


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
    """Register every world installed packages provide that is present, so that the world picker offers each."""
    for path in plugins.provided_worlds().values():
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


def job_config(args: argparse.Namespace, kind: str):
    """The config of a job command: ``--config FILE`` (as a job runs it), else ``--world DIR`` for the kinds that
    read a world, else the fields' flags alone; flags given beside a file or a world override it."""
    cls = registry.get(kind).config_class()
    worlds = hasattr(cls, "from_world")
    if args.config:  # a saved config (an analysis folder's config.json too) runs as it was
        base = cls.load(args.config)
    elif worlds and args.world:
        try:
            base = cls.from_world(args.world, args.dataset)
        except ValueError as e:
            raise InputError(str(e)) from None
    else:
        base = None
    hint = "or give --config FILE" + (", or --world DIR" if worlds else "")
    return cls.from_args(args, base, hint=f"{kind}: {hint}")


def cmd_job(args: argparse.Namespace) -> int:
    """A job of the engine (``core.jobs.registry``) run here, with a progress bar: what its background job runs."""
    from core.jobs import worker

    k = registry.get(args.command)
    options = k.options_class().from_args(args)
    cfg = None if getattr(options, "merge", False) else job_config(args, k.name)  # a merge: its shards' config
    return worker.execute(k.name, cfg, options)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from core.cpo import runs

    world = world_mod.load_world(args.world)
    if args.record and world.root in plugins.provided_worlds().values():
        raise InputError(f"{world.root}: a provided world's metrics.json is its recorded build table (the sample "
                         "world's); not rewritten")
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
    graph = args.graph or _demo_graph()  # a copy of the sample world's graph to edit, as --help says
    world = world_mod.create_world(world_mod.world_dir(ws.root, args.name), args.name, args.base, args.checkpoints,
                                   args.data, graph, args.eval)
    ws.store.register_world(world.name, world.root, world.fingerprint())
    for note in world.manifest.get("notes", []):
        print(f"workbench: warning: {note}", file=sys.stderr)
    steps = ", ".join(f"{c.name} (step {c.step})" for c in world.checkpoints) or "none"
    print(f"workbench: world {world.name!r} in {world.root}\nworkbench: checkpoints: {steps}\n"
          f"workbench: datasets: {', '.join(world.manifest['datasets'])}\n"
          f"workbench: open it with: workbench app --world {world.root}")
    return 0


def cmd_families(args: argparse.Namespace) -> int:
    """Print the family matrix (``core.models.families.matrix``: the table the code dispatches on)."""
    from core.models.families.matrix import readme_block, text_table

    print(readme_block() if args.markdown else text_table())
    return 0


def _demo_graph() -> Path | None:
    """The demo's text world's concept graph (``world create`` starts from it without --graph), if provided."""
    path = plugins.provided_worlds().get(DEMO_WORLD)
    graph = path / "concept_graph.json" if path else None
    return graph if graph and graph.is_file() else None


def job_args(p: argparse.ArgumentParser, kind: str) -> None:
    """A job command's flags: ``--config``, the options and the config's fields (``core.jobs.worker``), and for the
    kinds that read a world, ``--world`` / ``--dataset``."""
    from core.jobs import worker

    worker.add_job_arguments(p, kind, config_required=False)
    if hasattr(registry.get(kind).config_class(), "from_world"):
        p.add_argument("--world", type=expand, help="a world folder: fills --base, --checkpoints, --data (and --graph)")
        p.add_argument("--dataset", default=None, help="with --world: which dataset (default: the world's default)")
    if kind in ("score", "perturb"):  # the earlier name of --no-include-prompt
        p.add_argument("--cot-only", dest="include_prompt", action="store_false", default=argparse.SUPPRESS,
                       help="probe the CoT only, not the prompt (= --no-include-prompt)")


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
            p.add_argument("--world", default=DEMO_WORLD, metavar="NAME",
                           help="which provided world opens first: the sample text one (text, the default) or the "
                                "multimodal one (multimodal: films and a tiny Qwen2.5-VL), or any world an installed "
                                "package provides (entry points cot_drift_workbench.worlds); the picker offers all")
            p.add_argument("--watch", action="store_true", help="also start a short real RFT (TRL GRPOTrainer on the "
                           "text world's shifting stream, CPU) with the drift watch attached; opens the Watch page")
            p.add_argument("--watch-config", type=expand, default=None, help="with --watch: the run's settings, a JSON "
                           "of workbench.demo.watch_demo.WatchDemoConfig fields (steps, lr, save_steps, ...)")
    for kind in registry.KINDS.values():  # the engine's jobs: flags from their configs and options
        if kind.name == "watch":  # its own command: the job's flags, --job, and `watch plugin`
            from workbench import watch_cli

            watch_cli.add_parser(sub)
            continue
        job_args(sub.add_parser(kind.name, help=kind.help), kind.name)
    p = sub.add_parser("evaluate", help="a world's held-out figures for its base and checkpoints (JSON lines)")
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--checkpoint", action="append", help="checkpoint name or folder (repeatable; default: all and the base)")
    p.add_argument("--limit", type=int, help="the first N held-out studies only")
    p.add_argument("--record", action="store_true",
                   help="keep the figures as the world's metrics.json (the Home page's drift table, the runs page's "
                        "'before' row); not for the sample world")
    p = sub.add_parser("families", help="the model families the workbench serves (by config.json model_type), "
                       "what is tested on each, and the types refused by name")
    p.add_argument("--markdown", action="store_true", help="as the README's block (Markdown)")
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
    p = sub.add_parser("build-sample", help="rebuild a sample world from scratch (seeded, about 5 minutes on CPU "
                       "for the text world, sample_data/; 3.5 for the multimodal one, sample_data/multimodal/, up to 7 on "
                       "busy shared cores)")
    p.add_argument("--world", choices=SAMPLE_WORLD_NAMES, default="text", help="which sample world to build")
    p.add_argument("--out", type=expand, default=None,
                   help="where (default: sample_data/ for the text world, sample_data/multimodal/ for the other)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a miniature world for tests (seconds)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from core.progress import record_worker_exit

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
            if args.watch:  # a live run for the Watch page (workbench.demo.watch_demo)
                from workbench.demo import SAMPLE_WORLDS, watch_demo

                watch_demo.start(_open_workspace(args.workspace), SAMPLE_WORLDS["text"],
                                 watch_demo.load_config(args.watch_config))
                args.open_path = "/watch"
            return cmd_app(args, world_path=plugins.provided_world(args.world))
        if args.command == "watch":
            from workbench import watch_cli

            return watch_cli.run(args, _open_workspace)
        if args.command in registry.KINDS:
            return cmd_job(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "world":
            return cmd_world_create(args)
        if args.command == "families":
            return cmd_families(args)
        return cmd_build_sample(args)
    except InputError as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
