"""Host memory of the drift step (scores and beliefs -> the analysis folder) vs the number of trajectories.

Before: the whole token and belief tables assembled from their cached parts, the drift tables computed from
them (``tests.drift_reference.assemble``: the whole-table reference the engine is tested against) and saved
(``Analysis.save``). After: the same folder written part by part
(``analysis.assemble_parts``: ``drift.DriftParts`` + ``cache.SortedByTrajectory``), as ``run_analysis`` does.

Random tables of the real shape, no model: trajectories x 300 tokens, 3 checkpoints, a probe at every token
(14 labels), top-5 lists, scoring parts of 8 trajectories and probe parts of 16, tokens drawn Zipf-like from
2,000 words (contexts repeat as in text). Each contender runs in its own process; the figure is its peak
resident memory (VmHWM) above the resident memory after the inputs (records, encodings) were read.
Toy: 100 vs 400 trajectories; full (``pytest tests/benchmarks -s``): 200 vs 2,000.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
LABELS = [f"label {k}" for k in range(14)]
CHECKPOINTS = [("base", 0), ("checkpoint-80", 80), ("checkpoint-160", 160)]
WORDS = np.array([f" w{i}" for i in range(2000)] + [" opacity", " consolidation", " effusion"], dtype=object)


def _probabilities() -> np.ndarray:
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    return p / p.sum()


def write_inputs(folder: Path, n: int, length: int, seed: int = 0) -> None:
    """The scoring and probe parts of ``n`` random trajectories, the records and their encodings."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"t{k:05d}" for k in rng.permutation(n)]
    words = rng.choice(len(WORDS), size=(n, length), p=_probabilities())
    gold = rng.integers(0, len(LABELS), n)
    with open(folder / "encoded.jsonl", "w") as f:
        for k, tid in enumerate(ids):
            toks = ["<s>", " report"] + WORDS[words[k]].tolist()
            f.write(json.dumps({"id": tid, "start": 2, "think_end": len(toks), "label": LABELS[gold[k]],
                                "tokens": toks}) + "\n")
    by_length = list(range(n))  # equal lengths: the scoring batches are in record order
    for a in range(0, n, 8):
        pq.write_table(_token_part(rng, [ids[i] for i in by_length[a: a + 8]], words[a: a + 8]),
                       folder / f"tokens-{a // 8:05d}.parquet")
    for a in range(0, n, 16):
        pq.write_table(_belief_part(rng, ids[a: a + 16], gold[a: a + 16], length),
                       folder / f"beliefs-{a // 16:05d}.parquet")


def _token_part(rng, ids: list[str], words: np.ndarray) -> pa.Table:
    k, (b, length) = len(CHECKPOINTS), words.shape
    rows = k * b * length
    top = rng.choice(len(WORDS), size=rows * 5, p=_probabilities())
    stats = {c: rng.random(rows).astype(np.float32) for c in ("logprob", "entropy", "kl_base", "js_base",
                                                               "kl_prev", "js_prev")}
    return pa.table({
        "traj_id": np.tile(np.repeat(np.array(ids, dtype=object), length), k),
        "checkpoint": np.repeat(np.array([c for c, _ in CHECKPOINTS], dtype=object), b * length),
        "step": np.repeat(np.array([s for _, s in CHECKPOINTS]), b * length),
        "position": np.tile(np.arange(length), k * b), "token_id": np.tile(words.ravel(), k),
        "token": np.tile(WORDS[words.ravel()], k), "in_think": np.ones(rows, dtype=bool), **stats,
        "rank": rng.integers(1, 50, rows), "prob": np.exp(-stats["logprob"]),
        "top_tokens": pa.ListArray.from_arrays(np.arange(0, rows * 5 + 1, 5, dtype=np.int32), WORDS[top]),
        "top_probs": pa.ListArray.from_arrays(np.arange(0, rows * 5 + 1, 5, dtype=np.int32),
                                              rng.random(rows * 5).round(5)),
    })


def _belief_part(rng, ids: list[str], gold: np.ndarray, length: int) -> pa.Table:
    k, b = len(CHECKPOINTS), len(ids)
    per = length + 1  # every position, and after the last token
    rows = k * b * per
    z = rng.dirichlet(np.ones(len(LABELS)), rows)
    g = np.tile(np.repeat(gold, per), k)
    return pa.table({
        "traj_id": np.tile(np.repeat(np.array(ids, dtype=object), per), k),
        "checkpoint": np.repeat(np.array([c for c, _ in CHECKPOINTS], dtype=object), b * per),
        "step": np.repeat(np.array([s for _, s in CHECKPOINTS]), b * per),
        "position": np.tile(np.arange(per), k * b), "label_mass": np.full(rows, 0.9),
        **{f"p:{y}": z[:, i] for i, y in enumerate(LABELS)},
        "answer": np.array(LABELS, dtype=object)[z.argmax(1)], "gold": np.array(LABELS, dtype=object)[g],
        "gold_prob": z[np.arange(rows), g],
    })


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def measure(folder: Path, mode: str) -> dict:
    """In this process: read the inputs, then run the drift step ``mode`` (whole | parts) into folder/out-MODE."""
    import networkx as nx
    import pandas as pd

    from core.drift import analysis as an
    from core.io.trajectories import Encoded
    from tests.drift_reference import assemble

    records, encoded = [], []
    with open(folder / "encoded.jsonl") as f:
        for line in f:
            r = json.loads(line)
            encoded.append(Encoded(r["id"], list(range(len(r["tokens"]))), r["start"], r["think_end"], r["label"],
                                   r["tokens"]))
            records.append({"id": r["id"], "prompt": "p", "completion": "".join(r["tokens"][2:]), "label": r["label"]})
    graph = nx.DiGraph()
    for c in ("opacity", "consolidation", "effusion"):
        graph.add_node(c, kind="finding", label=c, synonyms=[])
    cfg = an.AnalysisConfig(base="model", data="d.jsonl")
    tokens, beliefs = sorted(folder.glob("tokens-*.parquet")), sorted(folder.glob("beliefs-*.parquet"))
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status("VmRSS")
    t = time.perf_counter()
    if mode == "whole":
        whole = [an._checkpoint_major(pd.concat([pd.read_parquet(p) for p in ps], ignore_index=True))
                 for ps in (tokens, beliefs)]
        assemble(cfg, records, encoded, graph, *whole, {}).save(folder / f"out-{mode}")
    else:
        an.assemble_parts(cfg, records, encoded, graph, tokens, beliefs, {}, folder / "staging").save(
            folder / f"out-{mode}")
    return {"seconds": time.perf_counter() - t, "peak": _status("VmHWM") - before}


def _run(folder: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, str(folder), mode], cwd=ROOT, capture_output=True, text=True,
                         check=False, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_drift_step_memory_does_not_grow_with_trajectories(tmp_path, size):
    small, large = size((200, 2000), (20, 80))
    length = 300
    print(f"\ndrift step, trajectories x {length} tokens, {len(CHECKPOINTS)} checkpoints, probe at every token, "
          f"{len(LABELS)} labels{size.header()}")
    print(f"{'trajectories':>12} {'whole MB':>9} {'s':>6} {'parts MB':>9} {'s':>6} {'whole/parts':>11}")
    figures = {}
    for n in (small, large):
        folder = tmp_path / f"n{n}"
        write_inputs(folder, n, length)
        whole, parts = _run(folder, "whole"), _run(folder, "parts")
        figures[n] = (whole, parts)
        print(f"{n:>12} {whole['peak'] / 2**20:>9.0f} {whole['seconds']:>6.1f} {parts['peak'] / 2**20:>9.0f} "
              f"{parts['seconds']:>6.1f} {whole['peak'] / max(parts['peak'], 1):>11.1f}")
    grow_whole = figures[large][0]["peak"] / max(figures[small][0]["peak"], 1)
    grow_parts = figures[large][1]["peak"] / max(figures[small][1]["peak"], 1)
    print(f"peak growth {small} -> {large} trajectories: whole tables {grow_whole:.1f}x, part by part {grow_parts:.1f}x")
    import pandas as pd

    for name in ("summary", "by_token", "by_context", "changes"):  # the same tables either way
        a, b = (pd.read_parquet(tmp_path / f"n{small}" / f"out-{m}" / f"{name}.parquet") for m in ("whole", "parts"))
        keys = [c for c in ("checkpoint", "to_checkpoint", "token", "region", "context") if c in a]
        a, b = (x.sort_values(keys, kind="stable").reset_index(drop=True) for x in (a, b))  # near-ties in value
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-6)  # may sort either way


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]), sys.argv[2])))
