"""Build the multimodal sample world ``sample_data/multimodal/``: films, records, a tiny Qwen2.5-VL, RFT checkpoints.

    workbench build-sample --world multimodal        # or: python -m workbench.demo.vlworld --out sample_data/multimodal

Seeded and deterministic on a given machine (fixed thread count, deterministic kernels). Steps: draw the
studies (``vlspec``) and their films (``xray``); train a byte-level BPE tokenizer with Qwen's special tokens;
initialise a small ``Qwen2_5_VLForConditionalGeneration`` at random (``tinyvl``) and SFT all of it, vision tower
included, to read the film and write the CoT (``vlmodel``); then RFT with LoRA on the language model only, on
the non-stationary stream, through the text world's RFT step (``rft``), saving ``checkpoint-N`` with
``trainer_state.json``; then measure the drift table from the written files (``vleval``), score the first
held-out studies into ``analysis/`` (so the drift explorer opens at once) and write the manifest and README. Only the held-out films and a small SFT sample are written (the full SFT set is
redrawn from the seed), so the world stays small. ``--quick`` makes a miniature one for tests in seconds.
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
from workbench.demo import multimodal_world, rft, tinyvl, vleval, vlmodel, vlspec
from workbench.demo.graph import build_graph

DEFAULT_OUT = multimodal_world()


@dataclass
class VLBuildConfig:
    seed: int = 0
    n_sft: int = 4000
    n_test: int = 280  # 20 per label
    n_sft_shipped: int = 140  # SFT studies written with their films (the rest are redrawn from the seed)
    n_vision: int = 3000  # films (every label alike) for the vision tower's pretraining on findings
    vision_epochs: int = 4
    sft_epochs: int = 3
    sft_batch_size: int = 16
    sft_lr: float = 3e-3
    sft_aux_weight: float = 3.0  # the vision tower's findings loss during SFT (vlmodel.FindingsHead)
    rft: rft.RFTConfig = field(default_factory=lambda: rft.RFTConfig(
        steps=150, prompts_per_step=12, group=4, lr=1e-3, max_new_tokens=48, save_every=30))
    lora_r: int = 8
    lora_alpha: int = 32
    hidden: int = 96
    layers: int = 2
    vision_hidden: int = 48
    vision_depth: int = 2
    vocab_size: int = 640
    threads: int = 2
    analysis_limit: int = 140  # held-out studies (10 per label) in the shipped drift analysis (analysis/)

    @classmethod
    def quick(cls) -> "VLBuildConfig":
        """A miniature world (seconds) with the same files and layout, for tests."""
        return cls(n_sft=48, n_test=14, n_sft_shipped=6, n_vision=32, vision_epochs=1, sft_epochs=1, sft_batch_size=16, hidden=32,
                   vision_hidden=16, vocab_size=400, analysis_limit=4,
                   rft=rft.RFTConfig(steps=4, prompts_per_step=3, group=2, max_new_tokens=8, save_every=2))


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def make_data(cfg: VLBuildConfig) -> dict[str, list[dict]]:
    rng = random.Random(cfg.seed)
    sft = vlspec.studies(rng, cfg.n_sft, "sft", cfg.seed, vlspec.SFT_WEIGHTS)
    test = vlspec.studies(rng, cfg.n_test, "test", cfg.seed, balanced=True)
    vision = vlspec.studies(rng, cfg.n_vision, "vision", cfg.seed, balanced=True)  # films only, every label alike
    return {"sft": sft, "test": test, "vision": vision}


def write_films(data_dir: Path, records: list[dict]) -> list[dict]:
    """Write each record's film to ``data_dir/images/<id>.jpg``; the records with ``images`` (relative)."""
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for r in records:
        (data_dir / "images" / f"{r['id']}.jpg").write_bytes(vlspec.draw(r))
        out.append({**r, "images": [f"images/{r['id']}.jpg"]})
    return out


def build(out: Path, cfg: VLBuildConfig, log: Callable[[str], None] = print) -> dict:
    """Build the world into ``out`` (written to a temporary sibling, then swapped in); returns its manifest."""
    from peft import LoraConfig, get_peft_model

    from core.models.families.qwen_vl.adapters import lm_lora_targets
    from core.models.families.qwen_vl.inputs import load_processor

    started = time.time()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    out = Path(out).resolve()
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    data = make_data(cfg)
    shipped = {"test": write_films(tmp / "data", data["test"]),
               "sft": write_films(tmp / "data", data["sft"][: cfg.n_sft_shipped])}
    for name, records in shipped.items():
        _write_jsonl(tmp / "data" / f"{name}.jsonl", records)
    concepts.save_graph(build_graph(), tmp / "concept_graph.json")
    log(f"data: {cfg.n_sft} SFT studies ({cfg.n_sft_shipped} written), {cfg.n_test} held-out studies with films")

    # the question is asked of every film: weighted as often as the CoTs, so that BPE merges it into few tokens
    chat = "user\n" + vlspec.QUESTION + "\nassistant\n"
    texts = [chat] * len(data["sft"]) + [vlspec.completion(r) for r in data["sft"]]
    tok = tinyvl.make_tokenizer(texts, cfg.vocab_size)
    model = tinyvl.make_model(tok, cfg.seed, hidden=cfg.hidden, layers=cfg.layers, vision_hidden=cfg.vision_hidden,
                              vision_depth=cfg.vision_depth)
    tinyvl.write_tiny_vl(tmp / "model", model=model, tokenizer=tok)  # processor config first: SFT uses it
    proc = load_processor(tmp / "model")
    log(f"tokenizer: {len(tok)} tokens; model: {sum(p.numel() for p in model.parameters()):,} parameters")

    head = vlmodel.FindingsHead(model, len(vlspec.FINDING_ORDER))
    t0 = time.time()
    films = [vlspec.decode(vlspec.draw(r)) for r in data["vision"]]
    log(f"films: {len(films)} drawn in {time.time() - t0:.0f} s")
    vlmodel.pretrain_vision(model, proc, head, films, vlspec.finding_targets(data["vision"]), epochs=cfg.vision_epochs,
                            batch_size=32, lr=cfg.sft_lr, seed=cfg.seed,
                            progress=_every(100, lambda s, n, loss: log(f"vision step {s}/{n} findings loss {loss:.4f} "
                                                                          f"({time.time() - started:.0f} s)")))
    del films
    images = [vlspec.decode(vlspec.draw(r)) for r in data["sft"]]
    vlmodel.sft(model, proc, images, [vlspec.completion(r) for r in data["sft"]], epochs=cfg.sft_epochs,
                batch_size=cfg.sft_batch_size, lr=cfg.sft_lr, seed=cfg.seed, head=head,
                targets=vlspec.finding_targets(data["sft"]), aux_weight=cfg.sft_aux_weight,
                progress=_every(100, lambda s, n, loss: log(f"sft step {s}/{n} loss {loss:.4f} "
                                                             f"({time.time() - started:.0f} s)")))
    del images
    head.hook.remove()  # the head was for training only: the saved model is the plain Qwen2.5-VL
    tinyvl.write_tiny_vl(tmp / "model", model=model, tokenizer=tok)

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=lm_lora_targets(model),
                      lora_dropout=0.0)
    policy = get_peft_model(model, lora)
    policy.peft_config["default"].base_model_name_or_path = vlspec.BASE_MODEL_NAME  # not the build's temp path
    rft.run(policy, tok, tmp / "rft", cfg.rft, stream=vlspec.stream_batch(cfg.seed), prompts=vlmodel.VLPrompts(proc),
            progress=_every(10, lambda s, n, logs: log(f"rft step {s}/{n} reward {logs['reward']:.3f} shift "
                                                        f"{logs['shift_share']:.2f} ({time.time() - started:.0f} s)")))
    del policy, model
    rows = vleval.measure(tmp, threads=cfg.threads, log=log)
    (tmp / "metrics.json").write_text(json.dumps(rows, indent=1) + "\n")
    (tmp / "world.json").write_text(json.dumps(_manifest(cfg, shipped, 0.0), indent=1) + "\n")  # analyse reads it
    analyse(tmp, cfg.analysis_limit, log)
    manifest = _manifest(cfg, shipped, time.time() - started)
    (tmp / "world.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (tmp / "README.md").write_text(vleval.readme(manifest, rows))
    swap_in_folder(tmp, out)
    update_parent_readme(out, vleval.readme_section(manifest, rows, out.name))
    log(f"built {out} in {manifest['build_seconds']:.0f} s")
    return manifest


def analyse(world: Path, limit: int, log: Callable[[str], None] = print) -> float:
    """Score and probe the first ``limit`` held-out studies with their films under every checkpoint into
    ``world/analysis`` (portable: paths relative to it), so the drift explorer opens at once on the world with
    each study's film beside its CoT. The probe positions are the text world's (every token, prompt included).
    Returns the seconds it took."""
    from core.drift.analysis import AnalysisConfig, run_analysis

    t0 = time.time()
    acfg = AnalysisConfig.from_world(world, limit=limit, device="cpu")
    run_analysis(acfg).save(world / "analysis", portable=True)
    log(f"analysis: {limit} held-out studies scored into analysis/ in {time.time() - t0:.0f} s")
    return time.time() - t0


def update_parent_readme(out: Path, section: str) -> None:
    """When the world sits inside the text world (``sample_data/multimodal``), write its section of
    ``sample_data/README.md`` (from ``NESTED_MARK`` to the end; the text world's build keeps it)."""
    from workbench.demo.build import NESTED_MARK

    readme = out.parent / "README.md"
    if not (out.parent / "world.json").is_file() or not readme.is_file():
        return
    head = readme.read_text(encoding="utf-8").split(NESTED_MARK, 1)[0].rstrip("\n")
    readme.write_text(f"{head}\n\n{NESTED_MARK}\n{section}", encoding="utf-8")


def _every(n: int, fn: Callable) -> Callable:
    return lambda step, total, *a: fn(step, total, *a) if step % n == 0 or step == total else None


def _manifest(cfg: VLBuildConfig, shipped: dict, seconds: float) -> dict:
    return {
        "name": "CheXpert multimodal demo world", "format_version": 1,
        "description": "Synthetic chest films, a tiny Qwen2.5-VL SFT-trained to read them and its drifting RFT "
                       "checkpoints (LoRA on the language model).",
        "base_model": "model", "base_model_name": vlspec.BASE_MODEL_NAME, "checkpoints": "rft",
        "concept_graph": "concept_graph.json", "modality": "image-text", "analysis": "analysis",
        "datasets": {name: {"path": f"data/{name}.jsonl", "records": len(recs)} for name, recs in shipped.items()},
        "default_dataset": "test", "metrics": "metrics.json", "evaluation": {"held_out": "test"},
        "plugin": "cxr-demo-multimodal",
        "build_config": asdict(cfg), "build_seconds": round(seconds, 1), "torch_version": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workbench build-sample --world multimodal", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a miniature world for tests")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = VLBuildConfig.quick() if args.quick else VLBuildConfig()
    cfg.seed = cfg.rft.seed = args.seed
    build(args.out, cfg, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
