"""Rebuild ``sample_data/`` from scratch: data, concept graph, tokenizer, SFT model, RFT checkpoints, table.

    python -m workbench.demo.build --out sample_data          # or: workbench build-sample

Seeded and deterministic on a given machine (fixed thread count, deterministic torch kernels). The full
build takes about 5 minutes on 2 CPU cores; ``--quick`` makes a miniature world for tests in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.graph import concepts
from core.io.cache import swap_in_folder
from workbench.demo import evaluate, generator, rft, text_world, tinymodel
from workbench.demo.graph import build_graph

WORLD_FILE = "world.json"
BASE_MODEL_NAME = "cxr-demo-tiny-llama"


@dataclass
class BuildConfig:
    seed: int = 0
    n_sft: int = 8000
    n_test: int = 700
    sft_epochs: int = 3
    sft_batch_size: int = 64
    sft_lr: float = 3e-3
    rft: rft.RFTConfig = field(default_factory=lambda: rft.RFTConfig(lr=7e-4))
    lora_r: int = 8
    lora_alpha: int = 32
    threads: int = 2
    analysis_limit: int = 200  # trajectories of the test set in the shipped drift analysis (analysis/)

    @classmethod
    def quick(cls) -> "BuildConfig":
        """A miniature world (seconds to build) with the same files and layout, for tests."""
        return cls(n_sft=400, n_test=42, sft_epochs=1, rft=rft.RFTConfig(steps=4, prompts_per_step=4, save_every=2),
                   analysis_limit=6)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def make_data(cfg: BuildConfig) -> dict[str, list[dict]]:
    rng = random.Random(cfg.seed)
    sft = generator.stationary(rng, cfg.n_sft, "sft", generator.sft_weights())
    test = generator.stationary(rng, cfg.n_test, "test")
    perturbed = [p for p in (generator.perturb(r, rng) for r in test) if p is not None]
    return {"sft": sft, "test": test, "test_perturbed": perturbed}


def build(out: Path, cfg: BuildConfig, log: Callable[[str], None] = print) -> dict:
    """Build the world into ``out`` (written to a temporary sibling, then swapped in) and return its manifest."""
    from peft import LoraConfig, get_peft_model  # heavy; only the build needs it

    started = time.time()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    data = make_data(cfg)
    for name, records in data.items():
        _write_jsonl(tmp / "data" / f"{name}.jsonl", records)
    concepts.save_graph(build_graph(), tmp / "concept_graph.json")
    log(f"data: {', '.join(f'{k} {len(v)}' for k, v in data.items())}")

    tok = tinymodel.train_tokenizer(r["prompt"] + " " + r["completion"] for r in data["sft"])
    model = tinymodel.make_model(len(tok), tok, cfg.seed)
    log(f"tokenizer: {len(tok)} tokens; model: {sum(p.numel() for p in model.parameters()):,} parameters")
    tinymodel.sft(model, tok, data["sft"], epochs=cfg.sft_epochs, batch_size=cfg.sft_batch_size, lr=cfg.sft_lr,
                  seed=cfg.seed, progress=_every(50, lambda s, n, loss: log(f"sft step {s}/{n} loss {loss:.4f}")))
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")

    rows = [{"step": 0, "checkpoint": "base (SFT)", **_evaluate(model, tok, data)}]
    log(_fmt_row(rows[-1]))
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", lora_dropout=0.0,
                      task_type="CAUSAL_LM")
    policy = get_peft_model(model, lora)
    policy.peft_config["default"].base_model_name_or_path = BASE_MODEL_NAME  # not the build's temp path

    def on_checkpoint(step: int, path: Path) -> dict:
        rows.append({"step": step, "checkpoint": path.name, **_evaluate(policy, tok, data)})
        log(_fmt_row(rows[-1]))
        return {k: v for k, v in rows[-1].items() if k not in ("step", "checkpoint")}

    rft.run(policy, tok, tmp / "rft", cfg.rft, on_checkpoint=on_checkpoint,
            progress=_every(20, lambda s, n, logs: log(f"rft step {s}/{n} reward {logs['reward']:.3f} "
                                                        f"shift {logs['shift_share']:.2f}")))
    manifest = _manifest(cfg, data, rows, time.time() - started)
    (tmp / "metrics.json").write_text(json.dumps(rows, indent=1) + "\n")
    (tmp / WORLD_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    (tmp / "README.md").write_text(readme(manifest, rows))
    _analyse(tmp, cfg, log)
    from workbench.demo.examples import write_examples

    write_examples(tmp)  # examples/: small CCF, TRL and ms-swift files for Curation's Import tab
    keep_nested_worlds(out, tmp)
    swap_in_folder(tmp, out)
    log(f"built {out} in {manifest['build_seconds']:.0f} s")
    return manifest


def keep_nested_worlds(out: Path, tmp: Path) -> None:
    """Carry the worlds that live inside the old ``out`` (``multimodal/``, built by ``workbench.demo.vlworld``) and
    the README's section about them over into the new build: rebuilding the text world never deletes them."""
    if not out.is_dir():
        return
    for sub in sorted(out.iterdir()):
        if sub.is_dir() and (sub / WORLD_FILE).is_file() and not (tmp / sub.name).exists():
            shutil.copytree(sub, tmp / sub.name)
    old = out / "README.md"
    if old.is_file() and NESTED_MARK in old.read_text(encoding="utf-8"):
        section = old.read_text(encoding="utf-8").split(NESTED_MARK, 1)[1]
        readme_path = tmp / "README.md"
        readme_path.write_text(readme_path.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + NESTED_MARK + section,
                               encoding="utf-8")


# Where sample_data/README.md's section on the multimodal world starts (written by workbench.demo.vlworld).
NESTED_MARK = "<!-- multimodal world: written by workbench.demo.vlworld -->"


def _analyse(world: Path, cfg: BuildConfig, log: Callable[[str], None]) -> None:
    """Score the first test trajectories so the drift explorer opens at once on the new world."""
    from core.drift.analysis import AnalysisConfig, run_analysis

    acfg = AnalysisConfig.from_world(world, limit=cfg.analysis_limit, device="cpu")
    last = [0.0]

    def progress(done: float, total: float, message: str) -> None:
        if done / total >= last[0] + 0.2:
            last[0] = done / total
            log(f"analysis {done / total:.0%}: {message}")

    run_analysis(acfg, progress=progress).save(world / "analysis", portable=True)
    log(f"analysis: {cfg.analysis_limit} test trajectories scored into analysis/")


def _evaluate(model, tok, data: dict[str, list[dict]]) -> dict[str, float]:
    preds = evaluate.answer(model, tok, [r["prompt"] for r in data["test"]])
    preds_p = evaluate.answer(model, tok, [r["prompt"] for r in data["test_perturbed"]])
    return {k: round(v, 4) for k, v in evaluate.drift_table_row(data["test"], preds, data["test_perturbed"], preds_p).items()}


def _every(n: int, fn: Callable) -> Callable:
    return lambda step, total, *a: fn(step, total, *a) if step % n == 0 or step == total else None


def _fmt_row(row: dict) -> str:
    return (f"[{row['checkpoint']}] acc {row['accuracy']:.3f} perturbed {row['perturbed_accuracy']:.3f} "
            f"flip {row['flip_rate']:.3f} opacity->LO {row['opacity_to_lung_opacity']:.3f} "
            f"rare {row['rare_class_accuracy']:.3f}")


def _manifest(cfg: BuildConfig, data: dict, rows: list[dict], seconds: float) -> dict:
    return {
        "name": "CheXpert demo world", "format_version": 1,
        "description": "Synthetic chest X-ray studies, a tiny Llama SFT model and its drifting RFT checkpoints.",
        "base_model": "model", "base_model_name": BASE_MODEL_NAME, "checkpoints": "rft", "concept_graph": "concept_graph.json",
        "datasets": {name: {"path": f"data/{name}.jsonl", "records": len(recs)} for name, recs in data.items()},
        "default_dataset": "test", "metrics": "metrics.json",
        "evaluation": {"held_out": "test", "perturbed": "test_perturbed"}, "plugin": "cxr-demo",
        "build_config": asdict(cfg), "build_seconds": round(seconds, 1),
        "torch_version": torch.__version__,
    }


def readme(manifest: dict, rows: list[dict]) -> str:
    head = "| checkpoint | step | accuracy | perturbed accuracy | flip rate | opacity -> Lung Opacity | rare-class accuracy |\n"
    head += "|---|---:|---:|---:|---:|---:|---:|\n"
    body = "".join(
        f"| {r['checkpoint']} | {r['step']} | {r['accuracy']:.3f} | {r['perturbed_accuracy']:.3f} | "
        f"{r['flip_rate']:.3f} | {r['opacity_to_lung_opacity']:.3f} | {r['rare_class_accuracy']:.3f} |\n"
        for r in rows)
    ds = manifest["datasets"]
    return README_TEMPLATE.format(table=head + body, seconds=manifest["build_seconds"],
                                  n_sft=ds["sft"]["records"], n_test=ds["test"]["records"],
                                  n_pert=ds["test_perturbed"]["records"], torch=manifest["torch_version"])


README_TEMPLATE = """# The embedded demo world

Built by `workbench build-sample` (seeded; {seconds:.0f} s on this machine, torch {torch}). Everything
here is synthetic and made by the code in `workbench/demo/`; nothing is downloaded.

| path | what |
|---|---|
| `concept_graph.json` | 14 CheXpert labels and their radiographic findings: `supports` / `excludes` edges, synonyms (node-link JSON) |
| `data/sft.jsonl` | {n_sft} studies for supervised fine-tuning (Pneumothorax and Fracture deliberately rare) |
| `data/test.jsonl` | {n_test} held-out studies from the stationary distribution (uniform over the 14 labels) |
| `data/test_perturbed.jsonl` | {n_pert} of the same studies with one finding replaced by a near-synonym (`source_id` pairs them) |
| `model/` | tokenizer (BPE trained on this text) and a tiny `LlamaForCausalLM`, SFT-trained |
| `rft/checkpoint-N/` | LoRA adapters from on-policy RFT with a reward for the correct diagnosis, plus `trainer_state.json` |
| `metrics.json`, `world.json` | the table below, and the manifest the workbench reads |

Each record: `prompt` (the report listing the findings), `completion` (`<think> ... </think> The disease
of this patient is X.`), `label`, `findings` (canonical) and `surfaces` (as written).

## The RFT stream and the drift it leaves

The RFT stream is non-stationary: at step t a share growing linearly from 0 to 0.7 of its studies follow
a shifted annotation convention in which any study that shows "opacity" is labelled *Lung Opacity*. The
reward is correctness under the stream's labels, so RFT learns the shortcut "opacity -> Lung Opacity"
(detrimental on the stationary test set) while it also learns the classes that SFT barely saw
(beneficial). Measured by greedy decoding of the full chain of thought on the held-out sets:

{table}
- **accuracy**: stationary held-out set; **perturbed accuracy**: the same studies with one finding
  swapped for a near-synonym (preferring forms that say "opacity", e.g. consolidation -> airspace opacity).
- **flip rate**: share of studies whose answer changes under that swap.
- **opacity -> Lung Opacity**: share of held-out studies that show "opacity" but are *not* Lung Opacity
  that the model answers Lung Opacity (the shortcut).
- **rare-class accuracy**: accuracy on Pneumothorax and Fracture, rare in SFT, common in the stream.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workbench build-sample", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=text_world())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a miniature world for tests")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only, always
    cfg = BuildConfig.quick() if args.quick else BuildConfig()
    cfg.seed = cfg.rft.seed = args.seed
    build(args.out, cfg, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
