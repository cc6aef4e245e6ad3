"""A training run with the drift watch vs without (target: within 5 % with the scorer on another device).

TRL's GRPOTrainer on the text sample world's SFT base (LoRA r=8 on all linear layers, 8 prompts x 4 completions a
step, ``save_steps=1, save_total_limit=1``: every step saves, so every step pays the watch's recording), on CPU.
Three arms, interleaved over rounds, the same seed and data:

- ``plain``: the trainer alone;
- ``watch``: with ``DriftWatchCallback`` (each saved adapter copied into the watch folder, a stop-file check per
  step): the training process's whole cost when the scorer runs on another device or machine;
- ``watch + scorer``: the same with the scorer spawned beside it on the same CPU cores (a shared device).

Wall time of ``trainer.train()`` and the training process's CPU time (``time.process_time``: all its threads, not
other processes') per arm, median over rounds, and their ratios to ``plain`` are printed; no assertion. On cores
shared with other work, wall time moves by more than the watch costs; the CPU time is the steadier figure for the
scorer-elsewhere case, the wall time the only one for the shared-device case.
"""

from __future__ import annotations

import statistics
import sys
import time

import pytest

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]


def _train(sample_world, root, steps: int, arm: str, probe: int) -> tuple[float, float, list[float]]:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from core.watch.callback import DriftWatchCallback
    from workbench.demo import watch_demo

    tok = AutoTokenizer.from_pretrained(sample_world / "model")
    cfg = watch_demo.WatchDemoConfig(steps=steps)
    args = GRPOConfig(output_dir=str(root / "out"), max_steps=steps, per_device_train_batch_size=32, num_generations=4,
                      max_completion_length=64, learning_rate=2e-3, lr_scheduler_type="constant", beta=0.0,
                      shuffle_dataset=False, logging_steps=1, save_steps=1, save_total_limit=1, save_only_model=True,
                      report_to=[], use_cpu=True, bf16=False, seed=0, disable_tqdm=True, gradient_checkpointing=False)
    callbacks = []
    if arm != "plain":
        callbacks.append(DriftWatchCallback(root / "watch", spawn=arm == "watch + scorer", python=sys.executable,
                                            scorer_args=["--world", str(sample_world), "--limit", str(probe), "--decode", "0",
                                                         "--poll", "0.2", "--workspace", str(root / "ws")]))
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(sample_world / "model"),
                          reward_funcs=watch_demo.stream_reward, args=args,
                          train_dataset=watch_demo.stream_dataset(tok, cfg), processing_class=tok, callbacks=callbacks,
                          peft_config=LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    started, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if callbacks and callbacks[0].scorer is not None:  # its work after the run is not the run's cost: stopped
        callbacks[0].scorer.terminate()
        callbacks[0].scorer.wait(timeout=120)
    return seconds, cpu, callbacks[0].record_seconds if callbacks else []


def test_training_with_the_watch_vs_without(tmp_path, sample_world, size):
    steps, rounds, probe = size(16, 2), size(3, 1), size(16, 4)
    arms = ("plain", "watch", "watch + scorer")
    times: dict[str, list[float]] = {a: [] for a in arms}
    cpus: dict[str, list[float]] = {a: [] for a in arms}
    records: list[float] = []
    if size.full:  # warm-up (imports, first generation): not timed
        _train(sample_world, tmp_path / "warm-up", 2, "plain", probe)
    for r in range(rounds):
        for arm in arms:
            seconds, cpu, rec = _train(sample_world, tmp_path / f"{r}-{arm.replace(' ', '')}", steps, arm, probe)
            times[arm].append(seconds)
            cpus[arm].append(cpu)
            records += rec
    plain, plain_cpu = statistics.median(times["plain"]), statistics.median(cpus["plain"])
    print(f"\nGRPO, {steps} steps, save_steps=1, CPU, scorer probe set {probe} studies{size.header()}:")
    for arm in arms:
        m, c = statistics.median(times[arm]), statistics.median(cpus[arm])
        print(f"  {arm:15s} wall {m:7.1f} s ({m / plain:.3f}x plain)   the trainer process's CPU time {c:7.1f} s "
              f"({c / plain_cpu:.3f}x plain)")
    print(f"  recording one checkpoint (the callback's cost per save): median {1000 * statistics.median(records):.1f} ms")
