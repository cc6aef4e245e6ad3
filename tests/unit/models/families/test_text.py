"""The text family's table of model types, each checked on a tiny random model of that type, saved and loaded
the way a user's run is: the probe equals re-encoding (one tree, and the prefix's KV cache in query chunks) and
scoring with a shared prompt prefix equals scoring without. A type that fails here does not go in the table
(cohere and cohere2, for one, give beliefs 0.02 off: their layers do not read a 4-D mask the way the tree needs)."""

import shutil

import numpy as np
import pytest
import torch

from core.drift.probe import ProbeConfig, probe, probe_naive, probe_positions, sentence_ids, tokens_of
from core.drift.scoring import ScoreConfig, score
from core.io.trajectories import encode, read_jsonl
from core.models.families import TEXT_FAMILY
from core.models.families.text import MODEL_TYPES
from core.models.series import load_series

SHAPE = dict(vocab_size=492, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
INSTRUCTION = "You are a careful radiologist. Read the report and answer with one disease name only. "


@pytest.fixture(scope="module")
def records(sample_world):
    recs = read_jsonl(sample_world / "data" / "test.jsonl", 3)
    return [{**r, "prompt": INSTRUCTION + r["prompt"]} for r in recs]  # a prefix every row shares


def tiny(model_type: str, folder, sample_world):
    """A random model of ``model_type`` with the sample world's tokenizer, in a folder as a trainer saves it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **SHAPE)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(sample_world / "model" / name, folder / name)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_listed_model_type_probes_and_scores_exactly(model_type, records, sample_world, tmp_path):
    series = load_series(tiny(model_type, tmp_path / model_type, sample_world), device="cpu", dtype="float32")
    assert series.family is TEXT_FAMILY
    enc = encode(series.tokenizer, records)
    labels = ["Atelectasis", "Edema", "Pleural Other", "Pneumonia"]
    cols = [f"p:{y}" for y in labels]
    tree, cached = (probe(series, enc, ProbeConfig(labels=labels, positions="sentence", max_tree_tokens=budget))
                    for budget in (2048, 64))  # one tree per trajectory; the prefix's KV cache, blocks in chunks
    np.testing.assert_allclose(tree[cols].to_numpy(), cached[cols].to_numpy(), atol=1e-5)
    cfg = ProbeConfig(labels=labels)
    tk = tokens_of(series.tokenizer, cfg, labels)
    e = enc[0]
    positions = probe_positions(e, "sentence", tk.template[0], sentence_ids(series.tokenizer))
    ref = probe_naive(series.model, e, positions, series.tokenizer, cfg, labels)  # re-encoding, per position/label
    z = np.exp(ref - ref.max(1, keepdims=True))
    np.testing.assert_allclose(tree[tree.traj_id == e.id][cols].to_numpy(), z / z.sum(1, keepdims=True), atol=1e-5)
    shared = score(series, enc, ScoreConfig(top_k=0, batch_size=3, share_prefix=True))
    plain = score(series, enc, ScoreConfig(top_k=0, batch_size=3, share_prefix=False))
    np.testing.assert_allclose(shared["logprob"], plain["logprob"], atol=2e-5)
