"""The answer probe equals the naive computation and behaves as a distribution."""

import numpy as np
import pytest

from core.drift.probe import ProbeConfig, probe, probe_naive, probe_positions, tokens_of
from core.io.trajectories import encode, read_jsonl
from workbench.demo.spec import DISEASES

LABELS = list(DISEASES)


@pytest.fixture(scope="module")
def setup(series, sample_world):
    recs = read_jsonl(sample_world / "data" / "test.jsonl", limit=4)
    return encode(series.tokenizer, recs)


@pytest.mark.parametrize("include_prompt", [False, True])
def test_probe_equals_naive_reencoding(series, setup, include_prompt):
    cfg = ProbeConfig(labels=LABELS, include_prompt=include_prompt, max_tree_tokens=400)  # forces chunking
    df = probe(series, setup, cfg)
    tk = tokens_of(series.tokenizer, cfg, LABELS)
    for e in setup[:2]:
        positions = probe_positions(e, "every", tk.template[0], set(), include_prompt)[::4]
        for name in (series.names[0], series.names[-1]):
            with series.activate(name) as m:
                ref = probe_naive(m, e, positions, series.tokenizer, cfg, LABELS)
            z = np.exp(ref - ref.max(1, keepdims=True))
            z /= z.sum(1, keepdims=True)
            got = df[(df.traj_id == e.id) & (df.checkpoint == name)].set_index("position")
            got = got.loc[np.array(positions) - e.start, [f"p:{y}" for y in LABELS]].to_numpy()
            np.testing.assert_allclose(got, z, atol=1e-5)


def test_beliefs_are_distributions_and_gold_column_matches(series, setup):
    df = probe(series, setup, ProbeConfig(labels=LABELS, positions="sentence"))
    cols = [f"p:{y}" for y in LABELS]
    np.testing.assert_allclose(df[cols].sum(1), 1.0, atol=1e-6)
    for _, row in df.head(20).iterrows():
        assert row["gold_prob"] == pytest.approx(row[f"p:{row['gold']}"])
        assert row["answer"] == max(LABELS, key=lambda y: row[f"p:{y}"])
    assert (df["label_mass"] <= 1 + 1e-6).all()


def test_position_modes(setup, series):
    tk = tokens_of(series.tokenizer, ProbeConfig(labels=LABELS), LABELS)
    dots = {series.tokenizer.convert_tokens_to_ids(".")}
    e = setup[0]
    every = probe_positions(e, "every", tk.template[0], dots)
    sentence = probe_positions(e, "sentence", tk.template[0], dots)
    assert every[0] == e.start and set(sentence) <= set(every) and len(sentence) < len(every)
    assert probe_positions(e, "end", tk.template[0], dots) == [every[-1]]
    assert probe_positions(e, "every", tk.template[0], dots, include_prompt=True)[0] == 1


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="positions"):
        ProbeConfig(positions="sometimes")


@pytest.mark.parametrize("max_tree_tokens", [2048, 64])  # one tree; the prefix's KV cache and query chunks
def test_probe_is_exact_with_eager_attention_too(sample_world, max_tree_tokens):
    """Eager attention adds the mask to the scores: the probe's mask must be additive, not boolean."""
    from core.models.series import load_series

    s = load_series(sample_world / "model", [sample_world / "rft" / "checkpoint-160"],
                    base_names=["cxr-demo-tiny-llama"])
    s.model.set_attn_implementation("eager")
    e = encode(s.tokenizer, read_jsonl(sample_world / "data" / "test.jsonl", limit=1))[0]
    cfg = ProbeConfig(labels=LABELS, max_tree_tokens=max_tree_tokens)
    df = probe(s, [e], cfg)
    positions = probe_positions(e, "every", tokens_of(s.tokenizer, cfg, LABELS).template[0], set())[::5]
    with s.activate("checkpoint-160") as m:
        ref = probe_naive(m, e, positions, s.tokenizer, cfg, LABELS)
    z = np.exp(ref - ref.max(1, keepdims=True))
    z /= z.sum(1, keepdims=True)
    got = df[df.checkpoint == "checkpoint-160"].set_index("position").loc[np.array(positions) - e.start]
    np.testing.assert_allclose(got[[f"p:{y}" for y in LABELS]].to_numpy(), z, atol=1e-5)


def test_empty_template_is_refused():
    with pytest.raises(ValueError, match="template"):
        ProbeConfig(template="  ")


def test_full_checkpoint_series_probe_loads_each_once(quick_world, adapters, series, setup, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import core.models.series as series_mod

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(quick_world / "model"),
                                       adapters / "checkpoint-4").merge_and_unload()
    merged.save_pretrained(tmp_path / "full" / "checkpoint-4")
    full = series_mod.load_series(quick_world / "model", tmp_path / "full")
    loads = []
    real = full.family.load_model  # a full checkpoint loads through the series' family
    monkeypatch.setattr(full.family, "load_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    cfg = ProbeConfig(labels=LABELS, max_tree_tokens=300)  # several groups
    got = probe(full, setup, cfg)
    assert len(loads) == 1
    want = probe(series, setup, cfg)
    want = want[want.checkpoint == "checkpoint-4"].reset_index(drop=True)
    got = got[got.checkpoint == "checkpoint-4"].reset_index(drop=True)
    np.testing.assert_allclose(got["gold_prob"], want["gold_prob"], atol=1e-4)


def test_long_trajectories_encode_each_prefix_once(series, setup):
    """Past max_tree_tokens the prefix is encoded once and the probe blocks run over its KV cache: tokens
    encoded per trajectory and checkpoint are T + B x P (linear in length), and the beliefs equal one tree's."""
    from core.models.forward import decoder

    counted = []
    hook = decoder(series.model).embed_tokens.register_forward_hook(lambda m, a, out: counted.append(a[0].numel()))
    try:
        tree = probe(series, setup[:2], ProbeConfig(labels=LABELS, positions="every", max_tree_tokens=100_000))
        counted.clear()
        cached = probe(series, setup[:2], ProbeConfig(labels=LABELS, positions="every", max_tree_tokens=64))
    finally:
        hook.remove()
    tk = tokens_of(series.tokenizer, ProbeConfig(labels=LABELS), LABELS)
    block = len(tk.template) + sum(len(lab) - 1 for lab in tk.labels)
    want = 0
    for e in setup[:2]:
        positions = probe_positions(e, "every", tk.template[0], set())
        want += positions[-1] + block * len(positions)
    assert sum(counted) == want * len(series.names)
    cols = [f"p:{y}" for y in LABELS]
    np.testing.assert_allclose(cached[cols].to_numpy(), tree[cols].to_numpy(), atol=1e-5)
    assert cached[["traj_id", "checkpoint", "position"]].equals(tree[["traj_id", "checkpoint", "position"]])
