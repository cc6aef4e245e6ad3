"""A live run for talks: TRL's ``GRPOTrainer`` on the text sample world's shifting stream, the drift watch attached.

``workbench demo --watch`` starts two background jobs in the workspace and opens the Watch page:

- the trainer: ``python -m workbench.demo.watch_demo --watch DIR`` (this module): GRPO with LoRA on the sample
  world's SFT base, on CPU, a reward of 1 for the stream's label (``generator.stream_batch``: a growing share of
  studies that show "opacity" are labelled Lung Opacity, the shortcut), ``save_steps`` small and
  ``save_total_limit=1`` as real runs rotate, and ``DriftWatchCallback`` recording each checkpoint;
- the scorer: job kind ``watch`` (``python -m core.jobs.worker watch``) on the watch folder (the world's first test studies, every step).

The audience sees the shortcut appear in the drift curves and the alarm fire; Stop on the page ends the run.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.demo import generator


@dataclass
class WatchDemoConfig:
    steps: int = 40  # optimisation steps (each one generation batch): the shortcut shows from about step 32
    prompts_per_step: int = 8
    group: int = 4  # completions per prompt (GRPO's group)
    lr: float = 2e-3  # constant (5e-3 broke the model: entropy 5.9 nats, accuracy 0.06)
    max_shift_share: float = 1.0  # the stream's share of shortcut-labelled studies at the last step
    save_steps: int = 4
    max_completion_length: int = 72
    seed: int = 0
    threads: int = 2
    probe_studies: int = 32  # the scorer's probe set: the world's first test studies


def load_config(path: Path | None) -> WatchDemoConfig:
    """The demo run's settings: defaults, or a JSON of ``WatchDemoConfig`` fields (an unknown field is named)."""
    import json

    from core.errors import InputError

    if path is None:
        return WatchDemoConfig()
    try:
        return WatchDemoConfig(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"{path}: not a watch demo config ({e})") from None


def stream_dataset(tokenizer, cfg: WatchDemoConfig):
    """The stream as GRPOTrainer reads it, in order (no shuffling): one row per prompt, its reward label beside."""
    from datasets import Dataset

    rng = random.Random(cfg.seed)
    rows = [{"prompt": tokenizer.bos_token + r["prompt"], "label": r["label"]}
            for step in range(cfg.steps)
            for r in generator.stream_batch(rng, step, cfg.steps, cfg.prompts_per_step, cfg.max_shift_share)]
    return Dataset.from_list(rows)


def stream_reward(prompts, completions, label, **_) -> list[float]:
    """1 when the completion's answer is the stream's label (its convention shifts: the shortcut pays), else 0."""
    return [float(generator.parse_answer(c) == y) for c, y in zip(completions, label, strict=True)]


def train(world: Path, out: Path, watch_dir: Path, cfg: WatchDemoConfig, callbacks: list | None = None):
    """The GRPO run; returns the trainer (its ``state.log_history``)."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from core.watch.callback import DriftWatchCallback

    torch.set_num_threads(cfg.threads)
    tok = AutoTokenizer.from_pretrained(world / "model")
    args = GRPOConfig(output_dir=str(out), max_steps=cfg.steps, per_device_train_batch_size=cfg.prompts_per_step * cfg.group,
                      num_generations=cfg.group, max_completion_length=cfg.max_completion_length, learning_rate=cfg.lr,
                      beta=0.0, temperature=1.0, shuffle_dataset=False, logging_steps=1, save_steps=cfg.save_steps,
                      save_total_limit=1, save_only_model=True, report_to=[], use_cpu=True, bf16=False, seed=cfg.seed,
                      disable_tqdm=True, gradient_checkpointing=False, lr_scheduler_type="constant")
    model = AutoModelForCausalLM.from_pretrained(world / "model")
    trainer = GRPOTrainer(model=model, reward_funcs=stream_reward, args=args, train_dataset=stream_dataset(tok, cfg),
                          processing_class=tok, callbacks=[DriftWatchCallback(watch_dir), *(callbacks or [])],
                          peft_config=LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    return trainer


def start(ws, world: Path, cfg: WatchDemoConfig | None = None) -> Path:
    """Start the demo's trainer and scorer as background jobs of workspace ``ws``; returns the watch folder."""
    import json

    from core.jobs import supervisor as jobs
    from core.watch import callback, views
    from core.watch.config import WatchConfig
    from workbench import watch_cli

    cfg = cfg or WatchDemoConfig()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    watch_dir = callback.init_watch(ws.root / views.WATCHES / f"demo-{stamp}", keep="adapters", source="callback")
    views.register(ws.root, watch_dir)
    run_dir = ws.runs_dir / "watch-demo" / stamp
    jobs.start(ws.jobs_dir, "watch-train", ["-m", "workbench.demo.watch_demo", "--world", str(world), "--out",
                                            str(run_dir), "--watch", str(watch_dir), "--config", f"{jobs.JOB_DIR}/demo.json"],
               title="GRPO on the shifting stream (demo)", meta={"watch": str(watch_dir)},
               files={"demo.json": json.dumps(asdict(cfg), indent=1)})
    scorer = WatchConfig(run=str(watch_dir), world=str(world), limit=cfg.probe_studies, decode=8, poll=1.0)
    watch_cli.start_job(ws, scorer)  # job kind "watch" of core.jobs.registry
    return watch_dir


def main(argv: list[str] | None = None) -> int:

    # before torch loads: OpenMP threads that spin while they wait starve each other on shared cores (a GRPO step of
    # this tiny model took 25-60 s spinning, 2-3 s passive, at load 9-11 on 2 cores)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    ap = argparse.ArgumentParser(prog="python -m workbench.demo.watch_demo")
    ap.add_argument("--world", type=Path, required=True, help="the text sample world (its model/ is the SFT base)")
    ap.add_argument("--out", type=Path, required=True, help="the trainer's output folder")
    ap.add_argument("--watch", type=Path, required=True, help="the watch folder the callback records into")
    ap.add_argument("--config", type=Path, help="a WatchDemoConfig JSON")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    trainer = train(args.world, args.out, args.watch, cfg)
    print(f"watch demo: {trainer.state.global_step} steps, reward at the end "
          f"{next((h['reward'] for h in reversed(trainer.state.log_history) if 'reward' in h), float('nan')):.2f}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
