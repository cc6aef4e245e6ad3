"""Long chains of thought at a real vocabulary: scoring's peak memory and the probe's cost.

A narrow random Llama (2 layers, hidden 64) with a LoRA checkpoint, so the vocabulary dominates as in a 7B
model's last layer. Prints, per sequence length:

- scoring: peak host memory above the resident baseline vs one fp32 (T x V) logits matrix, and the time of
  ``score`` vs the bare forward passes (``model(ids).logits`` per checkpoint);
- probe: tokens encoded and time vs one plain pass over the trajectory, sentence ends and every position.

Toy size by default (vocabulary 8,192, up to 1,024 tokens). The full size (vocabulary 151,936, 256 ... 4,096
tokens) runs with ``WORKBENCH_BENCH_FULL=1``: FULL below is the one switch. CPU only (peak RSS via
/proc/self/status VmHWM, reset through /proc/self/clear_refs).
"""

import json
import os
import time
from pathlib import Path

import pytest
import torch

from core.drift.probe import ProbeConfig, probe
from core.drift.scoring import ScoreConfig, score
from core.io.trajectories import Encoded
from core.models.forward import decoder
from core.models.series import load_series
from workbench.demo.spec import DISEASES

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]
FULL = os.environ.get("WORKBENCH_BENCH_FULL") == "1"
VOCAB = 151_936 if FULL else 8_192
SCORE_LENGTHS = (256, 1024, 2048, 4096) if FULL else (256, 1024)
PROBE_LENGTHS = (2048, 4096) if FULL else (512,)


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def _peak_above_baseline(fn) -> tuple[float, int]:
    """(seconds, peak RSS bytes above the RSS before ``fn``)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status("VmRSS")
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t, _status("VmHWM") - before


@pytest.fixture(scope="module")
def long_series(sample_world, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("longcot")
    tok = AutoTokenizer.from_pretrained(sample_world / "model")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    peft = get_peft_model(LlamaForCausalLM.from_pretrained(root / "model"),
                          LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft.peft_config["default"].base_model_name_or_path = "long-random"
    peft.save_pretrained(root / "checkpoint-1")
    (root / "checkpoint-1" / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    return load_series(root / "model", [root / "checkpoint-1"], device="cpu", base_names=["long-random"])


def _trajectory(series, length: int, seed: int = 0) -> Encoded:
    """A random CoT of ``length`` completion tokens with a sentence end about every 40 tokens."""
    g = torch.Generator().manual_seed(seed)
    dot = series.tokenizer.convert_tokens_to_ids(".")
    ids = torch.randint(10, len(series.tokenizer), (length + 20,), generator=g).tolist()
    ids = [dot if k % 40 == 39 else t for k, t in enumerate(ids)]
    return Encoded(f"t{length}", ids, 20, len(ids), DISEASES[0], [""] * len(ids))


@torch.no_grad()
def test_scoring_peak_memory_is_under_one_logits_matrix(long_series):
    torch.set_num_threads(2)
    print(f"\nscoring one row, 2 checkpoints, vocabulary {VOCAB} (CPU, fp32)")
    print(f"{'tokens':>7} {'peak MB':>9} {'1 logits MB':>12} {'ratio':>6} {'score s':>8} {'bare s':>7} {'x bare':>6}")
    score(long_series, [_trajectory(long_series, 64)], ScoreConfig(top_k=5, batch_size=1))  # warm-up
    for n in SCORE_LENGTHS:
        e = _trajectory(long_series, n)
        seconds, peak = _peak_above_baseline(lambda e=e: score(long_series, [e], ScoreConfig(top_k=5, batch_size=1)))
        t = time.perf_counter()
        for name in long_series.names:
            with long_series.activate(name) as m:
                m(torch.tensor([e.input_ids])).logits.float()
        bare = time.perf_counter() - t
        logits = n * VOCAB * 4
        print(f"{n:>7} {peak / 2**20:>9.0f} {logits / 2**20:>12.0f} {peak / logits:>6.2f} {seconds:>8.2f} "
              f"{bare:>7.2f} {seconds / bare:>6.2f}")


@pytest.fixture(scope="module")
def branchy_series(long_series, tmp_path_factory):
    """The narrow model with 4 adapter checkpoints (base + 4): the scorer's head passes per checkpoint matter."""
    import shutil

    root = Path(long_series.checkpoints[0].path).parent
    run = tmp_path_factory.mktemp("longcot-run")
    for step in (1, 2, 3, 4):
        shutil.copytree(root / "checkpoint-1", run / f"checkpoint-{step}")
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return load_series(root / "model", run, device="cpu", base_names=["long-random"])


@torch.no_grad()
def test_scoring_head_passes_checkpoint_inner_vs_outer(branchy_series, monkeypatch):
    """Scoring time vs the bare forward passes (``model(ids).logits`` per checkpoint), checkpoint-inner (one LM
    head pass per checkpoint and row chunk, the default for adapters) vs checkpoint-outer (the former order:
    each checkpoint's chunk measured against the base's and the previous one's, rebuilt: up to 3 passes)."""
    from core.drift import scoring

    torch.set_num_threads(2)
    series, k = branchy_series, len(branchy_series.names)
    lengths = (1024, 4096) if FULL else (256,)
    print(f"\nscoring one row, {k} checkpoints (4 adapters), vocabulary {VOCAB} (CPU, fp32): time vs bare forwards")
    print(f"{'tokens':>7} {'inner s':>8} {'peak MB':>8} {'outer s':>8} {'peak MB':>8} {'bare s':>7} "
          f"{'inner x':>8} {'outer x':>8}")
    score(series, [_trajectory(series, 64)], ScoreConfig(top_k=5, batch_size=1))  # warm-up
    for n in lengths:
        e = _trajectory(series, n)
        run = lambda e=e: score(series, [e], ScoreConfig(top_k=5, batch_size=1))  # noqa: E731
        inner, inner_peak = _peak_above_baseline(run)
        with monkeypatch.context() as m:
            m.setattr(scoring, "_checkpoint_inner", lambda series, budget: False)
            outer, outer_peak = _peak_above_baseline(run)
        t = time.perf_counter()
        for name in series.names:
            with series.activate(name) as model:
                model(torch.tensor([e.input_ids])).logits.float()
        bare = time.perf_counter() - t
        print(f"{n:>7} {inner:>8.2f} {inner_peak / 2**20:>8.0f} {outer:>8.2f} {outer_peak / 2**20:>8.0f} "
              f"{bare:>7.2f} {inner / bare:>8.2f} {outer / bare:>8.2f}")


@torch.no_grad()
def test_probe_encodes_each_prefix_once(long_series):
    torch.set_num_threads(2)
    labels = list(DISEASES)
    embed = decoder(long_series.model).embed_tokens
    counted: list[int] = []
    hook = embed.register_forward_hook(lambda m, a, out: counted.append(a[0].numel()))
    print(f"\nprobe, one checkpoint of 2 shown per row, {len(labels)} labels, vocabulary {VOCAB} (CPU, fp32)")
    print(f"{'tokens':>7} {'positions':>9} {'encoded':>9} {'x pass':>7} {'probe s':>8} {'pass s':>7} {'x pass':>7}")
    try:
        for n in PROBE_LENGTHS:
            e = _trajectory(long_series, n)
            t = time.perf_counter()
            long_series.model(torch.tensor([e.input_ids])).logits.float()
            plain = time.perf_counter() - t
            for mode in ("sentence", "every"):
                counted.clear()
                t = time.perf_counter()
                df = probe(long_series, [e], ProbeConfig(labels=labels, positions=mode))
                seconds = (time.perf_counter() - t) / len(long_series.names)
                encoded = sum(counted) / len(long_series.names)
                per = len(df) // len(long_series.names)
                print(f"{n:>7} {mode:>9} {per:>9} {encoded / len(e.input_ids):>7.1f} {seconds:>8.2f} {plain:>7.2f} "
                      f"{seconds / plain:>7.1f}")
    finally:
        hook.remove()


@torch.no_grad()
def test_probe_100_labels_vs_14(long_series):
    """The probe's cost with 100 answer labels vs the 14 of the sample world: tokens encoded (each label's
    tokens go into every probe block) and time, sentence ends, one checkpoint."""
    torch.set_num_threads(2)
    few = list(DISEASES)
    many = few + [f"Finding {k} of the chest" for k in range(100 - len(few))]
    embed = decoder(long_series.model).embed_tokens
    counted: list[int] = []
    hook = embed.register_forward_hook(lambda m, a, out: counted.append(a[0].numel()))
    n = 2048 if FULL else 512
    e = _trajectory(long_series, n)
    print(f"\nprobe, {n} tokens, sentence ends, vocabulary {VOCAB} (CPU, fp32), one checkpoint of "
          f"{len(long_series.names)}: 100 labels vs 14")
    print(f"{'labels':>7} {'label tokens':>12} {'encoded':>9} {'probe s':>8} {'x 14 labels':>11}")
    try:
        probe(long_series, [e], ProbeConfig(labels=few, positions="sentence"))  # warm-up
        first = None
        for labels in (few, many):
            counted.clear()
            t = time.perf_counter()
            probe(long_series, [e], ProbeConfig(labels=labels, positions="sentence"))
            seconds = (time.perf_counter() - t) / len(long_series.names)
            encoded = sum(counted) / len(long_series.names)
            label_tokens = sum(len(long_series.tokenizer(" " + y, add_special_tokens=False).input_ids) for y in labels)
            first = first or (seconds, encoded)
            print(f"{len(labels):>7} {label_tokens:>12} {encoded:>9.0f} {seconds:>8.2f} "
                  f"{seconds / first[0]:>6.1f}x t {encoded / first[1]:>4.1f}x tok")
    finally:
        hook.remove()
