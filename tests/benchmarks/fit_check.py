"""Device check of core.models.fit: the estimated bytes of a scoring batch against the measured CUDA peak.

    python tests/benchmarks/fit_check.py     # on a GPU: a Qwen2.5-7B-wide random model (4 layers), bf16

Prints, per (tokens, batch), the measured peak above the weights and the estimate (row x batch + chunks), and
the batch size ``core.models.fit`` picks for the free memory left.
"""

import json
import time

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from core.drift.scoring import ScoreConfig, score_batches
from core.io.trajectories import Encoded
from core.models import fit
from core.models.series import ModelSeries


def main() -> None:
    cfg = Qwen2Config(hidden_size=3584, vocab_size=152064, num_hidden_layers=4, num_attention_heads=28,
                      num_key_value_heads=4, intermediate_size=18944, tie_word_embeddings=False)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    tok = AutoTokenizer.from_pretrained("sample_data/model")
    series = ModelSeries(base_dir=__import__("pathlib").Path("sample_data/model"), checkpoints=[], model=model,
                         tokenizer=tok, device="cuda", dtype=torch.bfloat16)
    shape = fit.ModelShape.of_config(model.config)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 150000, (64,), generator=g).tolist()  # a shared prompt prefix: the KV path
    rows = []
    for tokens in (1024, 4096):
        for batch in (1, 4):
            enc = [Encoded(f"t{i}", prompt + torch.randint(0, 150000, (tokens - 64,), generator=g).tolist(), 64,
                           tokens, None, [""] * tokens) for i in range(batch)]
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            for _ in score_batches(series, enc, ScoreConfig(top_k=5, batch_size=batch)):
                pass
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            need = fit.Need(shape, tokens, 2, 1, "cuda", 5, weights_loaded=True)
            est = sum(need.row_bytes().values()) * batch + sum(need.fixed_bytes().values())
            rows.append({"tokens": tokens, "batch": batch, "peak_gib": round(peak / 2**30, 3),
                         "estimate_gib": round(est / 2**30, 3), "ratio": round(est / peak, 2),
                         "s": round(time.perf_counter() - t0, 2)})
            print(json.dumps(rows[-1]), flush=True)
    free = fit.free_bytes("cuda")
    for tokens in (1024, 4096):
        full = fit.Need(fit.ModelShape(**{**shape.__dict__, "layers": 28}), tokens, 2, 8, "cuda", 5)
        plan = fit.plan_batch(full, free + model.num_parameters() * 2, fit.host_free_bytes())
        print(json.dumps({"qwen7b_28_layers_tokens": tokens, "free_gib": round((free + model.num_parameters() * 2) / 2**30, 1),
                          "auto_batch": plan.batch_size, "row_gib": round(plan.row_bytes / 2**30, 3)}))


if __name__ == "__main__":
    main()
