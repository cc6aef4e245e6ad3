"""Long CoTs on a GPU: scoring and probe figures at realistic shapes, one script, one call (a few minutes).

    python3 tests/benchmarks/gpu_long_cot.py --out $OUT/long_cot_gpu.json      # CUDA, bf16 (about 3-5 minutes)
    python tests/benchmarks/gpu_long_cot.py --smoke --out /tmp/smoke.json      # CPU, tiny sizes (a check, ~1 min)

Not collected by pytest (its name does not start with test_); ``tests/benchmarks/test_gpu_script.py`` runs the smoke.

A random Qwen2 model of Qwen2.5-0.5B's shapes (hidden 896, 24 layers, vocabulary 151,936) in bf16 with 4
LoRA checkpoints (base + 4), saved and loaded through ``core.models.series.load_series`` as a user's run would be.
Prints, and writes as JSON to ``--out`` after every section (a cut run keeps what it measured):

- scoring at 1,024 / 2,048 / 4,096-token rows (64 prompt + the rest completion): tokens/s (completion tokens
  x checkpoints per second), peak GPU memory above the weights, with the batch size chosen from free memory
  (auto) and fixed at 4; the ratio to the bare batched forward passes (``model(ids).logits`` per checkpoint,
  the same batches) and to the former checkpoint-outer statistics (up to 3 LM-head passes per checkpoint);
- the answer probe (14 labels) at sentence ends and at every position at 2,048 / 4,096 tokens: tokens encoded
  and time vs one plain pass (one checkpoint);
- a Qwen2.5-7B-shaped model of one decoder layer (hidden 3,584, vocabulary 152,064): scoring vs bare forwards
  for 4,096-token rows, and the time of one decoder layer, to extrapolate the ratio to 28 layers
  (``--no-7b`` skips it).

Every timed entry also gives its model FLOPs utilisation (``mfu``): the model FLOPs of the forward work done
(``forward_flops``: the decoder's matmuls and causal attention over every token, the LM head over the rows
it is applied to; LoRA's rank-8 products and the statistics' elementwise passes are not counted) per second,
over the device's peak dense bf16 FLOP/s (``PEAK_BF16`` by device name, or ``WORKBENCH_PEAK_FLOPS`` in
FLOP/s, which wins; without either, ``mfu`` is null and ``peak_flops`` says why).

Needs only torch, transformers, peft and this repository (no trl, no datasets).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.drift import scoring  # noqa: E402
from core.drift.probe import ProbeConfig, probe  # noqa: E402
from core.drift.scoring import ScoreConfig, score_batches  # noqa: E402
from core.models.families.text import pad_right  # noqa: E402
from core.io.trajectories import Encoded  # noqa: E402
from core.models.fit import plan_for_series  # noqa: E402
from core.models.forward import hidden_states  # noqa: E402
from core.models.series import load_series  # noqa: E402
from workbench.demo.spec import DISEASES  # noqa: E402

SHAPES = {  # Qwen2.5-0.5B; Qwen2.5-7B with one layer; tiny (--smoke)
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151_936),
    "7b-1layer": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=1, num_attention_heads=28,
                      num_key_value_heads=4, vocab_size=152_064),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=8_192),
}


PEAK_BF16 = (  # dense bf16 tensor-core FLOP/s by device name (first match wins; vendors' data sheets, no sparsity)
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12),
)


def peak_flops(device_name: str) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s, where it comes from): ``WORKBENCH_PEAK_FLOPS`` if set, else ``PEAK_BF16`` by name."""
    env = os.environ.get("WORKBENCH_PEAK_FLOPS")
    if env:
        return float(env), "WORKBENCH_PEAK_FLOPS"
    for key, flops in PEAK_BF16:
        if key.lower() in device_name.lower():
            return flops, f"table ({key})"
    return None, f"{device_name!r} is not in PEAK_BF16; set WORKBENCH_PEAK_FLOPS (FLOP/s) for MFU"


def forward_flops(shape: dict, tokens: int, head_rows: int) -> float:
    """Model FLOPs of one forward pass over a ``tokens``-token row with the LM head on ``head_rows`` of them:
    2 per multiply-add of the decoder's projections and MLP for every token, causal attention (scores and
    their weighted sum, 2 x T^2 / 2 x hidden multiply-adds a layer), and the head (hidden x vocabulary a row)."""
    h, layers, inter = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_token = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)  # q, o; k, v; gate, up, down
    attention = layers * tokens * tokens * h  # QK^T and AV over the causal half
    return 2.0 * (tokens * per_token + attention + head_rows * h * shape["vocab_size"])


def work_flops(shape: dict, enc: list[Encoded], checkpoints: int) -> dict[str, float]:
    """Model FLOPs of scoring ``enc`` (the head on completion rows) and of its bare forwards (every row)."""
    return {"score": sum(forward_flops(shape, len(e.input_ids), len(e.completion_ids)) for e in enc) * checkpoints,
            "bare": sum(forward_flops(shape, len(e.input_ids), len(e.input_ids)) for e in enc) * checkpoints}


def with_mfu(entry: dict, shape: dict, enc: list[Encoded], device_peak: float | None) -> dict:
    """``entry`` with the MFU of its timed runs: scoring (the head on completion rows) and the bare forwards
    (the head on every row), every checkpoint."""
    for name, flops in work_flops(shape, enc, entry["checkpoints"]).items():
        seconds = entry.get(f"{name}_s")
        if seconds:
            entry[f"{name}_tflops"] = flops / seconds / 1e12
            entry[f"{name}_mfu"] = None if device_peak is None else flops / seconds / device_peak
    return entry


class Clock:
    def __init__(self, device: str):
        self.device = device

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def start(self) -> float:
        self.sync()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        return time.perf_counter()

    def stop(self, t0: float) -> tuple[float, float | None]:
        """(seconds, peak GiB above the memory allocated at ``start``; None on CPU)."""
        self.sync()
        seconds = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated() - self.base) / 2**30 if self.device == "cuda" else None
        return seconds, peak


def build_run(root: Path, shape: dict, adapters: int, device: str, dtype: str):
    """A random base model and ``adapters`` LoRA checkpoints (r=8, all linear layers) on disk, loaded as a series."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(ROOT / "sample_data" / "model")
    torch.manual_seed(0)
    cfg = Qwen2Config(**shape, max_position_embeddings=8192, tie_word_embeddings=False,
                      pad_token_id=tok.pad_token_id)
    with torch.device(device):  # random init on the device: seconds, not a minute, for 1B parameters
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    for k in range(1, adapters + 1):
        torch.manual_seed(k)
        peft = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
        peft.peft_config["default"].base_model_name_or_path = "gpu-long-cot"
        peft.save_pretrained(root / "run" / f"checkpoint-{k}")
        (root / "run" / f"checkpoint-{k}" / "trainer_state.json").write_text(json.dumps({"global_step": k}))
        model = peft.unload()
    del model
    run = sorted((root / "run").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    return load_series(root / "model", run, device=device, dtype=dtype, base_names=["gpu-long-cot"])


def trajectories(series, n: int, length: int, seed: int = 0) -> list[Encoded]:
    """``n`` random rows of ``length`` tokens: 64 prompt tokens, the rest completion, a "." every 40 tokens."""
    g = torch.Generator().manual_seed(seed)
    dot = series.tokenizer.convert_tokens_to_ids(".")
    out = []
    for i in range(n):
        ids = torch.randint(10, len(series.tokenizer), (length,), generator=g).tolist()
        ids = [dot if k % 40 == 39 else t for k, t in enumerate(ids)]
        out.append(Encoded(f"t{length}-{i}", ids, 64, length, DISEASES[0], [""] * length))
    return out


@torch.no_grad()
def bare(series, enc: list[Encoded], batch: int) -> None:
    """The batched forward passes scoring needs, with whole logits: per checkpoint, every batch."""
    pad = series.tokenizer.pad_token_id or 0
    for name in series.names:
        with series.activate(name) as m:
            for idx in scoring.length_batches(enc, batch):
                ids, mask = pad_right([enc[i] for i in idx], pad, series.device)
                m(input_ids=ids, attention_mask=mask).logits.float()


def run_score(series, enc, batch: int | None) -> None:
    for _ in score_batches(series, enc, ScoreConfig(top_k=5, batch_size=batch)):
        pass


def scoring_section(series, clock: Clock, lengths: list[int], rows: dict[int, int], fixed: int, shape: dict,
                    device_peak: float | None) -> list[dict]:
    out = []
    k = len(series.names)
    run_score(series, trajectories(series, 2, 128), 2)  # warm-up (kernels, allocator)
    bare(series, trajectories(series, 2, 128), 2)
    for length in lengths:
        enc = trajectories(series, rows[length], length)
        scored = sum(len(e.completion_ids) for e in enc) * k
        auto = plan_for_series(series, enc, 5).batch_size
        for label, batch in (("auto", None), ("fixed", fixed)):
            b = auto if batch is None else batch
            entry = {"tokens": length, "trajectories": len(enc), "checkpoints": k, "batch": label, "batch_size": b}
            try:
                t0 = clock.start()
                run_score(series, enc, batch)
                entry["score_s"], entry["peak_gib"] = clock.stop(t0)
                entry["tokens_per_s"] = scored / entry["score_s"]
                t0 = clock.start()
                bare(series, enc, b)
                entry["bare_s"], entry["bare_peak_gib"] = clock.stop(t0)
                entry["x_bare"] = entry["score_s"] / entry["bare_s"]
                scoring._checkpoint_inner, real = (lambda s, budget: False), scoring._checkpoint_inner
                try:
                    t0 = clock.start()
                    run_score(series, enc, batch)
                    entry["outer_s"], entry["outer_peak_gib"] = clock.stop(t0)
                finally:
                    scoring._checkpoint_inner = real
                entry["outer_x_bare"] = entry["outer_s"] / entry["bare_s"]
                with_mfu(entry, shape, enc, device_peak)
            except torch.OutOfMemoryError as e:
                entry["error"] = f"out of memory: {str(e)[:200]}"
            out.append(_rounded(entry))
            print(json.dumps(out[-1]), flush=True)
    return out


@torch.no_grad()
def probe_section(series, clock: Clock, lengths: list[int]) -> list[dict]:
    from core.models.forward import decoder

    out = []
    embed = decoder(series.model).embed_tokens
    counted: list[int] = []
    hook = embed.register_forward_hook(lambda m, a, o: counted.append(a[0].numel()))
    k = len(series.names)
    try:
        for length in lengths:
            e = trajectories(series, 1, length, seed=1)[0]
            ids = torch.tensor([e.input_ids], device=series.device)
            series.model(ids).logits.float()  # warm-up
            t0 = clock.start()
            series.model(ids).logits.float()
            plain, _ = clock.stop(t0)
            for mode in ("sentence", "every"):
                entry = {"tokens": length, "positions": mode, "labels": len(DISEASES), "plain_pass_s": plain}
                try:
                    counted.clear()
                    t0 = clock.start()
                    df = probe(series, [e], ProbeConfig(labels=list(DISEASES), positions=mode))
                    seconds, peak = clock.stop(t0)
                    entry.update(probe_s=seconds / k, x_plain=seconds / k / plain, peak_gib=peak,
                                 probe_positions=len(df) // k, tokens_encoded=sum(counted) / k,
                                 x_plain_tokens=sum(counted) / k / length)
                except torch.OutOfMemoryError as err:
                    entry["error"] = f"out of memory: {str(err)[:200]}"
                out.append(_rounded(entry))
                print(json.dumps(out[-1]), flush=True)
    finally:
        hook.remove()
    return out


@torch.no_grad()
def layer_section(series, clock: Clock, length: int, rows: int, shape: dict, device_peak: float | None) -> dict:
    """A 7B-shaped model of one decoder layer: scoring vs bare forwards, and one layer's time alone, so that
    the ratio at 28 layers is (28 x layer + head + statistics) / (28 x layer + head)."""
    enc = trajectories(series, rows, length)
    run_score(series, enc[:1], 1)
    bare(series, enc[:1], 1)
    t0 = clock.start()
    run_score(series, enc, rows)
    score_s, peak = clock.stop(t0)
    t0 = clock.start()
    bare(series, enc, rows)
    bare_s, _ = clock.stop(t0)
    pad = series.tokenizer.pad_token_id or 0
    ids, mask = pad_right(enc[:rows], pad, series.device)
    t0 = clock.start()
    for name in series.names:
        with series.activate(name) as m:
            hidden_states(m, ids, None, mask)
    layer_s, _ = clock.stop(t0)  # embeddings + one layer, every checkpoint
    k = len(series.names)
    extra = score_s - bare_s
    entry = {"tokens": length, "trajectories": rows, "checkpoints": k, "score_s": score_s, "bare_s": bare_s,
             "x_bare": score_s / bare_s, "peak_gib": peak, "one_layer_s": layer_s,
             "x_bare_at_28_layers": (bare_s + 27 * layer_s + extra) / (bare_s + 27 * layer_s),
             "tokens_per_s": sum(len(e.completion_ids) for e in enc) * k / score_s}
    with_mfu(entry, shape, enc, device_peak)
    at28 = work_flops(dict(shape, num_hidden_layers=28), enc, k)  # extrapolated to 28 layers, as x_bare is
    for name, seconds in (("score", score_s + 27 * layer_s), ("bare", bare_s + 27 * layer_s)):
        entry[f"{name}_mfu_at_28_layers"] = None if device_peak is None else at28[name] / seconds / device_peak
    print(json.dumps(_rounded(entry)), flush=True)
    return _rounded(entry)


def _rounded(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file for the results")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (checks the script, measures nothing)")
    ap.add_argument("--no-7b", action="store_true", help="skip the 7B-shaped one-layer model")
    args = ap.parse_args(argv)
    smoke = args.smoke
    device = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not smoke:
        print("gpu_long_cot: no CUDA device; use --smoke for a CPU check", file=sys.stderr)
        return 2
    dtype = "float32" if device == "cpu" else "bfloat16"
    clock = Clock(device)
    lengths = [128, 256] if smoke else [1024, 2048, 4096]
    rows = {128: 3, 256: 2} if smoke else {1024: 32, 2048: 16, 4096: 8}
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak, source = peak_flops(name)
    results: dict = {"device": name, "dtype": dtype, "smoke": smoke, "torch": torch.__version__,
                     "peak_flops": {"flops_per_s": peak, "from": source}}
    small = SHAPES["tiny" if smoke else "0.5b"]
    out = Path(args.out)

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))

    work = Path(tempfile.mkdtemp(prefix="gpu-long-cot-"))
    try:
        sections = [
            ("scoring", lambda s: scoring_section(s, clock, lengths, rows, 2 if smoke else 4, small, peak)),
            ("probe", lambda s: probe_section(s, clock, [256] if smoke else [2048, 4096])),
        ]
        t0 = time.perf_counter()
        series = build_run(work / "small", small, 4, device, dtype)
        results["model"] = {"shape": "tiny" if smoke else "Qwen2.5-0.5B", **small,
                            "checkpoints": len(series.names), "build_and_load_s": round(time.perf_counter() - t0, 1)}
        save()
        for name, fn in sections:
            try:
                results[name] = fn(series if name == "scoring" else _first_two(series))
            except Exception as e:  # noqa: BLE001 - any failure: reported, the other sections' figures kept
                results[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
                print(results[name]["trace"], file=sys.stderr)
            save()
        del series
        if not args.no_7b:
            if device == "cuda":
                torch.cuda.empty_cache()
            try:
                shape = SHAPES["tiny" if smoke else "7b-1layer"]
                big = build_run(work / "big", shape, 2, device, dtype)
                results["qwen7b_one_layer"] = layer_section(big, clock, 256 if smoke else 4096, 2 if smoke else 4,
                                                            shape, peak)
            except Exception as e:  # noqa: BLE001 - as above
                results["qwen7b_one_layer"] = {"error": f"{type(e).__name__}: {e}",
                                               "trace": traceback.format_exc()[-2000:]}
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"gpu_long_cot: wrote {out}")
    return 0


def _first_two(series):
    """The probe's series: the base and the first checkpoint (its time is reported per checkpoint)."""
    from dataclasses import replace

    return replace(series, checkpoints=series.checkpoints[:1])


if __name__ == "__main__":
    sys.exit(main())
