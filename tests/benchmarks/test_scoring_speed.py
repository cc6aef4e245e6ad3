"""Scoring K checkpoints x N trajectories: the engine vs the notebook way vs the bare batched forwards.

Targets (DESIGN.md): >= 5x faster than the notebook way (from_pretrained per checkpoint, one trajectory
at a time, the same statistics); within 1.5x of the bare batched forward passes the work needs (same
batches, adapters switched, logits only). Prints the three timings and both ratios; asserts no timing.
"""

import time

import pytest
import torch

from core.scoring import ScoreConfig, _batches, _pad, js, kl, score, token_stats
from core.series import BASE, load_series
from core.trajectories import encode, read_jsonl

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]
N = 120


def notebook_way(world, encoded, top_k=5):
    """What a researcher writes first: load each checkpoint from disk, score one trajectory at a time."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    names = [None] + sorted((world / "rft").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    base_lp, prev_lp, n_rows = {}, {}, 0
    for ck in names:
        model = AutoModelForCausalLM.from_pretrained(world / "model")
        if ck is not None:
            model = PeftModel.from_pretrained(model, ck)
        model.eval()
        for e in encoded:
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([e.input_ids])).logits[0, e.start - 1: -1], -1)
            token_stats(lp, torch.tensor(e.completion_ids), top_k)
            base = base_lp.setdefault(e.id, lp)
            kl(lp, base), js(lp, base), kl(lp, prev_lp.get(e.id, lp)), js(lp, prev_lp.get(e.id, lp))
            prev_lp[e.id] = lp
            n_rows += len(e.completion_ids)
    return n_rows


@torch.no_grad()
def bare_forwards(series, encoded, batch_size):
    pad = series.tokenizer.pad_token_id
    for idx in _batches(encoded, batch_size):
        ids, mask = _pad(encoded, idx, pad, series.device)
        for name in series.names:
            with series.activate(name) as m:
                m(input_ids=ids, attention_mask=mask).logits.sum().item()


def test_scoring_speed(sample_world):
    torch.set_num_threads(2)
    load = lambda: load_series(sample_world / "model", sample_world / "rft", base_names=["cxr-demo-tiny-llama"])  # noqa: E731
    series = load()
    encoded = encode(series.tokenizer, read_jsonl(sample_world / "data" / "test.jsonl", limit=N))
    cfg = ScoreConfig(top_k=5, batch_size=32)
    score(series, encoded[:8], cfg), notebook_way(sample_world, encoded[:2])  # warm-up: imports, kernels
    best = {"notebook": float("inf"), "ours": float("inf"), "load": float("inf"), "bare": float("inf")}
    for _ in range(2):  # interleaved rounds: this VM's speed drifts between minutes, not within a round
        for key, fn in (("notebook", lambda: notebook_way(sample_world, encoded)), ("load", load),
                        ("ours", lambda: score(series, encoded, cfg)),
                        ("bare", lambda: bare_forwards(series, encoded, cfg.batch_size))):
            t = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t)
    k, ours = len(series.names), best["ours"] + best["load"]
    print(f"\nscoring {k} checkpoints x {N} trajectories (sample world, CPU, 2 threads), best of 2 interleaved rounds:")
    print(f"  notebook way (from_pretrained per checkpoint, 1 trajectory at a time): {best['notebook']:6.2f} s")
    print(f"  workbench: load_series {best['load']:.2f} s + score() {best['ours']:.2f} s         = {ours:6.2f} s")
    print(f"  bare batched forward passes, adapters switched:                      {best['bare']:6.2f} s")
    print(f"  speed-up vs notebook: {best['notebook'] / ours:.1f}x including the load "
          f"({best['notebook'] / best['ours']:.1f}x scoring alone); target >= 5x")
    print(f"  overhead vs bare forwards: {best['ours'] / best['bare']:.2f}x (target <= 1.5x)")
    assert series.names[0] == BASE
