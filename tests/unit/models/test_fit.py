"""Settings that fit the machine (core.models.fit): the estimator's inputs and answers, no timing."""

import sys

import pytest
from transformers import LlamaConfig, Qwen2Config

from core.drift import analysis as an
from core.models import fit

GIB = 1 << 30
# Qwen2.5-7B's text shape (config.json): 3584 hidden, 152,064 words, 28 layers, 28 heads, 4 KV heads of 128
QWEN7B = fit.ModelShape(hidden=3584, vocab=152064, layers=28, heads=28, kv_dim=512, intermediate=18944, tied=False)


def need(tokens=4096, dtype_bytes=2, device="cuda", **kw):
    return fit.Need(QWEN7B, tokens, dtype_bytes, checkpoints=8, device=device, **kw)


def test_shape_from_a_config_without_weights():
    cfg = Qwen2Config(hidden_size=3584, vocab_size=152064, num_hidden_layers=28, num_attention_heads=28,
                      num_key_value_heads=4, intermediate_size=18944, tie_word_embeddings=False)
    assert fit.ModelShape.of_config(cfg) == QWEN7B
    assert 7.0e9 < QWEN7B.params < 8.0e9  # Qwen2.5-7B has 7.6B parameters
    small = fit.ModelShape.of_config(LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                                 intermediate_size=128, vocab_size=100, num_hidden_layers=2))
    assert (small.kv_dim, small.intermediate, small.layers, small.vocab) == (32, 128, 2, 100)


def test_a_7b_model_on_an_80gb_gpu_gets_fewer_4k_rows_than_short_ones():
    long_ = fit.plan_batch(need(4096), free=80 * GIB, host=200 * GIB)
    short = fit.plan_batch(need(512), free=80 * GIB, host=200 * GIB)
    assert 1 <= long_.batch_size < fit.MAX_AUTO and long_.batch_size & (long_.batch_size - 1) == 0  # a power of two
    assert short.batch_size >= min(fit.MAX_AUTO, 4 * long_.batch_size)
    # the statistics never build a (rows, V) matrix per row: one 4,096-token row costs well under its fp32 logits
    assert long_.row_bytes < 4096 * 152064 * 4


def test_more_free_memory_never_means_a_smaller_batch():
    sizes = [fit.plan_batch(need(2048), free=g * GIB, host=500 * GIB).batch_size for g in (24, 40, 80, 140)]
    assert sizes == sorted(sizes)
    assert fit.plan_batch(need(16), free=140 * GIB, host=500 * GIB).batch_size == fit.MAX_AUTO
    assert fit.plan_batch(need(16), free=140 * GIB, host=500 * GIB, trajectories=5).batch_size == 4


def test_on_cpu_the_result_rows_of_every_checkpoint_share_the_memory():
    few = fit.Need(QWEN7B, 1024, 4, checkpoints=2, device="cpu")
    many = fit.Need(QWEN7B, 1024, 4, checkpoints=40, device="cpu")
    assert fit.plan_batch(many, free=64 * GIB).row_bytes > fit.plan_batch(few, free=64 * GIB).row_bytes
    # on a GPU the host keeps them: a small host caps the batch although the device has room
    assert fit.plan_batch(need(1024), free=140 * GIB, host=GIB // 16).batch_size < \
        fit.plan_batch(need(1024), free=140 * GIB, host=100 * GIB).batch_size


def test_eager_attention_adds_its_quadratic_scores():
    eager = fit.Need(fit.ModelShape(**{**QWEN7B.__dict__, "eager": True}), 4096, 2, 8, "cuda")
    assert "attention scores" in eager.row_bytes() and "attention scores" not in need().row_bytes()
    assert eager.row_bytes()["attention scores"] == 28 * 4096 * 4096 * 6


def test_a_run_that_cannot_fit_one_row_is_refused_naming_what_to_change():
    with pytest.raises(fit.DoesNotFit) as e:
        fit.plan_batch(need(4096, dtype_bytes=4, longest="study-7"), free=16 * GIB, host=64 * GIB)
    text = str(e.value)
    for words in ("4096 tokens", "study-7", "fewer checkpoints", "--dtype bfloat16", "more free memory", "GiB"):
        assert words in text, words
    # the weights are counted when not loaded yet: the same run fits once they are in memory and room is left
    assert fit.plan_batch(need(256, weights_loaded=True), free=16 * GIB, host=64 * GIB).batch_size >= 1


def test_a_full_model_series_reserves_a_second_model_and_its_grouped_states():
    adapters = need(1024).fixed_bytes()
    full = need(1024, full_checkpoints=True).fixed_bytes()
    assert full["a full checkpoint beside the base"] == QWEN7B.params * 2
    assert sum(full.values()) - sum(adapters.values()) == QWEN7B.params * 2 + (2 << 30)


def test_a_requested_batch_size_is_kept_and_warned_about_when_above_the_estimate():
    plan = fit.plan_batch(need(4096), free=80 * GIB, host=200 * GIB, requested=64)
    assert plan.batch_size == 64 and "--batch-size 64" in plan.note and "may run out of memory" in plan.note
    assert fit.plan_batch(need(4096), free=80 * GIB, host=200 * GIB, requested=1).note == ""
    assert fit.plan_batch(need(4096), free=None).batch_size == 8  # free memory unknown: the old default


def test_free_memory_from_psutil_or_proc_meminfo(monkeypatch):
    first = fit.host_free_bytes()
    assert first is None or first > 0
    monkeypatch.setitem(sys.modules, "psutil", None)  # import fails: /proc/meminfo's MemAvailable
    second = fit.host_free_bytes()
    if sys.platform.startswith("linux"):
        assert second > 0 and (first is None or abs(second - first) < 2 * GIB)
    assert fit.free_bytes("cpu") is None or fit.free_bytes("cpu") > 0


def test_configs_take_auto_and_old_configs_keep_their_batch_size():
    assert an.AnalysisConfig(base="b", data="d").batch_size is None
    assert an.AnalysisConfig.from_dict({"base": "b", "data": "d", "batch_size": "auto"}).batch_size is None
    assert an.AnalysisConfig.from_dict({"base": "b", "data": "d", "batch_size": 8}).batch_size == 8


def test_the_analysis_refuses_before_loading_any_model(quick_world, monkeypatch):
    cfg = an.AnalysisConfig(base=str(quick_world / "model"), data=str(quick_world / "data" / "test.jsonl"), limit=2)

    def no_models(*a, **k):
        raise AssertionError("a model was loaded before the memory check")

    monkeypatch.setattr(an, "load_series", no_models)
    monkeypatch.setattr(fit, "free_bytes", lambda device: 1 << 20)  # a 1 MiB device
    with pytest.raises(fit.DoesNotFit, match="will not fit.*Nothing was run"):
        an.run_analysis(cfg)


def test_auto_batch_size_of_a_loaded_series_is_used(series, quick_world):
    from core.drift.scoring import ScoreConfig, score_batches
    from core.io.trajectories import encode, read_jsonl

    encoded = encode(series.tokenizer, read_jsonl(quick_world / "data" / "test.jsonl", 5))
    plan = fit.plan_for_series(series, encoded, top_k=5)
    assert plan.batch_size == 4  # a tiny model: capped by the 5 trajectories, rounded down to a power of two
    sizes = [len(idx) for idx, _ in score_batches(series, encoded, ScoreConfig(top_k=2, batch_size=None))]
    assert sizes == [4, 1]
