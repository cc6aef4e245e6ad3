"""The GPU benchmark script (tests/benchmarks/gpu_long_cot.py) runs end to end at tiny size on CPU, so that
the one call on a lent GPU does not fail on a typo; it imports nothing beyond torch, transformers, peft and
the repository (no trl, no datasets)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = "tests/benchmarks/gpu_long_cot.py"


@pytest.mark.slow
def test_gpu_long_cot_script_smoke(tmp_path):
    run = subprocess.run([sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path / "out.json")], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["smoke"] and out["model"]["checkpoints"] == 5
    assert len(out["scoring"]) == 4 and all("error" not in r and r["x_bare"] > 0 for r in out["scoring"])
    assert {r["positions"] for r in out["probe"]} == {"sentence", "every"}
    assert all(r["tokens_encoded"] > r["tokens"] for r in out["probe"])
    assert out["qwen7b_one_layer"]["x_bare"] > 0
    imported = subprocess.run([sys.executable, "-c", f"import runpy, sys; runpy.run_path({SCRIPT!r}); "
                               "print([m for m in sys.modules if m.split('.')[0] in ('trl', 'datasets')])"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert imported.stdout.strip().splitlines()[-1] == "[]", imported.stderr[-2000:]
