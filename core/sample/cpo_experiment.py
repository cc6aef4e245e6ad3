"""The sample-world CPO experiment: from the drifted checkpoint-160, train each objective, evaluate each run.

    python -m core.sample.cpo_experiment --out /tmp/cpo-exp [--steps 60] [--lr 1e-3 (default: the sample default)] [--pairs 480]

Prints and writes ``results.json``: one row per model (checkpoint-160 before, then sft, DPO with random
negatives, cpo, cpo++) with the world's own figures (``core.sample.evaluate.evaluate_world``) and seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core.cpo import TrainConfig, train
from core.sample.evaluate import evaluate_world
from core.sample.preferences import build_preferences, sample_config
from core.world import SAMPLE_WORLD, load_world

VARIANTS = {"sft": dict(objective="sft"), "dpo-random": dict(objective="cpo++", negatives="random"),
            "cpo": dict(objective="cpo"), "cpo++": dict(objective="cpo++")}


def evaluate_adapter(world, adapter: str | Path, limit: int | None = None) -> dict:
    from core.series import load_series

    series = load_series(world.base_model_dir, [adapter], device="cpu", base_names=[world.manifest["base_model_name"]])
    name = series.names[-1]
    with series.activate(name) as model:
        return evaluate_world(model, series.tokenizer, world, limit)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=TrainConfig.max_steps)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--pairs", type=int, default=480)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    world = load_world(SAMPLE_WORLD)
    data = build_preferences(world.root, args.out / "pairs.jsonl", n=args.pairs)
    start = world.root / "rft" / "checkpoint-160"
    rows = [{"model": "checkpoint-160", **evaluate_adapter(world, start, args.limit)}]
    print(rows[-1], flush=True)
    for name in args.variants:
        extra = {"learning_rate": args.lr} if args.lr else {}
        cfg = sample_config(world.root, args.out / name, data=data, max_steps=args.steps, **VARIANTS[name], **extra)
        t0 = time.time()
        result = train(cfg)
        seconds = time.time() - t0
        rows.append({"model": name, "train_seconds": round(seconds, 1),
                     **evaluate_adapter(world, result.adapter_dir, args.limit)})
        print(rows[-1], flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
