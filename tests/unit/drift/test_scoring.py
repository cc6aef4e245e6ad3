"""Scoring: the statistics against direct computation, batching against single sequences."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from core.drift.scoring import (
    Cancelled,
    ScoreConfig,
    js,
    kl,
    largest,
    length_batches,
    score,
    token_stats,
)
from core.io.trajectories import encode, read_jsonl
from core.models.families.text import MIN_SHARED, pad_right, shared_prefix


def test_token_stats_match_direct_computation():
    torch.manual_seed(0)
    logp = torch.log_softmax(torch.randn(6, 11), -1)
    targets = torch.tensor([0, 3, 10, 5, 5, 1])
    st = token_stats(logp, targets, top_k=3)
    p = logp.exp().numpy()
    for i, t in enumerate(targets.tolist()):
        assert st["logprob"][i].item() == pytest.approx(math.log(p[i, t]), abs=1e-6)
        assert st["rank"][i].item() == 1 + int((p[i] > p[i, t]).sum())
        assert st["entropy"][i].item() == pytest.approx(-(p[i] * np.log(p[i])).sum(), abs=1e-5)
        assert st["top_ids"][i].tolist() == list(np.argsort(-p[i])[:3])


def test_kl_and_js_match_their_formulas():
    torch.manual_seed(1)
    lp, lq = torch.log_softmax(torch.randn(4, 9), -1), torch.log_softmax(torch.randn(4, 9), -1)
    p, q = lp.exp().numpy(), lq.exp().numpy()
    m = (p + q) / 2
    np.testing.assert_allclose(kl(lp, lq).numpy(), (p * np.log(p / q)).sum(1), rtol=1e-5)
    expect_js = 0.5 * (p * np.log(p / m)).sum(1) + 0.5 * (q * np.log(q / m)).sum(1)
    np.testing.assert_allclose(js(lp, lq).numpy(), expect_js, rtol=1e-5)
    np.testing.assert_allclose(js(lp, lq).numpy(), js(lq, lp).numpy(), rtol=1e-6)
    assert (js(lp, lq) <= math.log(2) + 1e-6).all() and kl(lp, lp).abs().max() < 1e-6


def test_statistics_at_vocabulary_151936_are_within_3e_6_of_float64():
    """At a real vocabulary the sums over 151,936 words carry float32 rounding: summed pairwise (``_dot``) the
    entropy, KL and JS stay within 3e-6 of float64 (measured 1.0e-6; an einsum's single accumulator per row
    was off by up to 1.2e-3 on the entropy and 2.5e-5 on the KL), from peaked to flat distributions and
    from nearly equal to distant pairs."""
    g = torch.Generator().manual_seed(0)
    for scale, shift in ((0.1, 0.0), (1.0, 0.0), (3.0, 0.01), (5.0, 0.001), (8.0, 0.3)):
        x = torch.randn(6, 151_936, generator=g) * scale
        lp, lq = x.log_softmax(-1), (x + shift * torch.randn(6, 151_936, generator=g)).log_softmax(-1)
        p, q = lp.double().exp(), lq.double().exp()
        m = (p + q) / 2
        want = {"entropy": -(p * lp.double()).sum(-1), "kl": (p * (lp.double() - lq.double())).sum(-1),
                "js": 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)}
        got = {"entropy": token_stats(lp, torch.zeros(6, dtype=torch.long), 0)["entropy"], "kl": kl(lp, lq),
               "js": js(lp, lq)}
        for name, value in got.items():
            err = (value.double() - want[name]).abs().max().item()
            assert err <= 3e-6, (name, scale, shift, err)


@pytest.mark.parametrize("vocab", [151_936, 151_936 + 77, 2_000, 300])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_largest_gives_topk_values_and_their_columns(vocab, k):
    """``largest`` (blocks' maxima first on CPU at large vocabularies) gives ``topk``'s values, largest first,
    and columns holding them: at Qwen2's vocabulary, one not a multiple of the block (a tail), and small ones
    that take ``topk`` itself; with peaked rows, flat rows and ties across blocks."""
    g = torch.Generator().manual_seed(vocab + k)
    x = torch.randn(7, vocab, generator=g)
    x[1] *= 20  # peaked
    x[2] = 0.0  # every word tied
    x[3, ::97] = 9.0  # the largest value tied in many blocks
    x[4, -3:] = 50.0  # the largest words in the tail
    x[5, :5] = torch.tensor([7.0, 7.5, 8.0, 8.5, 9.0])  # all in the first block
    values, cols = largest(x, k)
    want = x.topk(k, dim=-1)
    assert torch.equal(values, want.values)
    assert torch.equal(x.gather(1, cols), values)
    assert all(len(set(row)) == k for row in cols.tolist())  # k distinct columns
    untied = [0, 1, 6]  # random rows: no ties, so the very same columns
    assert torch.equal(cols[untied], want.indices[untied])


@pytest.fixture(scope="module")
def scored(series, sample_world):
    recs = read_jsonl(sample_world / "data" / "test.jsonl", limit=9)
    enc = encode(series.tokenizer, recs)
    return enc, score(series, enc, ScoreConfig(top_k=4, batch_size=4))


def test_one_row_per_trajectory_checkpoint_token(scored, series):
    enc, df = scored
    assert len(df) == sum(len(e.completion_ids) for e in enc) * len(series.names)
    assert list(df.groupby("checkpoint", sort=False).size().index) == series.names


def test_batched_scores_equal_single_sequence_forward(scored, series):
    enc, df = scored
    for e in enc[:3]:
        for name in series.names:
            with torch.no_grad(), series.activate(name) as m:
                lp = torch.log_softmax(m(torch.tensor([e.input_ids])).logits[0].float(), -1)[e.start - 1: -1]
            rows = df[(df.traj_id == e.id) & (df.checkpoint == name)]
            target = torch.tensor(e.completion_ids)
            np.testing.assert_allclose(rows["logprob"], lp.gather(-1, target[:, None]).squeeze(-1), atol=1e-5)
            assert rows["top_probs"].iloc[0][0] == pytest.approx(lp[0].exp().max().item(), abs=1e-4)


def test_kl_columns_are_relative_to_base_and_previous(scored, series):
    _, df = scored
    base = df[df.checkpoint == "base"]
    assert (base[["kl_base", "js_base", "kl_prev", "js_prev"]] == 0).all().all()  # exactly: no pass is run
    first = df[df.checkpoint == series.names[1]]
    np.testing.assert_allclose(first["kl_base"], first["kl_prev"], atol=1e-6)
    assert df[df.checkpoint == series.names[2]]["kl_base"].mean() > 0


def test_a_shared_prompt_prefix_is_encoded_once_with_the_same_scores(series, sample_world):
    instruction = "Question: what is the disease of this patient? " * 5  # a system prompt every record shares
    recs = [{**r, "prompt": instruction + r["prompt"]} for r in read_jsonl(sample_world / "data" / "test.jsonl", limit=7)]
    enc = encode(series.tokenizer, recs)
    cfg = ScoreConfig(top_k=3, batch_size=4)
    for idx in length_batches(enc, cfg.batch_size):
        ids, _ = pad_right([enc[i] for i in idx], 0, "cpu")
        assert shared_prefix(ids, [(enc[i].start, len(enc[i].input_ids)) for i in idx]) >= MIN_SHARED
    shared = score(series, enc, cfg)
    plain = score(series, enc, ScoreConfig(top_k=3, batch_size=4, share_prefix=False))
    cols = ["logprob", "entropy", "kl_base", "js_base", "kl_prev", "js_prev"]
    np.testing.assert_allclose(shared[cols].to_numpy(), plain[cols].to_numpy(), atol=2e-5)
    assert (shared["rank"] == plain["rank"]).mean() > 0.99  # ties may break either way at 1e-6
    assert shared[["traj_id", "checkpoint", "position", "token"]].equals(plain[["traj_id", "checkpoint", "position", "token"]])


def test_a_cache_that_cannot_be_repeated_falls_back_to_full_rows(series, sample_world, monkeypatch):
    from transformers.cache_utils import DynamicCache

    calls = []

    def unsupported(self, repeats):
        calls.append(repeats)
        raise NotImplementedError("this architecture's cache cannot be repeated")

    instruction = "Question: what is the disease of this patient? " * 5
    recs = [{**r, "prompt": instruction + r["prompt"]} for r in read_jsonl(sample_world / "data" / "test.jsonl", limit=3)]
    enc = encode(series.tokenizer, recs)
    expected = score(series, enc, ScoreConfig(top_k=0, batch_size=3, share_prefix=False))
    monkeypatch.setattr(DynamicCache, "batch_repeat_interleave", unsupported)
    got = score(series, enc, ScoreConfig(top_k=0, batch_size=3))
    np.testing.assert_array_equal(got["logprob"].to_numpy(), expected["logprob"].to_numpy())
    assert calls == [3]  # the shared path was tried once, fell back, and was not tried again


def test_shared_prefix_stops_before_the_first_predicted_position():
    ids = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 5, 6, 7, 3, 0]])
    assert shared_prefix(ids, [(5, 6), (5, 5)]) == 4
    assert shared_prefix(ids, [(3, 6), (5, 5)]) == 2  # row 0's completion starts at 3: its predictor (2) is per row
    assert shared_prefix(ids[:1], [(5, 6)]) == 0  # one row: nothing to share
    assert shared_prefix(torch.tensor([[1, 2, 3], [4, 2, 3]]), [(2, 3), (2, 3)]) == 0


def test_cancel_stops_and_returns_nothing(series, scored):
    enc, _ = scored
    with pytest.raises(Cancelled):
        score(series, enc, should_cancel=lambda: True)


def test_full_checkpoints_load_once_per_group_and_match_their_adapters(series, adapters, quick_world, sample_world,
                                                                       tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import core.models.series as series_mod

    for name in ("checkpoint-2", "checkpoint-4"):
        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(quick_world / "model"),
                                           adapters / name).merge_and_unload()
        merged.save_pretrained(tmp_path / "full" / name)
    full = series_mod.load_series(quick_world / "model", tmp_path / "full")
    loads = []
    real = full.family.load_model  # a full checkpoint loads through the series' family
    monkeypatch.setattr(full.family, "load_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    enc = encode(series.tokenizer, read_jsonl(sample_world / "data" / "test.jsonl", limit=6))
    got = score(full, enc, ScoreConfig(top_k=2, batch_size=2))  # 3 batches, one group
    assert len(loads) == 2  # each full checkpoint loaded once, not once per batch
    want = score(series, enc, ScoreConfig(top_k=2, batch_size=2))
    for col in ("logprob", "kl_base", "js_prev"):
        np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), atol=1e-4)


def _naive_stats(series, e, top_k):
    """Every statistic of one trajectory from whole (L, V) log-softmaxes of plain forward passes."""
    lps = {}
    for name in series.names:
        with torch.no_grad(), series.activate(name) as m:
            lps[name] = torch.log_softmax(m(torch.tensor([e.input_ids])).logits[0].float(), -1)[e.start - 1: -1]
    target = torch.tensor(e.completion_ids)
    out = {}
    for i, name in enumerate(series.names):
        lp, base, prev = lps[name], lps[series.names[0]], lps[series.names[max(0, i - 1)]]
        out[name] = {"logprob": lp.gather(-1, target[:, None]).squeeze(-1), "entropy": -(lp.exp() * lp).sum(-1),
                     "kl_base": kl(lp, base), "js_base": js(lp, base), "kl_prev": kl(lp, prev), "js_prev": js(lp, prev),
                     "top_probs": lp.exp().topk(top_k, -1).values}
    return out


def test_every_statistic_equals_whole_distribution_computation(scored, series):
    """Row-chunked statistics from hidden states equal those of whole (L, V) log-distributions."""
    enc, df = scored
    for e in enc[:2]:
        want = _naive_stats(series, e, 4)
        for name in series.names:
            rows = df[(df.traj_id == e.id) & (df.checkpoint == name)]
            for col in ("logprob", "entropy", "kl_base", "js_base", "kl_prev", "js_prev"):
                np.testing.assert_allclose(rows[col], want[name][col], atol=2e-5, err_msg=f"{name} {col}")
            np.testing.assert_allclose(np.stack(rows["top_probs"]), want[name]["top_probs"], atol=2e-5)


def test_statistics_never_build_a_whole_distribution_matrix(series, sample_world, monkeypatch):
    """With chunks of 3 rows, every LM-head call sees at most 3 rows, and the table is the same."""
    from core.drift import scoring

    enc = encode(series.tokenizer, read_jsonl(sample_world / "data" / "test.jsonl", limit=3))
    cfg = ScoreConfig(top_k=3, batch_size=3)
    whole = score(series, enc, cfg)
    calls, vocab = [], len(series.tokenizer)
    real_linear, real_mm = torch.nn.functional.linear, torch.mm

    def spy(x, w, b=None):
        if w.shape[0] == vocab or w.shape[0] > 1000:
            calls.append(x.shape[0])
        return real_linear(x, w, b)

    def spy_mm(x, w, **kw):  # the head straight into a reused matrix: mm(h, W.t(), out=...)
        if w.shape[1] == vocab:
            calls.append(x.shape[0])
        return real_mm(x, w, **kw)

    monkeypatch.setattr(scoring, "chunk_rows", lambda vocab, device: 3)
    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    monkeypatch.setattr(torch, "mm", spy_mm)
    chunked = score(series, enc, cfg)
    assert calls and max(calls) <= 3
    cols = ["logprob", "entropy", "kl_base", "js_base", "kl_prev", "js_prev"]
    np.testing.assert_allclose(chunked[cols].to_numpy(), whole[cols].to_numpy(), atol=2e-5)
    assert chunked[["traj_id", "checkpoint", "position"]].equals(whole[["traj_id", "checkpoint", "position"]])


def test_score_batches_yields_every_row_once(series, scored):
    from core.drift.scoring import score_batches

    enc, df = scored
    parts = list(score_batches(series, enc, ScoreConfig(top_k=4, batch_size=4)))
    assert sorted(i for idx, _ in parts for i in idx) == list(range(len(enc)))
    got = pd.concat([f for _, f in parts]).sort_values(["checkpoint", "traj_id", "position"]).reset_index(drop=True)
    want = df.sort_values(["checkpoint", "traj_id", "position"]).reset_index(drop=True)
    np.testing.assert_allclose(got["kl_prev"], want["kl_prev"], atol=1e-6)
    skipped = list(score_batches(series, enc, ScoreConfig(top_k=0, batch_size=4), skip=lambda ids: enc[0].id in ids))
    assert enc[0].id not in {t for _, f in skipped for t in f["traj_id"]}


def test_checkpoint_inner_statistics_equal_checkpoint_outer_bit_for_bit(adapters, quick_world, sample_world,
                                                                        tmp_path, monkeypatch):
    """Adapter series score checkpoint-inner (every checkpoint's hidden states of a batch, then one LM-head pass
    per checkpoint and row chunk): the same numbers, bit for bit, as measuring each checkpoint against the
    base's and its parent's rows rebuilt per chunk, over several chunks and a branching lineage (c6 starts from
    c2 as a CPO run does, c8 continues c4), with a third of the head passes."""
    import json
    import shutil

    from core.drift import scoring
    from core.models.series import ModelSeries, load_series

    run = tmp_path / "run"
    for src, step in (("checkpoint-2", 2), ("checkpoint-4", 4), ("checkpoint-4", 6), ("checkpoint-2", 8)):
        shutil.copytree(adapters / src, run / f"checkpoint-{step}")
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    series = load_series(quick_world / "model", run, base_names=["cxr-demo-tiny-llama"])
    lineage = {"checkpoint-2": "base", "checkpoint-4": "checkpoint-2", "checkpoint-6": "checkpoint-2",
               "checkpoint-8": "checkpoint-4"}
    monkeypatch.setattr(ModelSeries, "parents", property(lambda self: lineage))
    monkeypatch.setattr(scoring, "chunk_rows", lambda vocab, device: 7)  # several chunks per batch
    calls = []
    real, real_mm = torch.nn.functional.linear, torch.mm
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda x, w, b=None: (calls.append(1) if w.shape[0] >= len(series.tokenizer) else None)
                        or real(x, w, b))
    monkeypatch.setattr(torch, "mm", lambda x, w, **kw: (calls.append(1) if w.shape[1] >= len(series.tokenizer)
                                                         else None) or real_mm(x, w, **kw))  # the head into a reused matrix
    enc = encode(series.tokenizer, read_jsonl(sample_world / "data" / "test.jsonl", limit=5))
    cfg = ScoreConfig(top_k=3, batch_size=3)
    inner = score(series, enc, cfg)
    inner_calls = len(calls)
    monkeypatch.setattr(scoring, "_checkpoint_inner", lambda series, budget: False)
    calls.clear()
    outer = score(series, enc, cfg)
    assert inner[["traj_id", "checkpoint", "position"]].equals(outer[["traj_id", "checkpoint", "position"]])
    for col in ("logprob", "rank", "entropy", "kl_base", "js_base", "kl_prev", "js_prev"):
        assert np.array_equal(inner[col].to_numpy(), outer[col].to_numpy()), col
    assert np.array_equal(np.stack(inner["top_probs"]), np.stack(outer["top_probs"]))
    branch = inner[inner.checkpoint == "checkpoint-6"]["kl_prev"].to_numpy()
    assert branch.max() > 0 and not np.array_equal(branch, inner[inner.checkpoint == "checkpoint-6"]["kl_base"])
    chunks = sum(-(-sum(len(enc[i].completion_ids) for i in idx) // 7) for idx in length_batches(enc, 3))
    assert inner_calls == 5 * chunks  # one head pass per checkpoint and chunk
    assert len(calls) == (1 + 2 + 3 + 3 + 3) * chunks  # the base; then each with the base's (and parent's) again


def test_a_checkpoint_scoring_nan_is_an_error_naming_it(adapters, quick_world, sample_world):
    """NaN that gets past the load checks (here put into a loaded adapter) stops scoring by name, not as
    ``kl_base 0.0000`` with an entropy of 0."""
    from core.drift.scoring import NonFiniteError
    from core.models.series import load_series

    series = load_series(quick_world / "model", adapters, base_names=["cxr-demo-tiny-llama"])
    with torch.no_grad():
        for name, p in series.model.named_parameters():
            if "lora_B.checkpoint-4" in name:
                p.fill_(float("nan"))
    enc = encode(series.tokenizer, read_jsonl(sample_world / "data" / "test.jsonl", limit=2))
    with pytest.raises(NonFiniteError, match=r"checkpoint checkpoint-4: \w+ is not finite \(nan\) on trajectory"):
        score(series, enc, ScoreConfig(top_k=4, batch_size=4))
