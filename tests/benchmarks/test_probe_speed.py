"""The answer probe vs re-encoding every prefix for every label (target: >= 5x faster).

Two baselines: the literal one (one forward per position and label) and a stronger one that batches the
labels of one position into one padded forward. Prints the timings and ratios; asserts no timing.
"""

import time

import pytest
import torch

from core.drift.probe import ProbeConfig, probe, probe_naive, probe_positions, tokens_of
from core.io.trajectories import encode, read_jsonl
from core.models.series import load_series
from workbench.demo.spec import DISEASES

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]
LABELS = list(DISEASES)


@torch.no_grad()
def per_position_batched(model, e, positions, tokenizer, cfg):
    tk = tokens_of(tokenizer, cfg, LABELS)
    for j in positions:
        seqs = [e.input_ids[:j] + tk.template + lab for lab in tk.labels]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)


def test_probe_speed(sample_world, size):
    torch.set_num_threads(2)
    series = load_series(sample_world / "model", [sample_world / "rft" / "checkpoint-160"],
                         base_names=["cxr-demo-tiny-llama"])
    encoded = encode(series.tokenizer, read_jsonl(sample_world / "data" / "test.jsonl", limit=size(6, 1)))
    cfg = ProbeConfig(labels=LABELS)
    tk = tokens_of(series.tokenizer, cfg, LABELS)
    plans = [(e, probe_positions(e, "every", tk.template[0], set())) for e in encoded]
    n_probes = sum(len(p) for _, p in plans)
    probe(series, encoded[:1], cfg)  # warm-up
    t = time.perf_counter()
    probe(series, encoded, cfg)
    ours = (time.perf_counter() - t) / len(series.names)
    with series.activate("checkpoint-160") as m:
        t = time.perf_counter()
        for e, pos in plans:
            probe_naive(m, e, pos, series.tokenizer, cfg, LABELS)
        naive = time.perf_counter() - t
        t = time.perf_counter()
        for e, pos in plans:
            per_position_batched(m, e, pos, series.tokenizer, cfg)
        batched = time.perf_counter() - t
    print(f"\nanswer probe, {len(encoded)} trajectories, {n_probes} positions x {len(LABELS)} labels, one checkpoint{size.header()}:")
    print(f"  re-encode prefix per position and label: {naive:6.2f} s")
    print(f"  re-encode prefix per position (labels batched): {batched:6.2f} s")
    print(f"  workbench probe (prefix encoded once, tree mask): {ours:6.2f} s")
    print(f"  speed-up: {naive / ours:.1f}x vs per label, {batched / ours:.1f}x vs per position (target >= 5x)")
