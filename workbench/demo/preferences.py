"""The demo world's default CPO dataset: counterfactual preference pairs from its SFT split (never the tests).

    path = build_preferences("sample_data", "runs/pairs.jsonl", n=480, seed=0)   # TRL JSONL with source, weight

Two sources, by the graph rules of ``core.counterfactuals.rewrite``:

- ``shortcut``: studies that show "opacity" but are not Lung Opacity; rejected = the CoT rewritten to argue
  for Lung Opacity, i.e. exactly the shortcut "opacity -> Lung Opacity" the RFT stream taught checkpoint-160.
- ``confusable``: any other study; rejected = the CoT rewritten to a confusable disease (keeps the rest of
  the model's knowledge anchored).

Weights per source (shortcut 2, confusable 1) are written as given; the trainer normalises them to mean one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

from core.counterfactuals.rewrite import choose_targets, rewrite
from core.errors import InputError
from core.graph import concepts
from core.io import formats
from core.io.cache import atomic_write_text
from core.io.trajectories import read_jsonl
from core.workspace.world import load_world
from workbench.demo import spec

if TYPE_CHECKING:
    from core.cpo.config import TrainConfig

WEIGHTS = {"shortcut": 2.0, "confusable": 1.0}


def _pair(graph, rec: dict, target: str, source: str) -> dict | None:
    try:
        rejected = rewrite(graph, rec["completion"], rec["label"], target).text
    except InputError:
        return None
    if rejected.strip() == rec["completion"].strip():
        return None
    return {"prompt": rec["prompt"], "chosen": rec["completion"], "rejected": rejected, "label": rec["label"],
            "target": target, "source": source, "weight": WEIGHTS[source]}


def preference_rows(world, n: int, seed: int, shortcut_share: float = 0.5) -> list[dict]:
    """``n`` pairs (about ``shortcut_share`` of them shortcut pairs), drawn from the SFT split with ``seed``."""
    graph = concepts.load_graph(world.graph_path)
    records = read_jsonl(world.dataset_path("sft"))
    rng = random.Random(seed)
    rng.shuffle(records)
    carriers = [r for r in records if spec.SHORTCUT_FINDING in r["findings"] and r["label"] != spec.SHORTCUT_LABEL]
    rows = [p for r in carriers[: round(n * shortcut_share)]
            if (p := _pair(graph, r, spec.SHORTCUT_LABEL, "shortcut"))]
    for rec in records:
        if len(rows) >= n:
            break
        targets = [t for t in choose_targets(graph, rec["label"], "confusable") if t != spec.SHORTCUT_LABEL]
        if rec in carriers or not targets:
            continue
        if p := _pair(graph, rec, rng.choice(targets), "confusable"):
            rows.append(p)
    rng.shuffle(rows)
    return rows


def build_preferences(world: str | Path, out: str | Path, n: int = 480, seed: int = 0,
                      shortcut_share: float = 0.5) -> Path:
    """Write the pairs as TRL preference JSONL (prompt, chosen, rejected, source, weight, label, target)."""
    rows = preference_rows(load_world(world), n, seed, shortcut_share)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(formats.trl_record(r), ensure_ascii=False) + "\n" for r in rows))
    return out


# The sample world's default short run, tuned by ``workbench.demo.cpo_experiment``: the authors' lr 2e-5 barely
# moves this 0.8 M-parameter model in 60 steps (flip rate unchanged); 1e-3, the scale its RFT ran at, repairs it.
SAMPLE_LEARNING_RATE = 1e-3
SAMPLE_PAIRS = 480


def sample_config(world: str | Path, output_dir: str | Path, data: str | Path | None = None,
                  **overrides) -> TrainConfig:
    """The default CPO run on a demo world: from its drifted ``rft/checkpoint-160``, 60 steps of batch 8 on
    ``data`` (default: ``build_preferences`` into ``output_dir/pairs.jsonl``); ``overrides`` set any field."""
    from core.cpo.config import TrainConfig

    w = load_world(world)
    out = Path(output_dir)
    if data is None:
        data = build_preferences(w.root, out / "pairs.jsonl", n=SAMPLE_PAIRS)
    opts = dict(base_model=str(w.base_model_dir), data=str(data), output_dir=str(out),
                init_adapter=str(w.root / w.manifest.get("checkpoints", "rft") / "checkpoint-160"),
                learning_rate=SAMPLE_LEARNING_RATE, base_names=[w.manifest.get("base_model_name", "")])
    return TrainConfig(**{**opts, **overrides})
