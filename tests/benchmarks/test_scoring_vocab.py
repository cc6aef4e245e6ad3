"""Scoring at the vocabulary real models have (151,936 words, Qwen2's): the workbench vs the notebook way
that computes the same statistics, the notebook way with KL to the base only, and the bare batched forwards.

A random Qwen2-shaped model narrow enough that the LM head dominates (hidden 256, 4 layers), base + 4 random
LoRA adapters, trajectories of 64 prompt tokens + L completion tokens, the same completion tokens per run at
every L. Each contender runs in its own process (``python -m tests.benchmarks.test_scoring_vocab``), so its
figures are its own: wall time, user and system CPU time, and peak resident memory (VmHWM) above the
resident memory after the model and adapters were loaded. Contenders and lengths are interleaved over rounds
(the VM's speed drifts between minutes); the ranges over the rounds are printed, with the ratio of CPU
time (user + system) beside the wall-time ratio: on cores shared with other work, wall time measures the
neighbours as much as the contender. Asserts no timing.
Toy size: vocabulary 4,096, hidden 32, one length; full size (``pytest tests/benchmarks -s``): 512 to 4,096
tokens a trajectory, 3 rounds (``WORKBENCH_BENCH_LENGTHS=512,1024``, ``WORKBENCH_BENCH_ROUNDS=1``: fewer;
``WORKBENCH_BENCH_TOKENS=1024``: completion tokens per run, at least the longest length;
``WORKBENCH_BENCH_CONTENDERS=workbench,bare``: some contenders only, the bare forwards always among them;
``WORKBENCH_BENCH_SHAPE=qwen2.5-0.5b``: Qwen2.5-0.5B's own shapes, 24 layers and hidden 896, instead of the narrow model).
The 1-minute load average over each contender's run is printed beside its times.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SHAPE = dict(model_type="qwen2", vocab_size=151_936, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=False)
# Qwen2.5-0.5B's own shapes (24 layers, hidden 896, tied head): the narrowest model people fine-tune, where the
# head is a third of the forward; ``WORKBENCH_BENCH_SHAPE=qwen2.5-0.5b`` scores it instead of the narrow model
REAL = dict(model_type="qwen2", vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=True)
SHAPES = {"narrow": SHAPE, "qwen2.5-0.5b": REAL}
TOY = dict(SHAPE, vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
CONTENDERS = ("workbench", "notebook", "notebook_kl", "bare")
PROMPT = 64


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _trajectories(length: int, tokens: int, vocab: int):
    from tests.benchmarks.test_scoring_speed import random_trajectories

    return random_trajectories(max(1, tokens // length), PROMPT, length, vocab)


@torch.no_grad()
def notebook(series, encoded, kl_only: bool) -> None:
    """A notebook over a loaded series: each trajectory through the whole model (full logits), its
    log-softmax kept per trajectory for the base, the same statistics as the workbench's (``kl_only``:
    KL to the base only, the least a drift notebook computes)."""
    from core.drift.scoring import js, kl, token_stats

    base_lp, prev_lp = {}, {}
    for name in series.names:
        with series.activate(name) as model:
            for e in encoded:
                logits = model(torch.tensor([e.input_ids])).logits[0, e.start - 1: -1]
                lp = torch.log_softmax(logits.float(), -1)
                base = base_lp.setdefault(e.id, lp)
                if kl_only:
                    kl(lp, base)
                    continue
                token_stats(lp, torch.tensor(e.completion_ids), 5)
                prev = prev_lp.get(e.id, lp)
                kl(lp, base), js(lp, base), kl(lp, prev), js(lp, prev)
                prev_lp[e.id] = lp


def run_one(contender: str, folder: Path, length: int, tokens: int) -> dict:
    """One contender in this process: its figures (seconds, CPU seconds, bytes above the loaded series)."""
    from core.drift.scoring import ScoreConfig, score
    from core.models.series import load_series
    from tests.benchmarks.test_scoring_speed import bare_forwards

    torch.set_num_threads(2)
    series = load_series(folder / "model", folder / "rft", device="cpu", dtype="float32")
    encoded = _trajectories(length, tokens, series.model.config.vocab_size)
    batch = max(1, min(8, 4096 // length))
    fns = {"workbench": lambda: score(series, encoded, ScoreConfig(top_k=5, batch_size=batch)),
           "notebook": lambda: notebook(series, encoded, kl_only=False),
           "notebook_kl": lambda: notebook(series, encoded, kl_only=True),
           "bare": lambda: bare_forwards(series, encoded, batch)}
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
    before, r0, t = _status("VmRSS"), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    load = os.getloadavg()[0]
    fns[contender]()
    wall, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": wall, "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
            "peak": _status("VmHWM") - before, "rows": len(series.names) * sum(len(e.completion_ids) for e in encoded),
            "load": (load + os.getloadavg()[0]) / 2}


def _child(contender: str, folder: Path, length: int, tokens: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-m", "tests.benchmarks.test_scoring_vocab", contender, str(folder),
                          str(length), str(tokens)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _range(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{format(lo, fmt)}-{format(hi, fmt)}"


def test_scoring_at_vocabulary_151936(tmp_path, size):
    from core.models.loading import load_tokenizer
    from tests.benchmarks.test_scoring_speed import random_series

    name = os.environ.get("WORKBENCH_BENCH_SHAPE", "narrow")
    if name not in SHAPES:
        raise ValueError(f"WORKBENCH_BENCH_SHAPE: expected one of {', '.join(SHAPES)}, got {name!r}")
    shape = size(SHAPES[name], TOY)
    env = os.environ.get("WORKBENCH_BENCH_LENGTHS")  # e.g. "512,1024": fewer lengths on a busy machine
    lengths = size([int(x) for x in env.split(",")] if env else [512, 1024, 2048, 4096], [64])
    tokens = size(max(max(lengths), int(os.environ.get("WORKBENCH_BENCH_TOKENS", "0"))), 128)  # completion tokens
    rounds = size(int(os.environ.get("WORKBENCH_BENCH_ROUNDS", "3")), 1)  # per run: >= one trajectory at the longest
    picked = os.environ.get("WORKBENCH_BENCH_CONTENDERS", "").split(",")
    contenders = [c for c in CONTENDERS if c in picked or c == "bare" or picked == [""]]
    random_series(tmp_path, load_tokenizer(ROOT / "sample_data" / "model"), shape, torch.float32, adapters=4)
    got: dict[tuple[int, str], list[dict]] = {}
    for _ in range(rounds):  # interleaved: every length and contender once per round
        for length in lengths:
            for contender in contenders:
                got.setdefault((length, contender), []).append(_child(contender, tmp_path, length, tokens))
    print(f"\nscoring base + 4 LoRA adapters x {tokens} completion tokens per run, vocabulary {shape['vocab_size']:,}, "
          f"hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, fp32, CPU (2 threads), ranges over "
          f"{rounds} interleaved rounds, each contender in its own process{size.header()}:")
    for length in lengths:
        bare = got[(length, "bare")]
        print(f"  {length} tokens a trajectory:")
        for contender in contenders:
            runs = got[(length, contender)]
            ratio = [r["wall"] / b["wall"] for r, b in zip(runs, bare, strict=True)]
            cpu = [(r["user"] + r["sys"]) / (b["user"] + b["sys"]) for r, b in zip(runs, bare, strict=True)]
            print(f"    {contender:12s} {_range([r['wall'] for r in runs], '.1f'):>11s} s  "
                  f"(user {_range([r['user'] for r in runs], '.1f')} s, system {_range([r['sys'] for r in runs], '.1f')} s)"
                  f"  peak +{_range([r['peak'] / 2**30 for r in runs], '.2f')} GB  {_range(ratio, '.2f')}x the bare "
                  f"forwards' time, {_range(cpu, '.2f')}x their CPU time (load {_range([r['load'] for r in runs], '.1f')})")
    assert all(r["rows"] == 5 * tokens for runs in got.values() for r in runs)


if __name__ == "__main__":
    print(json.dumps(run_one(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
