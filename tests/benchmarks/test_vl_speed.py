"""Vision-language scoring and probe on the tiny Qwen2.5-VL model (prints timings and ratios; asserts none).

Scoring: the workbench (batched, adapters switched in place, image features computed once per batch and
shared by every LoRA checkpoint) vs the notebook way (per checkpoint: load base + adapter, then one full
forward per record). Probe: the tree probe (prefix and images encoded once) vs re-encoding images +
prefix + template + label for every position and label.
"""

import json
import os
import time

import pytest
import torch

from core.drift.probe import ProbeConfig, tokens_of
from core.models.families.qwen_vl.forward import naive_label_logprobs, tree_label_logprobs
from core.io.images import ImageRef
from core.models.families.qwen_vl.inputs import IMAGE_PAD, collate, encode_vl, load_vl_model
from core.models.families.qwen_vl.adapters import lm_lora_targets
from core.models.families.qwen_vl.forward import score_table
from core.models.series import load_series
from workbench.demo.tinyvl import synthetic_xray, write_tiny_vl

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]
LABELS = ["Pneumonia", "Cardiomegaly", "Edema", "Atelectasis", "Pneumothorax", "No Finding"]
COT = ("There is an opacity in the left lower lobe. No effusion. The heart is not enlarged. " * 3).strip()


def world(tmp_path, n: int = 16):
    base = write_tiny_vl(tmp_path / "Qwen2.5-VL-tiny")
    for seed, step in ((1, 2), (2, 4), (3, 6)):
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        m = load_vl_model(base)
        get_peft_model(m, LoraConfig(r=4, target_modules=lm_lora_targets(m), init_lora_weights=False)
                       ).save_pretrained(tmp_path / "run" / f"checkpoint-{step}")
        (tmp_path / "run" / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    records = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        synthetic_xray(100 + 10 * i, 90 + 7 * i, i).save(path)
        records.append({"id": f"r{i}", "prompt": "This is a patient's chest DR image <image>. Disease?",
                        "completion": f"<think> {COT} </think> The disease of this patient is Pneumonia.",
                        "label": "Pneumonia", "image_refs": [ImageRef(path, f"r{i}")]})
    return base, tmp_path / "run", records


@torch.no_grad()
def notebook_scoring(base, run, encs, pad_id):
    from peft import PeftModel

    for ckpt in [None, *sorted(run.iterdir())]:
        model = load_vl_model(base)
        model = PeftModel.from_pretrained(model, ckpt) if ckpt else model
        for e in encs:
            ids = torch.tensor([e.input_ids])
            logits = model(input_ids=ids, pixel_values=e.pixel_values, image_grid_thw=e.image_grid_thw,
                           mm_token_type_ids=(ids == pad_id).int()).logits[0]
            torch.log_softmax(logits.float(), -1)[e.start - 1: -1].gather(-1, ids[0, e.start:, None])


@torch.no_grad()
def bare_forwards(vs, encs, size=8):
    """What batched scoring cannot avoid: one forward per batch and checkpoint (no LM head on prompt rows)."""
    batches = [encs[i: i + size] for i in range(0, len(encs), size)]
    for name in vs.names:
        with vs.activate(name) as model:
            for b in batches:
                batch = collate(b, vs.processor, model)
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                      pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw)


def test_vl_scoring_and_probe_speed(tmp_path):
    # the tiny model's matrices are too small to gain from threads; on a shared machine extra threads only
    # measure contention (BENCH_THREADS overrides)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    base, run, records = world(tmp_path)
    vs = load_series(base, run, device="cpu")
    encs = encode_vl(vs.processor, records)
    pad = vs.processor.token_id(IMAGE_PAD)
    score_table(vs, encs[:2])  # warm-up
    t = time.perf_counter()
    df = score_table(vs, encs, batch_size=8)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    notebook_scoring(base, run, encs, pad)
    notebook = time.perf_counter() - t
    t = time.perf_counter()
    bare_forwards(vs, encs)
    bare = time.perf_counter() - t
    n_tok = sum(len(e.input_ids) for e in encs)
    print(f"\nVL scoring, {len(encs)} trajectories ({n_tok} tokens, images included) x {len(vs.names)} checkpoints,"
          f" {len(df)} scored tokens:")
    print(f"  notebook (load per checkpoint, one record at a time): {notebook:6.2f} s")
    print(f"  bare batched forwards: {bare:6.2f} s")
    print(f"  workbench score_table: {ours:6.2f} s  -> {notebook / ours:.1f}x faster than the notebook, "
          f"{ours / bare:.2f}x the bare forwards")
    from core.drift.scoring import ScoreConfig, score

    t = time.perf_counter()
    score(vs, encs, ScoreConfig(top_k=5, batch_size=8))  # what an analysis runs: every statistic, top-k
    full = time.perf_counter() - t
    print(f"  core.drift.scoring.score (log-prob, rank, entropy, top-5, KL/JS to base and previous): {full:6.2f} s  -> "
          f"{notebook / full:.1f}x faster than the notebook (log-probs only), {full / bare:.2f}x the bare forwards")
    cfg = ProbeConfig(labels=LABELS)
    tk = tokens_of(vs.tokenizer, cfg, LABELS)
    plans = [list(range(e.start, e.think_end + 1, 2)) for e in encs[:2]]
    with vs.activate("checkpoint-4") as model:
        t = time.perf_counter()
        for e, pos in zip(encs[:2], plans, strict=True):
            tree_label_logprobs(model, vs.processor, [e], [pos], tk)
        fast = time.perf_counter() - t
        t = time.perf_counter()
        for e, pos in zip(encs[:2], plans, strict=True):
            naive_label_logprobs(model, vs.processor, e, pos, tk)
        naive = time.perf_counter() - t
    n = sum(map(len, plans))
    print(f"VL answer probe, 2 trajectories, {n} positions x {len(LABELS)} labels, one checkpoint:")
    print(f"  re-encode images + prefix per position and label: {naive:6.2f} s")
    print(f"  tree probe (images and prefix encoded once): {fast:6.2f} s  -> {naive / fast:.1f}x")
