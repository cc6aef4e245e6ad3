"""The GPU benchmark script (tests/benchmarks/gpu_long_cot.py) runs end to end at tiny size on CPU, so that
the one call on a lent GPU does not fail on a typo; it imports nothing beyond torch, transformers, peft and
the repository (no trl, no datasets); its model FLOPs count what torch's FLOP counter counts, and its MFU
comes out of the smoke run with a peak given by ``WORKBENCH_PEAK_FLOPS``."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = "tests/benchmarks/gpu_long_cot.py"


@pytest.mark.slow
def test_gpu_long_cot_script_smoke(tmp_path):
    run = subprocess.run([sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path / "out.json")], cwd=ROOT,
                         capture_output=True, text=True, timeout=900, env=dict(os.environ, WORKBENCH_PEAK_FLOPS="1e10"))
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["smoke"] and out["model"]["checkpoints"] == 5
    assert len(out["scoring"]) == 4 and all("error" not in r and r["x_bare"] > 0 for r in out["scoring"])
    assert {r["positions"] for r in out["probe"]} == {"sentence", "every"}
    assert all(r["tokens_encoded"] > r["tokens"] for r in out["probe"])
    assert out["qwen7b_one_layer"]["x_bare"] > 0
    assert out["peak_flops"] == {"flops_per_s": 1e10, "from": "WORKBENCH_PEAK_FLOPS"}
    for r in [*out["scoring"], out["qwen7b_one_layer"]]:  # achieved FLOP/s over the given peak (4 decimals each)
        for name in ("score", "bare"):
            assert r[f"{name}_mfu"] > 0 and abs(r[f"{name}_mfu"] - r[f"{name}_tflops"] * 100) <= 0.01, (name, r)
    assert out["qwen7b_one_layer"]["score_mfu_at_28_layers"] > 0
    imported = subprocess.run([sys.executable, "-c", f"import runpy, sys; runpy.run_path({SCRIPT!r}); "
                               "print([m for m in sys.modules if m.split('.')[0] in ('trl', 'datasets')])"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert imported.stdout.strip().splitlines()[-1] == "[]", imported.stderr[-2000:]


def test_model_flops_are_the_matmuls_torch_counts():
    """``forward_flops`` without its causal-attention term is what torch's FLOP counter counts in the
    decoder's projections, MLP and LM head (mm / addmm) of a real forward pass; the peak comes by name."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.benchmarks.gpu_long_cot import SHAPES, forward_flops, peak_flops

    shape, tokens = SHAPES["tiny"], 100
    model = Qwen2ForCausalLM(Qwen2Config(**shape)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 1000, (1, tokens)))
    counted = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    attention = 2 * shape["num_hidden_layers"] * tokens * tokens * shape["hidden_size"]
    assert forward_flops(shape, tokens, tokens) - attention == counted["aten.mm"] + counted.get("aten.addmm", 0)
    assert forward_flops(shape, tokens, 10) < forward_flops(shape, tokens, tokens)  # the head on 10 rows only
    env = os.environ.pop("WORKBENCH_PEAK_FLOPS", None)
    try:
        assert peak_flops("NVIDIA H100 80GB HBM3") == (989e12, "table (H100)")
        assert peak_flops("NVIDIA H100 PCIe")[0] == 756e12 and peak_flops("NVIDIA H200")[0] == 989e12
        assert peak_flops("cpu")[0] is None and "WORKBENCH_PEAK_FLOPS" in peak_flops("cpu")[1]
    finally:
        if env is not None:
            os.environ["WORKBENCH_PEAK_FLOPS"] = env
