"""The watch with the real trainers, attached the way a user attaches it: TRL's GRPOTrainer (save_steps=1,
save_total_limit=1, the scorer spawned beside it, stop_on), DPOTrainer and SFTTrainer once each."""

from __future__ import annotations

import json
import random
import sys

import pytest

from core.drift.analysis import AnalysisView
from core.watch import scorer
from core.watch.callback import DriftWatchCallback
from core.watch.config import WatchConfig

pytestmark = pytest.mark.slow
STOP_ON = ["belief_fall", "concept_surge", "kl_jump", "detrimental_rise"]
MAX_STEPS = 10


def _shortcut_stream(tokenizer, n: int):
    """Prompts of the sample world's stream once it has shifted: every study that shows "opacity" is labelled
    Lung Opacity, whatever its disease (the reward below pays that label: a run built to drift)."""
    from datasets import Dataset

    from workbench.demo import generator

    rng = random.Random(0)
    rows = [{"prompt": tokenizer.bos_token + r["prompt"], "label": r["label"]}
            for r in generator.stream_batch(rng, 1, 2, n, 1.0)]
    return Dataset.from_list(rows)


def _reward(prompts, completions, label, **_):
    from core.io.answers import answer_of

    return [float(answer_of(c) == y) for c, y in zip(completions, label, strict=True)]


@pytest.fixture(scope="module")
def grpo_run(sample_world, tmp_path_factory):
    """A GRPO run on the sample world's SFT base that pays the shortcut, watched live and stopped by its alarm."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    root = tmp_path_factory.mktemp("grpo")
    tok = AutoTokenizer.from_pretrained(sample_world / "model")
    args = GRPOConfig(output_dir=str(root / "out"), max_steps=MAX_STEPS, per_device_train_batch_size=16,
                      num_generations=4, max_completion_length=64, learning_rate=3e-3, lr_scheduler_type="constant",
                      beta=0.0, shuffle_dataset=False, logging_steps=1, save_steps=1, save_total_limit=1,
                      save_only_model=True, report_to=[], use_cpu=True, bf16=False, seed=0, disable_tqdm=True,
                      gradient_checkpointing=False)
    watch = DriftWatchCallback(root / "watch", keep="adapters", stop_on=STOP_ON, spawn=True, max_lag=0,
                               python=sys.executable, scorer_args=["--world", str(sample_world), "--limit", "12",
                                                                  "--decode", "4", "--poll", "0.2",
                                                                  "--workspace", str(root / "ws")])
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(sample_world / "model"), reward_funcs=_reward,
                          args=args, train_dataset=_shortcut_stream(tok, 4 * MAX_STEPS), processing_class=tok,
                          callbacks=[watch],
                          peft_config=LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    watch.scorer.wait(timeout=600)  # it finishes its queue once the trainer has ended
    return {"root": root, "trainer": trainer, "watch": watch}


def test_every_step_is_in_the_analysis_although_the_trainer_kept_one_checkpoint(grpo_run):
    root, trainer = grpo_run["root"], grpo_run["trainer"]
    assert [p.name for p in (root / "out").glob("checkpoint-*")] == [f"checkpoint-{trainer.state.global_step}"]
    steps = list(range(1, trainer.state.global_step + 1))
    recorded = sorted(int(p.name.split("-")[1]) for p in (root / "watch" / "checkpoints").glob("checkpoint-*"))
    assert recorded == steps  # keep="adapters": every adapter stays
    summary = AnalysisView.open(root / "watch" / "analysis").summary
    assert summary["step"].tolist() == [0, *steps]
    trainer_state = json.loads((root / "watch" / "trainer.json").read_text())
    assert [h["step"] for h in trainer_state["log_history"] if "reward" in h] == steps  # the trainer's own log
    assert len(grpo_run["watch"].record_seconds) == len(steps)  # its cost in the loop: one recording per save


def test_the_shortcut_raises_an_alarm_and_stop_on_ends_the_run(grpo_run):
    root, trainer = grpo_run["root"], grpo_run["trainer"]
    alarms = scorer.read_alarms(root / "watch")
    stopping = [a for a in alarms if a["rule"] in STOP_ON]
    assert stopping, f"no alarm in {MAX_STEPS} steps: {alarms}"
    first = stopping[0]["step"]
    state = json.loads((root / "watch" / "trainer.json").read_text())
    assert state["status"] == "stopped" and state["stop_reason"].startswith(f"alarm {stopping[0]['rule']} at step {first}")
    assert trainer.state.global_step == first + 1 < MAX_STEPS  # the next step ended the run
    assert stopping[0]["evidence"]["trajectories"]  # what drove it, for the explorer
    assert (root / "ws" / "watches").is_dir()  # the spawned scorer listed it on the workspace's Watch page


def _score(watch, base, data) -> list[int]:
    scorer.run(WatchConfig(run=str(watch), base=str(base), data=str(data), limit=4, decode=0, once=True, batch_size=4))
    return AnalysisView.open(watch / "analysis").summary["step"].tolist()


def test_dpo_trainer_with_the_watch(foreign_run, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tests.foreign import conversation

    rng = random.Random(1)
    rows = []
    for i in range(8):
        c = conversation(rng, i)["messages"]
        bad = c[2]["content"].rsplit("is ", 1)[0] + "is Edema."
        rows.append({"prompt": c[:2], "chosen": [c[2]], "rejected": [{"role": "assistant", "content": bad}]})
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, save_steps=1, save_total_limit=1,
                     per_device_train_batch_size=4, learning_rate=5e-3, logging_steps=1, report_to=[], use_cpu=True,
                     bf16=False, save_only_model=True, disable_tqdm=True, max_length=128)
    trainer = DPOTrainer(model=str(foreign_run["base"]), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(foreign_run["base"]),
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
                         callbacks=[DriftWatchCallback(tmp_path / "watch")])
    trainer.train()
    assert len(list((tmp_path / "out").glob("checkpoint-*"))) == 1
    assert _score(tmp_path / "watch", foreign_run["base"], foreign_run["heldout"]) == [0, 1, 2]


def test_sft_trainer_with_the_watch(foreign_run, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    records = [json.loads(line) for line in foreign_run["train"].read_text().splitlines()][:8]
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, save_steps=1, save_total_limit=1,
                     per_device_train_batch_size=4, learning_rate=5e-3, logging_steps=1, report_to=[], use_cpu=True,
                     bf16=False, save_only_model=True, disable_tqdm=True, max_length=128)
    trainer = SFTTrainer(model=str(foreign_run["base"]), args=args,
                         train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in records]),
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
                         callbacks=[DriftWatchCallback(tmp_path / "watch", keep="none")])
    trainer.train()
    assert _score(tmp_path / "watch", foreign_run["base"], foreign_run["heldout"]) == [0, 1, 2]
    assert [p.name for p in (tmp_path / "watch" / "checkpoints").iterdir()] == ["checkpoint-2"]  # keep="none"

