"""The family matrix, cell by cell (``core.models.families.matrix.MATRIX``: the table dispatch reads): one test per
operation, run on every text model_type whose row claims it, each on a tiny random model of that type saved the
way a user's run is (a folder as a trainer saves it, the sample world's tokenizer, a LoRA checkpoint made with PEFT
in a TRL layout), each compared with the model's own direct computation:

- score: every completion token's log-prob under the base and the checkpoint = a direct forward of the record;
- probe: beliefs at every position, on both of the probe's paths (one tree; the prefix's KV cache, blocks in
  chunks) = naive re-encoding of prefix + template + label; windows shorter than the CoT where the type slides;
- evaluate: the held-out greedy completions of a batch (left-padded) = ``model.generate`` of each record alone;
- train: a CPO step through ``core.cpo.train`` changes the new LoRA, and the saved run loads as a series whose
  scores are a direct forward of the trained model.

The models are built once per module (small shapes: 2 layers, hidden 64) and shared by its tests. The Qwen-VL
rows are checked by the tests ``VL_CELLS`` names (``tests/unit/models/families/qwen_vl``, the VL tests of ``cpo``
and ``perturb``), each against the model's own forward, re-encoding or decoding alone;
``test_every_vl_cell_names_its_test`` holds the matrix's VL claims to exactly those. A type that fails here does not go in the matrix (``matrix.REFUSED``
says why)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.cpo.config import TrainConfig
from core.drift.probe import ProbeConfig, probe, probe_positions, sentence_ids, tokens_of
from core.drift.scoring import ScoreConfig, score
from core.io.trajectories import encode, prompt_ids, read_jsonl
from core.models.families import TEXT_FAMILY, family_for
from core.models.families.matrix import EVALUATE, MATRIX, PROBE, SCORE, TRAIN, VISUAL
from core.models.families.windows import sliding_window
from core.models.series import load_series

SHAPE = dict(vocab_size=492, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
WINDOW = 12  # tokens: shorter than every CoT and every shared prompt prefix below
INSTRUCTION = "You are a careful radiologist. Read the report and answer with one disease name only. "
LABELS = ["Atelectasis", "Edema", "Pleural Other", "Pneumonia"]
BASE_NAME = "tiny-base"

QWEN_VL = "tests/unit/models/families/qwen_vl/"
OTHER = QWEN_VL + "test_qwen2_and_3_vl.py::"  # parametrised over Qwen2-VL and Qwen3-VL
VL_CELLS: dict[tuple[str, str], tuple[str, ...]] = {  # (model_type, operation) -> the tests that check that cell
    ("qwen2_vl", SCORE): (OTHER + "test_qwen_vl_scoring_equals_a_direct_forward",),
    ("qwen2_vl", PROBE): (OTHER + "test_qwen_vl_probe_equals_naive_reencoding",),
    ("qwen2_vl", EVALUATE): (OTHER + "test_qwen_vl_batch_decodes_each_record_as_alone",),
    ("qwen2_vl", TRAIN): (OTHER + "test_qwen_vl_cpo_step_trains_the_language_model_lora_and_not_the_vision_tower",),
    ("qwen3_vl", SCORE): (OTHER + "test_qwen_vl_scoring_equals_a_direct_forward",),
    ("qwen3_vl", PROBE): (OTHER + "test_qwen_vl_probe_equals_naive_reencoding",),
    ("qwen3_vl", EVALUATE): (OTHER + "test_qwen_vl_batch_decodes_each_record_as_alone",),
    ("qwen3_vl", TRAIN): (OTHER + "test_qwen_vl_cpo_step_trains_the_language_model_lora_and_not_the_vision_tower",),
    ("qwen2_5_vl", SCORE): (QWEN_VL + "test_forward.py::test_scoring_equals_a_direct_forward",),
    ("qwen2_5_vl", PROBE): (QWEN_VL + "test_forward.py::test_probe_equals_naive_reencoding",),
    ("qwen2_5_vl", EVALUATE): (QWEN_VL + "test_generation.py::test_a_batch_decodes_each_row_as_alone",
                               "tests/unit/perturb/test_evaluation_vl.py::"
                               "test_answers_are_decoded_with_each_study_s_image_in_batches_as_alone"),
    ("qwen2_5_vl", TRAIN): ("tests/unit/cpo/test_vl.py::"
                            "test_a_cpo_step_changes_the_language_model_lora_and_not_the_vision_tower",
                            "tests/unit/cpo/test_vl.py::test_the_runs_logps_are_the_models_own_with_images_and_3d_positions"),
    ("qwen2_5_vl", VISUAL): ("tests/unit/perturb/test_visual.py::"
                             "test_beliefs_under_a_swap_equal_naive_reencoding_of_the_swapped_record",
                             "tests/unit/perturb/test_visual.py::test_occlusion_beliefs_equal_naive_reencoding_of_the_occluded_image"),
}

# what each model_type's tiny model sets beyond SHAPE; several variants where a family has several forms
VARIANTS: dict[str, list[tuple[str, dict]]] = {
    "qwen2": [("qwen2-tied-window", dict(tie_word_embeddings=True, use_sliding_window=True, sliding_window=WINDOW,
                                         max_window_layers=1)),
              ("qwen2-untied", dict(tie_word_embeddings=False))],
    "qwen3_moe": [("qwen3_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32))],
    "gemma": [("gemma", dict(head_dim=16))],  # Gemma's default heads are 256 wide: 16 keeps the tiny model tiny
    "gemma2": [("gemma2", dict(head_dim=16, sliding_window=WINDOW, final_logit_softcapping=0.5,
                               attn_logit_softcapping=5.0))],
    "gemma3_text": [("gemma3-mixed", dict(head_dim=16, sliding_window=WINDOW, final_logit_softcapping=0.5,
                                          layer_types=["sliding_attention", "full_attention"])),
                    ("gemma3-all-sliding", dict(head_dim=16, sliding_window=WINDOW,
                                                layer_types=["sliding_attention"] * 2))],
    "mistral": [("mistral", dict(sliding_window=WINDOW))],
    "phi3": [("phi3", dict(sliding_window=WINDOW))],
    "granite": [("granite", dict(logits_scaling=4.0))],
}


def cases(op: str) -> list:
    """(model_type, variant, config) of every text row of the matrix that claims ``op``."""
    return [pytest.param(e.model_type, name, extra, id=name) for e in MATRIX if e.family == "text" and op in e.tested
            for name, extra in VARIANTS.get(e.model_type, [(e.model_type, {})])]


@pytest.fixture(scope="module")
def records(sample_world):
    recs = read_jsonl(sample_world / "data" / "test.jsonl", 3)
    return [{**r, "prompt": INSTRUCTION + r["prompt"]} for r in recs]  # a prefix every row shares


@pytest.fixture(scope="module")
def models(tmp_path_factory, sample_world):
    """Build each variant once for the module: its folder, a LoRA run in TRL's layout, and its loaded series."""
    built: dict[str, SimpleNamespace] = {}
    root = tmp_path_factory.mktemp("matrix")

    def get(model_type: str, name: str, extra: dict) -> SimpleNamespace:
        if name not in built:
            folder = tiny(model_type, extra, root / name, sample_world)
            run = lora_run(folder, root / f"{name}-run")
            built[name] = SimpleNamespace(folder=folder, run=run, series=load_series(
                folder, run, device="cpu", dtype="float32", base_names=[BASE_NAME]))
        return built[name]

    return get


def tiny(model_type: str, extra: dict, folder, sample_world):
    """A random model of ``model_type`` with the sample world's tokenizer, in a folder as a trainer saves it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**SHAPE, **extra})).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(sample_world / "model" / name, folder / name)
    return folder


def lora_run(folder, run):
    """A trainer's output folder: checkpoint-3/ holding a LoRA (random, non-zero) on every linear layer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                          LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    peft.peft_config["default"].base_model_name_or_path = BASE_NAME
    peft.save_pretrained(run / "checkpoint-3", save_embedding_layers=False)
    (run / "checkpoint-3" / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    return run


@torch.no_grad()
def direct_logprobs(model, e) -> np.ndarray:
    """The reference: the record alone through the model's own forward; log p of each completion token."""
    ids = torch.tensor([e.input_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (T, V)
    return logp[e.start - 1: -1].gather(-1, ids[0, e.start:, None]).squeeze(-1).numpy()


@torch.no_grad()
def naive(model, e, positions: list[int], tk) -> np.ndarray:
    """The probe's reference: x[:j] + template + label re-encoded for every position j and label, each its own
    sequence (right-padded into one batch: a causal model's rows never see the padding after them).  -> (P, K)"""
    seqs = [(p, k, e.input_ids[:j] + tk.template + lab, j + len(tk.template))
            for p, j in enumerate(positions) for k, lab in enumerate(tk.labels)]
    width = max(len(s) for _, _, s, _ in seqs)
    ids = torch.tensor([s + [0] * (width - len(s)) for _, _, s, _ in seqs])
    logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)  # (P * K, W, V)
    out = np.zeros((len(positions), len(tk.labels)))
    for row, (p, k, s, start) in enumerate(seqs):
        lab = s[start:]
        out[p, k] = sum(logp[row, start + q - 1, t].item() for q, t in enumerate(lab))
    return out


def assert_scores_direct(series, encoded, frame) -> None:
    for name in series.names:
        with series.activate(name) as model:
            for e in encoded:
                got = frame[(frame.checkpoint == name) & (frame.traj_id == e.id)].sort_values("position")
                np.testing.assert_allclose(got["logprob"].to_numpy(), direct_logprobs(model, e), atol=2e-5,
                                           err_msg=f"{name}, {e.id}")


@pytest.mark.slow
@pytest.mark.parametrize("model_type, name, extra", cases(SCORE))
def test_score_equals_a_direct_forward(model_type, name, extra, models, records):
    m = models(model_type, name, extra)
    assert m.series.family is TEXT_FAMILY is family_for(m.folder) and len(m.series.names) == 2
    encoded = encode(m.series.tokenizer, records)
    for share in (True, False):  # the common prompt prefix encoded once (its KV cache repeated), and not
        assert_scores_direct(m.series, encoded, score(m.series, encoded, ScoreConfig(top_k=0, batch_size=3,
                                                                                     share_prefix=share)))


@pytest.mark.slow
@pytest.mark.parametrize("model_type, name, extra", cases(PROBE))
def test_probe_equals_naive_reencoding_at_every_position(model_type, name, extra, models, records):
    m = models(model_type, name, extra)
    series = m.series
    encoded = encode(series.tokenizer, records[:2])
    window = sliding_window(series.model)
    assert window is None or all(len(e.input_ids) - e.start > 2 * window for e in encoded)  # CoTs past the window
    cols = [f"p:{y}" for y in LABELS]
    cfg = ProbeConfig(labels=LABELS, positions="every")
    tk = tokens_of(series.tokenizer, cfg, LABELS)
    tree, cached = (probe(series, encoded, ProbeConfig(labels=LABELS, positions="every", max_tree_tokens=budget))
                    for budget in (4096, 64))  # one tree per trajectory; the prefix's KV cache, blocks in chunks
    np.testing.assert_allclose(tree[cols].to_numpy(), cached[cols].to_numpy(), atol=2e-5)  # every row of both
    for name_, e in zip(series.names, encoded, strict=True):  # re-encoding: the base on one, the LoRA on the other
        with series.activate(name_) as model:
            positions = probe_positions(e, "every", tk.template[0], sentence_ids(series.tokenizer))
            ref = naive(model, e, positions, tk)  # (P, K) log-probs
        z = np.exp(ref - ref.max(1, keepdims=True))
        z /= z.sum(1, keepdims=True)
        for frame in (tree, cached):
            got = frame[(frame.traj_id == e.id) & (frame.checkpoint == name_)]
            assert len(got) == len(positions)
            np.testing.assert_allclose(got[cols].to_numpy(), z, atol=2e-5, err_msg=f"{name_}, {e.id}")

@pytest.mark.slow
@pytest.mark.parametrize("model_type, name, extra", cases(EVALUATE))
def test_held_out_greedy_decoding_equals_generate_alone(model_type, name, extra, models, records):
    from core.perturb.evaluation import answers

    m = models(model_type, name, extra)
    tok = m.series.tokenizer
    with m.series.activate(m.series.names[-1]) as model:
        got = TEXT_FAMILY.greedy(model, tok, records, max_new_tokens=10, batch_size=3)  # one left-padded batch
        for r, text in zip(records, got, strict=True):
            ids = torch.tensor([prompt_ids(tok, r["prompt"], False, None)])
            alone = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=10, pad_token_id=0, eos_token_id=tok.eos_token_id)
            assert text == tok.decode(alone[0, ids.shape[1]:], skip_special_tokens=True), r["id"]
        assert len(answers(model, tok, records, max_new_tokens=4)) == len(records)  # the evaluation reads them


@pytest.mark.slow
@pytest.mark.parametrize("model_type, name, extra", cases(TRAIN))
def test_a_cpo_step_trains_the_lora_and_the_run_scores_as_the_model(model_type, name, extra, models, records,
                                                                    pairs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.cpo.train import train

    m = models(model_type, name, extra)
    cfg = TrainConfig(base_model=str(m.folder), data=str(pairs), output_dir=str(tmp_path / "cpo"), max_steps=1,
                      batch_size=2, learning_rate=1e-2, save_steps=1, max_length=96, lora_r=2, lora_alpha=4)
    result = train(cfg)
    assert (result.steps, result.cancelled) == (1, False)
    series = load_series(m.folder, [result.adapter_dir], device="cpu", dtype="float32")
    encoded = encode(series.tokenizer, records[:2])
    frame = score(series, encoded, ScoreConfig(top_k=0, batch_size=2))
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(m.folder), result.adapter_dir).eval()
    for e in encoded:  # the run's checkpoint scores as the trained model itself, and not as the base
        got = frame[(frame.checkpoint == series.names[-1]) & (frame.traj_id == e.id)].sort_values("position")
        np.testing.assert_allclose(got["logprob"].to_numpy(), direct_logprobs(trained, e), atol=2e-5)
        base = frame[(frame.checkpoint == "base") & (frame.traj_id == e.id)].sort_values("position")
        assert np.abs(got["logprob"].to_numpy() - base["logprob"].to_numpy()).max() > 1e-4


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, sample_world):
    from workbench.demo.preferences import build_preferences

    return build_preferences(sample_world, tmp_path_factory.mktemp("pairs") / "pairs.jsonl", n=4, seed=0)


def test_every_vl_cell_names_its_test():
    """The matrix claims a VL cell exactly where a test checks it, and every test named exists."""
    import importlib

    claimed = {(e.model_type, op) for e in MATRIX if e.family != "text" for op in e.tested}
    assert claimed == set(VL_CELLS)
    for node in (n for nodes in VL_CELLS.values() for n in nodes):
        path, name = node.split("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, name, None)), node
