"""The sample-world CPO experiment: from the drifted checkpoint-160, train each objective, evaluate each run.

    python -m workbench.demo.cpo_experiment --out /tmp/cpo-exp [--steps 60] [--lr 1e-3 (default: the sample default)] [--pairs 480]

Prints and writes ``results.json``: one row per model (checkpoint-160 before, then sft, DPO with random
negatives, cpo, cpo++) with the world's own figures (``workbench.demo.evaluate.evaluate_world``) and seconds.

Measured (torch 2.13.0+cpu, 2 shared cores; 60 steps of 8 pairs, lr 1e-3, 480 pairs from the SFT split,
full held-out sets of 700 + 700 studies; train seconds include model load and were taken while other
jobs shared the 2 cores, unloaded a step takes about 0.1 s):

| model | accuracy | perturbed acc. | flip rate | opacity -> LO | rare-class acc. | malformed | train s |
|---|---:|---:|---:|---:|---:|---:|---:|
| checkpoint-160 (start) | 0.587 | 0.573 | 0.104 | 1.000 | 0.861 | 0.000 | |
| sft (NLL on chosen) | 0.927 | 0.929 | 0.049 | 0.139 | 0.822 | 0.000 | 287 |
| DPO, random negatives | 0.817 | 0.754 | 0.289 | 0.101 | 0.970 | 0.094 | 141 |
| cpo | 0.887 | 0.897 | 0.080 | 0.038 | 0.733 | 0.000 | 207 |
| cpo++ | 0.833 | 0.833 | 0.184 | 0.000 | 0.743 | 0.039 | 143 |

CPO beats DPO with random negatives (which raises the flip rate and breaks the answer format), but SFT on
the chosen side beats both here: the chosen CoTs are the SFT distribution the base was trained on, so the
paper's ordering (CPO > DPO-random > SFT) does not hold on this world. With the authors' lr 2e-5 CPO
barely moves this 0.8 M-parameter model (first 300 studies: accuracy 0.567 -> 0.613, flip rate 0.127 ->
0.130), hence the sample default of 1e-3.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core.cpo.config import TrainConfig
from core.cpo.runs import evaluate_adapter
from core.cpo.train import train
from core.io.cache import atomic_write_text
from core.workspace.world import load_world
from workbench.demo import text_world
from workbench.demo.preferences import build_preferences, sample_config

VARIANTS = {"sft": dict(objective="sft"), "dpo-random": dict(objective="cpo++", negatives="random"),
            "cpo": dict(objective="cpo"), "cpo++": dict(objective="cpo++")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=TrainConfig.max_steps)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--pairs", type=int, default=480)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    world = load_world(text_world())
    data = build_preferences(world.root, args.out / "pairs.jsonl", n=args.pairs)
    start = Path(sample_config(world.root, args.out / "start", data=data).init_adapter)  # the drifted checkpoint
    rows = [{"model": start.name, **evaluate_adapter(world.root, start, args.limit)}]
    print(rows[-1], flush=True)
    for name in args.variants:
        extra = {"learning_rate": args.lr} if args.lr else {}
        cfg = sample_config(world.root, args.out / name, data=data, max_steps=args.steps, **VARIANTS[name], **extra)
        t0 = time.time()
        result = train(cfg)
        seconds = time.time() - t0
        rows.append({"model": name, "train_seconds": round(seconds, 1),
                     **evaluate_adapter(world.root, result.adapter_dir, args.limit)})
        print(rows[-1], flush=True)
    atomic_write_text(args.out / "results.json", json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
