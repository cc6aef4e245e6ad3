"""The drift step part by part (``analysis.assemble_parts``, ``drift.DriftParts``, ``cache.SortedByTrajectory``)
writes the same analysis folder as the whole-table reference (``tests.drift_reference.assemble`` +
``Analysis.save``)."""

import json
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from core.drift import analysis as an
from core.io.cache import SortedByTrajectory
from core.io.outputs import MANIFEST
from core.io.trajectories import Encoded
from tests import drift_reference as reference

WORDS = [" lung", " opacity", " airspace", " consol", "idation", " effusion", " and", " no", ".", " opac", "ity",
         " suggests", " Pneumonia", " normal"]
LABELS = ["Pneumonia", "Effusion", "Normal"]
CHECKPOINTS = [("base", 0), ("checkpoint-5", 5), ("checkpoint-10", 10), ("cpo-run", 10)]


def assert_same_folders(a: Path, b: Path) -> None:
    """Every file of analysis folder ``a`` in ``b`` with the same rows (floats to rounding: sums added in
    another order); the per-trajectory tables in the same row groups."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name == MANIFEST:  # sizes and times of writing are each folder's own; the files it lists must agree
            assert json.loads((a / name).read_text()).keys() == json.loads((b / name).read_text()).keys()
            continue
        if not name.endswith(".parquet"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
            continue
        want, got = pd.read_parquet(a / name), pd.read_parquet(b / name)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6, atol=1e-6, obj=name)  # float32 means
        assert _row_groups(a / name) == _row_groups(b / name), name


def _row_groups(path: Path) -> list[int]:
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def _world(rng, n: int, every: int):
    g = nx.DiGraph()
    g.add_node("opacity", kind="finding", label="opacity", synonyms=["lung opacity"])
    g.add_node("consolidation", kind="finding", label="consolidation", synonyms=["airspace opacity"])
    g.add_node("effusion", kind="finding", label="effusion", synonyms=[])
    ids = [f"t{k:03d}" for k in rng.permutation(n)]  # record order is not trajectory order
    encoded, records = [], []
    for k, tid in enumerate(ids):
        toks = ["<s>", " report", " findings"] + list(rng.choice(WORDS, size=int(rng.integers(6, 70))))
        gold = LABELS[k % 3] if k % 7 else None  # some records without a label
        encoded.append(Encoded(tid, list(range(len(toks))), 3, len(toks) - (k % 2) * 2, gold, toks))
        records.append({"id": tid, "prompt": "p", "completion": "".join(toks[3:]), "label": gold})
    return g, encoded, records


def _token_rows(encs: list[Encoded], rng) -> pd.DataFrame:
    """A scoring part: its trajectories under every checkpoint, checkpoint-major (as ``score_batches`` writes)."""
    frames = []
    for name, step in CHECKPOINTS:
        for e in encs:
            n = len(e.completion_ids)
            frames.append(pd.DataFrame({
                "traj_id": e.id, "checkpoint": name, "step": step, "position": np.arange(n),
                "token_id": np.asarray(e.completion_ids), "token": np.array(e.completion_tokens, dtype=object),
                "in_think": np.arange(e.start, e.start + n) < e.think_end,
                **{c: rng.random(n).astype(np.float32) for c in ("logprob", "entropy", "kl_base", "js_base",
                                                                   "kl_prev", "js_prev")},
                "rank": rng.integers(1, 9, n)}))
    df = pd.concat(frames, ignore_index=True)
    df["logprob"] = -df["logprob"] * 3
    df["prob"] = np.exp(df["logprob"])
    words = np.array(WORDS[:6], dtype=object)  # few alternatives: many ties for the most common new top-1
    df["top_tokens"] = [words[rng.integers(0, 6, 3)] for _ in range(len(df))]
    df["top_probs"] = [np.sort(rng.random(3))[::-1].round(5) for _ in range(len(df))]
    return df


def _belief_rows(encs: list[Encoded], rng, every: int) -> pd.DataFrame:
    rows = []
    for name, step in CHECKPOINTS:
        for e in encs:
            n = len(e.completion_ids)
            for p in sorted({*range(-2, n, every), n}):
                z = rng.dirichlet(np.ones(3))
                gold_prob = z[LABELS.index(e.label)] if e.label else np.nan
                rows.append({"traj_id": e.id, "checkpoint": name, "step": step, "position": p, "label_mass": 0.9,
                             **{f"p:{y}": z[i] for i, y in enumerate(LABELS)}, "answer": LABELS[int(z.argmax())],
                             "gold": e.label, "gold_prob": gold_prob})
    return pd.DataFrame(rows)


def _parts(frames: list[pd.DataFrame], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, f in enumerate(frames):
        f.to_parquet(folder / f"part-{k}.parquet", index=False)
        paths.append(folder / f"part-{k}.parquet")
    return paths


def _whole(paths: list[Path]) -> pd.DataFrame:
    return an._checkpoint_major(pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True))


def _both(cfg, records, encoded, graph, token_paths, belief_paths, starts, tmp_path: Path):
    whole = reference.assemble(cfg, records, encoded, graph, _whole(token_paths),
                        _whole(belief_paths) if belief_paths else an.empty_beliefs(), starts)
    a = whole.save(tmp_path / "whole")
    staged = an.assemble_parts(cfg, records, encoded, graph, token_paths, belief_paths, starts, tmp_path / "staging")
    b = staged.save(tmp_path / "parts")
    return whole, staged, a, b


def test_random_tables_in_several_parts_give_the_whole_tables(tmp_path, monkeypatch):
    monkeypatch.setattr(an, "ROW_GROUP", 1000)  # several row groups, their bounds across sort buckets
    rng = np.random.default_rng(3)
    graph, encoded, records = _world(rng, 45, every=1)
    by_length = sorted(encoded, key=lambda e: len(e.input_ids))  # scoring parts: batches sorted by length
    token_paths = _parts([_token_rows(by_length[a: a + 4], rng) for a in range(0, 45, 4)], tmp_path / "tok")
    belief_paths = _parts([_belief_rows(encoded[a: a + 16], rng, every=1) for a in range(0, 45, 16)],
                          tmp_path / "bel")
    cfg = an.AnalysisConfig(base="model", data="d.jsonl", tau=0.1)
    whole, staged, a, b = _both(cfg, records, encoded, graph, token_paths, belief_paths, {"cpo-run": "checkpoint-5"},
                                tmp_path)
    assert_same_folders(a, b)
    for name in ("by_token", "by_concept", "by_context", "changes"):  # nothing trivially empty
        assert len(getattr(whole, name)) > 0, name
    assert whole.by_context["new_top1"].notna().sum() > 10
    assert len(_row_groups(b / "tokens.parquet")) > 3
    pd.testing.assert_frame_equal(staged.tokens, pd.read_parquet(a / "tokens.parquet"))


def test_sentence_reads_and_no_probe_give_the_whole_tables(tmp_path):
    rng = np.random.default_rng(4)
    graph, encoded, records = _world(rng, 20, every=5)
    token_paths = _parts([_token_rows(encoded[a: a + 8], rng) for a in range(0, 20, 8)], tmp_path / "tok")
    belief_paths = _parts([_belief_rows(encoded[a: a + 16], rng, every=5) for a in range(0, 20, 16)],
                          tmp_path / "bel")
    cfg = an.AnalysisConfig(base="model", data="d.jsonl")
    assert_same_folders(*_both(cfg, records, encoded, graph, token_paths, belief_paths, None, tmp_path / "s")[2:])
    assert_same_folders(*_both(cfg, records, encoded, None, token_paths, [], None, tmp_path / "n")[2:])


def test_sorted_writer_is_a_stable_sort_in_exact_row_groups(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"x{k}" for k in rng.permutation(30)]
    parts = [pd.DataFrame({"traj_id": np.repeat(ids[a: a + 7], 5), "seq": np.arange(35 if a < 28 else 10),
                           "gold": None if a == 0 else "g"}) for a in range(0, 30, 7)]
    w = SortedByTrajectory(tmp_path / "t.parquet", ids, tmp_path / "scratch", per_bucket=4, row_group=8)
    for p in parts:
        w.add(p)
    w.finish(empty=parts[0].head(0))
    got = pd.read_parquet(tmp_path / "t.parquet")
    want = pd.concat(parts, ignore_index=True).sort_values("traj_id", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want.astype({"gold": got["gold"].dtype}))
    meta = pq.ParquetFile(tmp_path / "t.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [8] * 18 + [6]
    assert not list((tmp_path / "scratch").iterdir())  # the buckets are removed as they are written
