"""Peak memory as adapter checkpoints are added to a series (target: < 10% growth per added adapter).

Each measurement runs in a fresh process: a random-initialised Llama of about 60 M parameters (fp32),
K LoRA adapters (r=8, all linear layers), scoring 8 trajectories of 96 tokens under every checkpoint;
peak resident memory (ru_maxrss) minus the resident memory before the model was built.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.benchmark, pytest.mark.slow]

CHILD = r"""
import json, resource, sys, torch
from pathlib import Path
def rss():  # current resident set size, bytes
    return int(open("/proc/self/statm").read().split()[1]) * 4096
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from peft import LoraConfig, get_peft_model
from core.models.series import load_series
from core.drift.scoring import score, ScoreConfig
from core.io.trajectories import Encoded
root, k, vocab = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
before = rss()
series = load_series(root / "base", [root / f"checkpoint-{i}" for i in range(1, k + 1)])
torch.manual_seed(0)
enc = [Encoded(f"t{i}", torch.randint(5, vocab, (96,)).tolist(), 32, 96, None, ["x"] * 96) for i in range(8)]
score(series, enc, ScoreConfig(top_k=5, batch_size=8))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"k": k, "peak_mb": (peak - before) / 2**20}))
"""

def make_series(root: Path, shapes: dict, adapters: int) -> int:
    """A random-initialised Llama of ``shapes`` and ``adapters`` random LoRA checkpoints (r=8, all linear
    layers) under ``root``; returns the base's parameter count. Built in this process: only the measurements
    need fresh ones."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    vocab = shapes["vocab_size"]
    model = LlamaForCausalLM(LlamaConfig(num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                                         **shapes))
    model.save_pretrained(root / "base")
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    PreTrainedTokenizerFast(tokenizer_object=words, pad_token="w0", unk_token="w0").save_pretrained(root / "base")
    for i in range(1, adapters + 1):
        peft = get_peft_model(LlamaForCausalLM.from_pretrained(root / "base"),
                              LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
        peft.peft_config["default"].base_model_name_or_path = "base"
        peft.save_pretrained(root / f"checkpoint-{i}", save_embedding_layers=False)
    return sum(p.numel() for p in model.parameters())


FULL_SHAPES = dict(vocab_size=8000, hidden_size=512, intermediate_size=1408, num_hidden_layers=12)
TOY_SHAPES = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2)


def test_peak_memory_per_added_adapter(tmp_path, size):
    shapes, ks = size(FULL_SHAPES, TOY_SHAPES), size((1, 2, 4, 6), (1, 2))
    params = make_series(tmp_path, shapes, ks[-1])
    peaks = {}
    for k in ks:
        out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(k), str(shapes["vocab_size"])],
                             cwd=ROOT, capture_output=True,
                             text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        peaks[k] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    per_adapter = (peaks[ks[-1]] - peaks[1]) / (ks[-1] - 1) / peaks[1]
    print(f"\npeak memory of a series, {params / 1e6:.1f} M-parameter base (fp32), LoRA r=8 on all linear layers"
          f"{size.header()}:")
    for k, mb in peaks.items():
        print(f"  {k} adapter(s): {mb:7.1f} MB")
    print(f"  growth per added adapter: {100 * per_adapter:.2f}% of the one-adapter peak (target < 10%)")
