"""Scoring K checkpoints x N trajectories: the engine vs the notebook way vs the bare batched forwards.

Targets (DESIGN.md): >= 5x faster than the notebook way (from_pretrained per checkpoint, one trajectory
at a time, the same statistics); within 1.5x of the bare batched forward passes the work needs (same
batches, adapters switched, logits only). Prints the three timings and both ratios; asserts no timing.

On a CUDA GPU a second test runs the same comparison in bf16 on a random-initialised model of
Qwen2.5-0.5B's shapes with six random LoRA checkpoints and realistic lengths, and reports tokens per
second; a small CPU run of that harness keeps it working where no GPU is lent.
"""

import time
from pathlib import Path

import pytest
import torch

from core.drift.scoring import ScoreConfig, js, kl, length_batches, score, token_stats
from core.models.families.text import pad_right
from core.io.trajectories import Encoded, encode, read_jsonl
from core.models.loading import load_tokenizer
from core.models.series import BASE, load_series

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]
N = 120


def notebook_way(world, encoded, top_k=5, device="cpu", dtype=torch.float32):
    """What a researcher writes first: load each checkpoint from disk, score one trajectory at a time."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    names = [None] + sorted((world / "rft").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    base_lp, prev_lp, n_rows = {}, {}, 0
    for ck in names:
        model = AutoModelForCausalLM.from_pretrained(world / "model", dtype=dtype).to(device)
        if ck is not None:
            model = PeftModel.from_pretrained(model, ck)
        model.eval()
        for e in encoded:
            with torch.no_grad():
                logits = model(torch.tensor([e.input_ids], device=device)).logits[0, e.start - 1: -1]
                lp = torch.log_softmax(logits.float(), -1)
            token_stats(lp, torch.tensor(e.completion_ids, device=device), top_k)
            base = base_lp.setdefault(e.id, lp)
            kl(lp, base), js(lp, base), kl(lp, prev_lp.get(e.id, lp)), js(lp, prev_lp.get(e.id, lp))
            prev_lp[e.id] = lp
            n_rows += len(e.completion_ids)
        del model
    if device == "cuda":
        torch.cuda.synchronize()
    return n_rows


@torch.no_grad()
def bare_forwards(series, encoded, batch_size):
    pad = series.tokenizer.pad_token_id
    for idx in length_batches(encoded, batch_size):
        ids, mask = pad_right([encoded[i] for i in idx], pad, series.device)
        for name in series.names:
            with series.activate(name) as m:
                m(input_ids=ids, attention_mask=mask).logits.sum().item()


def test_scoring_speed(sample_world, size):
    torch.set_num_threads(2)
    load = lambda: load_series(sample_world / "model", sample_world / "rft", base_names=["cxr-demo-tiny-llama"])  # noqa: E731
    series = load()
    encoded = encode(series.tokenizer, read_jsonl(sample_world / "data" / "test.jsonl", limit=size(N, 8)))
    cfg = ScoreConfig(top_k=5, batch_size=32)
    score(series, encoded[:8], cfg), notebook_way(sample_world, encoded[:2])  # warm-up: imports, kernels
    best = {"notebook": float("inf"), "ours": float("inf"), "load": float("inf"), "bare": float("inf")}
    for _ in range(size(3, 1)):  # interleaved rounds: this VM's speed drifts between minutes, not within a round
        for key, fn in (("notebook", lambda: notebook_way(sample_world, encoded)), ("load", load),
                        ("ours", lambda: score(series, encoded, cfg)),
                        ("bare", lambda: bare_forwards(series, encoded, cfg.batch_size))):
            t = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t)
    k, ours = len(series.names), best["ours"] + best["load"]
    print(f"\nscoring {k} checkpoints x {len(encoded)} trajectories (sample world, CPU, 2 threads), best of "
          f"{size(3, 1)} interleaved rounds{size.header()}:")
    print(f"  notebook way (from_pretrained per checkpoint, 1 trajectory at a time): {best['notebook']:6.2f} s")
    print(f"  workbench: load_series {best['load']:.2f} s + score() {best['ours']:.2f} s         = {ours:6.2f} s")
    print(f"  bare batched forward passes, adapters switched:                      {best['bare']:6.2f} s")
    print(f"  speed-up vs notebook: {best['notebook'] / ours:.1f}x including the load "
          f"({best['notebook'] / best['ours']:.1f}x scoring alone); target >= 5x")
    print(f"  overhead vs bare forwards: {best['ours'] / best['bare']:.2f}x (target <= 1.5x)")
    assert series.names[0] == BASE


def test_shared_system_prompt_is_encoded_once(sample_world, size):
    """The sample world's trajectories behind a shared 60-token instruction, as real CoT data has: score()
    with the common prefix encoded once per batch vs encoded in every row."""
    torch.set_num_threads(2)
    series = load_series(sample_world / "model", sample_world / "rft", base_names=["cxr-demo-tiny-llama"])
    instruction = "Question: what is the disease of this patient? " * 6
    recs = [{**r, "prompt": instruction + r["prompt"]} for r in read_jsonl(sample_world / "data" / "test.jsonl", limit=size(N, 8))]
    encoded = encode(series.tokenizer, recs)
    shared, unshared = ScoreConfig(top_k=5, batch_size=32), ScoreConfig(top_k=5, batch_size=32, share_prefix=False)
    score(series, encoded[:8], shared)
    best = {"shared": float("inf"), "unshared": float("inf")}
    for _ in range(size(3, 1)):
        for key, cfg in (("shared", shared), ("unshared", unshared)):
            t = time.perf_counter()
            score(series, encoded, cfg)
            best[key] = min(best[key], time.perf_counter() - t)
    mean_len = sum(len(e.input_ids) for e in encoded) / len(encoded)
    print(f"\nscoring 7 checkpoints x {len(encoded)} trajectories behind a shared instruction ({encoded[0].start} of "
          f"{mean_len:.0f} tokens are prompt), CPU: {best['shared']:.2f} s with the shared prefix encoded once, "
          f"{best['unshared']:.2f} s without: {best['unshared'] / best['shared']:.2f}x{size.header()}")


QWEN05B = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
               num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)


def random_series(folder, tokenizer, shapes: dict, dtype, adapters: int = 6):
    """A random-initialised base of ``shapes`` and ``adapters`` random LoRA checkpoints (r=8, all linear
    layers, B non-zero so that every checkpoint differs), laid out like a trainer's output folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**shapes), dtype=dtype)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    for k in range(1, adapters + 1):
        base = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=dtype)
        peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
        peft.save_pretrained(folder / "rft" / f"checkpoint-{40 * k}")
    return folder


def random_trajectories(n: int, prompt_len: int, completion_len: int, vocab: int, system: int = 0) -> list[Encoded]:
    """Random token trajectories whose prompts start with the same ``system`` tokens (a shared system prompt)."""
    g = torch.Generator().manual_seed(1)
    head = [1] + torch.randint(3, vocab, (system,), generator=g).tolist()
    out = []
    for i in range(n):
        ids = head + torch.randint(3, vocab, (prompt_len + completion_len - len(head),), generator=g).tolist()
        out.append(Encoded(f"r{i}", ids, prompt_len, len(ids), None, [f"t{t}" for t in ids]))
    return out


def scaled_comparison(folder, shapes: dict, device: str, dtype, n: int, prompt_len: int, completion_len: int,
                      batch_size: int, system: int = 0) -> dict[str, float]:
    """Seconds of the notebook way, load_series, score() (with and without encoding the shared system
    prompt once) and the bare forwards on a random series."""
    tok = load_tokenizer(Path(__file__).parents[2] / "sample_data" / "model")  # any local tokenizer
    random_series(folder, tok, shapes, dtype)
    encoded = random_trajectories(n, prompt_len, completion_len, len(tok), system)
    dname = str(dtype).removeprefix("torch.")
    load = lambda: load_series(folder / "model", folder / "rft", device=device, dtype=dname)  # noqa: E731
    series = load()
    cfg = ScoreConfig(top_k=5, batch_size=batch_size, share_prefix=True)
    score(series, encoded[:batch_size], cfg)  # warm-up: kernels, allocator
    notebook_way(folder, encoded[:1], device=device, dtype=dtype)
    times = {}
    for key, fn in (("notebook", lambda: notebook_way(folder, encoded, device=device, dtype=dtype)), ("load", load),
                    ("ours", lambda: score(series, encoded, cfg)),
                    ("unshared", lambda: score(series, encoded, ScoreConfig(top_k=5, batch_size=batch_size,
                                                                            share_prefix=False))),
                    ("bare", lambda: bare_forwards(series, encoded, batch_size))):
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times[key] = time.perf_counter() - t
    return times


def _report(title: str, t: dict[str, float], tokens: int) -> None:
    ours = t["ours"] + t["load"]
    print(f"\n{title}:")
    print(f"  notebook way: {t['notebook']:7.2f} s  ({tokens / t['notebook']:9.0f} tokens/s)")
    print(f"  workbench:    {ours:7.2f} s  ({tokens / t['ours']:9.0f} tokens/s scoring; load_series {t['load']:.2f} s)")
    print(f"  bare forward: {t['bare']:7.2f} s  ({tokens / t['bare']:9.0f} tokens/s)")
    print(f"  workbench without encoding the shared system prompt once: {t['unshared']:.2f} s "
          f"({t['unshared'] / t['ours']:.2f}x the time with it)")
    print(f"  speed-up vs notebook: {t['notebook'] / ours:.1f}x including the load ({t['notebook'] / t['ours']:.1f}x "
          f"scoring alone); target >= 5x; overhead vs bare forwards: {t['ours'] / t['bare']:.2f}x (target <= 1.5x)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_scoring_speed_bf16_qwen05b_shapes_cuda(tmp_path):
    n, prompt_len, completion_len, system = 32, 128, 256, 64
    t = scaled_comparison(tmp_path, QWEN05B, "cuda", torch.bfloat16, n, prompt_len, completion_len, batch_size=8,
                          system=system)
    _report(f"scoring 7 checkpoints x {n} trajectories of {prompt_len} (of which a shared {system}-token system "
            f"prompt) + {completion_len} tokens, random model with Qwen2.5-0.5B's shapes, bf16, "
            f"{torch.cuda.get_device_name()}", t, 7 * n * completion_len)
    print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def test_scoring_harness_on_cpu(tmp_path):
    """The CUDA test's harness at toy size on CPU, so that it still runs when a GPU is lent."""
    shapes = dict(QWEN05B, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
    t = scaled_comparison(tmp_path, shapes, "cpu", torch.float32, n=4, prompt_len=48, completion_len=24, batch_size=2,
                          system=40)
    _report("harness check (toy Qwen2 shapes, CPU)", t, 7 * 4 * 24)
    assert set(t) == {"notebook", "load", "ours", "unshared", "bare"}
