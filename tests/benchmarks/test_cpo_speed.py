"""A CPO step vs a plain TRL DPOTrainer step on the same data and config (target: at most 1.2x).

Both trainers get the same tokenized pairs (the sample world's default preference data), the same
DPOConfig (LoRA r=8 alpha=32 on all linear layers, batch 8, max_length 256) and a random-initialised Llama
of about 25 M parameters on CPU; the plain trainer is TRL's DPOTrainer with only dataset preparation
skipped (the data is already tokenized). Rounds are interleaved (DPO, cpo, cpo++, DPO, ...) and each step
is timed by a callback; the median over the steps after warm-up is compared. On a CUDA GPU a second test
runs bf16 on a random-initialised model of Qwen2.5-0.5B's shapes and records tokens per second and peak
memory. No timing assertion: the figures are printed.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from transformers import TrainerCallback
from trl import DPOTrainer

from core.cpo.config import TrainConfig
from core.cpo.train import (
    build_trainer,
    dpo_args,
    lora_config,
    preflight,
    tokenized_dataset,
)
from core.models.loading import load_tokenizer
from workbench.demo.preferences import build_preferences

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self.tokens, self._t = [], 0, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


class PlainDPO(DPOTrainer):
    """TRL's DPOTrainer, given data that is already tokenized (its step is untouched)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


def _random_model(folder, tok, cuda: bool, **shapes) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(**shapes)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _run(kind: str, cfg: TrainConfig, tok, pre) -> StepTimer:
    timer = StepTimer()
    if kind == "dpo":
        cuda = torch.cuda.is_available()
        from core.cpo.train import load_base

        trainer = PlainDPO(model=load_base(cfg, cuda), args=dpo_args(cfg, cuda), processing_class=tok,
                           train_dataset=tokenized_dataset(cfg, tok, pre), peft_config=lora_config(cfg),
                           callbacks=[timer])
    else:
        cfg = TrainConfig(**{**cfg.__dict__, "objective": kind})
        trainer = build_trainer(cfg, [timer], tokenizer=tok, pre=pre)
    trainer.train()
    return timer


def _compare(tmp_path, sample_world, rounds: int, steps: int, n_pairs: int = 256, **shapes) -> tuple[dict[str, float], float]:
    """Median seconds per step of each trainer, and the mean tokens of one step (batch of 8 pairs)."""
    cuda = torch.cuda.is_available()
    tok = load_tokenizer(sample_world / "model")
    base = _random_model(tmp_path / "base", tok, cuda, **shapes)
    data = build_preferences(sample_world, tmp_path / "pairs.jsonl", n=n_pairs, seed=0)
    cfg = TrainConfig(base_model=base, data=str(data), output_dir=str(tmp_path / "out"), max_steps=steps,
                      save_steps=10**6, logging_steps=10**6, batch_size=8, learning_rate=1e-4)
    pre = preflight(cfg, tok)
    medians: dict[str, list[float]] = {"dpo": [], "cpo": [], "cpo++": []}
    for _ in range(rounds):
        for kind in medians:
            medians[kind].append(statistics.median(_run(kind, cfg, tok, pre).times[2:]))
    rows = tokenized_dataset(cfg, tok, pre)
    per_pair = statistics.mean(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    return {k: statistics.median(v) for k, v in medians.items()}, 8 * per_pair


def test_cpo_step_vs_plain_dpo_step(tmp_path, sample_world, size):
    shapes = size(dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8),
                  dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2))
    m, _ = _compare(tmp_path, sample_world, rounds=size(2, 1), steps=size(8, 3), n_pairs=size(256, 24),
                    model_type="llama", vocab_size=492, num_attention_heads=8, num_key_value_heads=4,
                    max_position_embeddings=512, **shapes)
    print(f"\nmedian step, {'cuda' if torch.cuda.is_available() else 'cpu'}, batch 8 pairs, LoRA r=8 all-linear"
          f"{size.header()}:")
    for kind, s in m.items():
        print(f"  {kind:6s} {1000 * s:8.1f} ms   ratio to plain TRL DPOTrainer: {s / m['dpo']:.2f}x (target <= 1.2x)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_qwen05b_shapes_throughput(tmp_path, sample_world):
    torch.cuda.reset_peak_memory_stats()
    shapes = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                  num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                  tie_word_embeddings=True)
    m, tokens = _compare(tmp_path, sample_world, rounds=1, steps=20, **shapes)
    print("\nQwen2.5-0.5B shapes, bf16: " + ", ".join(f"{k} {1000 * s:.0f} ms/step (~{tokens / s:.0f} tok/s)"
                                                      for k, s in m.items())
          + f"; peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


# ---- vision-language: a CPO step vs a plain TRL DPOTrainer step on a Qwen2.5-VL-architecture model ---------

def _vl_world(tmp_path, hidden: int, layers: int, side: int, n_pairs: int):
    """A random Qwen2.5-VL-architecture base, ``n_pairs`` same-image pairs (TRL's collator gives both sides the
    chosen side's images, so no visual pairs here) on side x side X-ray-like images."""
    import json

    from transformers import Qwen2_5_VLForConditionalGeneration

    from tests.vl_pairs import cot
    from tests.vl_world import LABELS, QUESTION
    from workbench.demo.tinyvl import (
        make_config,
        make_tokenizer,
        synthetic_xray,
        write_tiny_vl,
    )

    tok = make_tokenizer()
    config = make_config(tok, hidden, layers=layers)  # 4 heads; the rotary split follows the head size
    torch.manual_seed(0)
    base = write_tiny_vl(tmp_path / "vl-base", model=Qwen2_5_VLForConditionalGeneration(config), tokenizer=tok)
    lines = []
    for i in range(n_pairs):
        image = tmp_path / "images" / f"{i}.png"
        image.parent.mkdir(exist_ok=True)
        synthetic_xray(side, side, i).save(image)
        label, other = LABELS[i % len(LABELS)], LABELS[(i + 1) % len(LABELS)]
        lines.append(json.dumps({"prompt": QUESTION, "chosen": cot(label), "rejected": cot(other),
                                 "images": [str(image)]}))
    (tmp_path / "vl-pairs.jsonl").write_text("\n".join(lines) + "\n")
    return base, tmp_path / "vl-pairs.jsonl"


def _run_vl(kind: str, cfg: TrainConfig, proc, pre) -> StepTimer:
    from datasets import Dataset

    from core.cpo.train import load_base
    from tests.vl_pairs import image_only_processor, trl_vision_rows

    timer = StepTimer()
    if kind == "dpo":
        cuda = torch.cuda.is_available()
        model = load_base(cfg, cuda)  # through the base's family (Qwen-VL)
        trainer = DPOTrainer(model=model, args=dpo_args(cfg, cuda), processing_class=image_only_processor(proc),
                             train_dataset=Dataset.from_list(trl_vision_rows(proc, pre.records)),
                             peft_config=lora_config(cfg, model), callbacks=[timer])
    else:
        trainer = build_trainer(TrainConfig(**{**cfg.__dict__, "objective": kind}), [timer], tokenizer=proc, pre=pre)
    trainer.train()
    return timer


def test_vl_cpo_step_vs_plain_trl_dpo_step(tmp_path, size):
    """Qwen2.5-VL architecture, random init; batch 4 pairs, one image each, LoRA r=8 on the language model.
    The plain trainer is TRL's DPOTrainer with its own vision collator (processor, pixel_values, mm_token_type_ids)."""
    from core.cpo.train import processing

    side = size(448, 96)
    base, data = _vl_world(tmp_path, hidden=size(384, 64), layers=size(4, 2), side=side, n_pairs=size(32, 12))
    cfg = TrainConfig(base_model=str(base), data=str(data), output_dir=str(tmp_path / "out"), max_steps=size(6, 3),
                      save_steps=10**6, logging_steps=10**6, batch_size=4, learning_rate=1e-4, max_length=1024,
                      max_pixels=side * side)  # the whole image: (side / 28)^2 image tokens
    proc = processing(cfg)  # the family's processor, with the run's pixel limits
    pre = preflight(cfg, proc)
    assert not pre.errors, pre.errors
    times: dict[str, list[float]] = {"dpo": [], "cpo": [], "cpo++": []}
    for _ in range(size(2, 1)):
        for kind in times:
            times[kind].append(statistics.median(_run_vl(kind, cfg, proc, pre).times[1:]))
    m = {k: statistics.median(v) for k, v in times.items()}
    from core.models.families.qwen_vl.inputs import IMAGE_PAD

    pad = proc.token_id(IMAGE_PAD)
    image_tokens = statistics.mean(e["prompt_ids"].count(pad) for e in pre.encoded)
    tokens = statistics.mean(len(e["prompt_ids"]) for e in pre.encoded)
    print(f"\nVL median step, {'cuda' if torch.cuda.is_available() else 'cpu'}, batch 4 pairs, one {side}x{side} "
          f"image each ({image_tokens:.0f} image tokens, {tokens:.0f} prompt tokens), LoRA r=8 on the LM{size.header()}:")
    for kind, s in m.items():
        print(f"  {kind:6s} {1000 * s:8.1f} ms   ratio to plain TRL DPOTrainer (vision collator): {s / m['dpo']:.2f}x")
