"""A watched run for page tests: two LoRA checkpoints on a world's base (random, non-zero weights, as a trainer in a
TRL layout would leave them), recorded by the trainer callback's own function and scored by the real scorer."""

from __future__ import annotations

import json
from pathlib import Path


def make_watch(world: Path, root: Path, status: str = "running", steps: tuple[int, ...] = (2, 4)) -> Path:
    """``root/watch``: the callback's folder with ``steps`` recorded and scored (4 studies), the trainer at ``status``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.watch import callback, scorer
    from core.watch.config import WatchConfig

    watch = callback.init_watch(root / "watch", keep="adapters", source="callback")
    history = []
    for seed, step in enumerate(steps, 1):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(world / "model")
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        peft.save_pretrained(root / "run" / f"checkpoint-{step}", save_embedding_layers=False)
        history += [{"step": s, "loss": 1.0 / s, "reward": 0.1 * s} for s in range(len(history) + 1, step + 1)]
        callback.record(root / "run" / f"checkpoint-{step}", watch, step, {"global_step": step, "log_history": history})
    scorer.run(WatchConfig(run=str(watch), world=str(world), limit=4, batch_size=4, decode=2, once=True,
                           positions="sentence"))
    (watch / "trainer.json").write_text(json.dumps({"status": status, "global_step": steps[-1], "max_steps": 10,
                                                    "log_history": history}))
    return watch
