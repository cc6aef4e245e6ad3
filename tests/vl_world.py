"""A researcher's own vision-language run, made the way users make one, registered as a world: a tiny
Qwen2.5-VL base folder (``workbench.demo.tinyvl``), two LoRA checkpoints on the language model in a trainer's
``checkpoint-N`` layout (``trainer_state.json``, ``adapter_config.json`` naming the base by a hub id), X-ray-like
images in MIMIC-CXR's nested layout, trajectories in the authors' ms-swift record format (``messages`` with
``<image>``, ``images`` relative to the data file), and a world folder made by ``core.workspace.world.create_world``.

Tests of every part of the vision-language loop use it (pages, perturbation, curation, CPO):

    world = make_vl_world(tmp_path)          # -> the world folder (world.json), built in ~2-4 s
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

HUB_ID = "Qwen/Qwen2.5-VL-7B-Instruct"
LABELS = ["Pneumonia", "Cardiomegaly", "Edema", "Lung Opacity"]
QUESTION = "This is a patient's chest DR image <image>. Please help me determine the patient's disease."
COTS = {
    "Pneumonia": "There is an opacity in the left lower lobe with consolidation. The findings point to Pneumonia.",
    "Cardiomegaly": "The heart is enlarged. The findings point to Cardiomegaly.",
    "Edema": "There is interstitial edema with vascular congestion. The findings point to Edema.",
    "Lung Opacity": "There is an opacity in the right upper lobe. The findings point to Lung Opacity.",
}


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` synthetic X-ray-like JPEGs of varied sizes under ``folder/mimic-cxr-00K/images/``."""
    from workbench.demo.tinyvl import synthetic_xray

    out = []
    for i in range(n):
        sub = folder / f"mimic-cxr-00{i % 2 + 1}" / "images"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"dicom-{i:03d}.jpg"
        synthetic_xray(96 + 8 * (i % 4), 80 + 8 * (i % 3), seed + i).save(path)
        out.append(path)
    return out


def write_adapters(base: Path, run: Path, steps=(2, 4), hub_id: str = HUB_ID) -> Path:
    """LoRA checkpoints (random, non-zero) on the language model's linear layers, as a trainer saves them."""
    from peft import LoraConfig, get_peft_model

    from core.models.families.qwen_vl.inputs import load_vl_model
    from core.models.families.qwen_vl.adapters import lm_lora_targets

    for seed, step in enumerate(steps, start=1):
        torch.manual_seed(seed)
        model = load_vl_model(base)
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=lm_lora_targets(model), init_lora_weights=False)
        folder = run / f"checkpoint-{step}"
        get_peft_model(model, cfg).save_pretrained(folder)
        adapter_cfg = json.loads((folder / "adapter_config.json").read_text())
        adapter_cfg["base_model_name_or_path"] = hub_id  # as on a user's machine: the hub id, not a path
        (folder / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=1))
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return run


HISTORY = {"Pneumonia": "consolidation", "Cardiomegaly": "an enlarged heart", "Edema": "vascular congestion",
           "Lung Opacity": "opacity"}  # a prior report's finding, named in a held-out prompt (synonym twins)


def write_records(data_file: Path, images: list[Path], n: int, history: bool = False) -> Path:
    """``n`` ms-swift records, one image each (paths relative to the data file), labels cycling; with
    ``history`` each prompt starts with a prior report naming a finding (``HISTORY``)."""
    data_file.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        cot = f"<think> {COTS[label]} </think> The disease of this patient is {label}."
        image = images[i % len(images)]
        lines.append(json.dumps({"id": f"study-{i:03d}", "label": label, "images": [
            str(Path("..") / image.relative_to(data_file.parent.parent))],
            "messages": [{"role": "user", "content": (f"Prior report: {HISTORY[label]}. " if history else "") + QUESTION},
                         {"role": "assistant", "content": cot}]}))
    data_file.write_text("\n".join(lines) + "\n")
    return data_file


_BUILT: dict[tuple, Path] = {}  # one build per settings and test session; each call gets its own copy


def make_vl_world(root: Path, n_records: int = 8, n_images: int = 6, name: str = "Tiny X-ray world",
                  held_out: int = 0) -> Path:
    """A registered vision-language world under ``root`` (see the module docstring); returns its folder.
    ``held_out``: that many labelled held-out studies (``data/held_out.jsonl``, prompts naming a prior
    finding, so the concept graph's synonyms make perturbed twins), registered as the world's held-out set.
    Built once per settings in a session and copied for every call (the copy's world.json points at the copy),
    so that each test owns its files and the suite pays for one build."""
    import shutil
    import tempfile

    key = (n_records, n_images, name, held_out)
    if key not in _BUILT or not (_BUILT[key] / "world" / "world.json").is_file():
        _BUILT[key] = _build(Path(tempfile.mkdtemp(prefix="vl-world-")) / "run", n_records, n_images, name, held_out)
    root = Path(root)
    shutil.copytree(_BUILT[key], root, dirs_exist_ok=True)
    manifest = root / "world" / "world.json"
    manifest.write_text(manifest.read_text().replace(str(_BUILT[key]), str(root.resolve())))
    return root / "world"


def _build(root: Path, n_records: int, n_images: int, name: str, held_out: int) -> Path:
    from core.workspace.world import create_world
    from tests.conftest import SAMPLE_GRAPH
    from workbench.demo.tinyvl import write_tiny_vl

    root.mkdir(parents=True)
    root = root.resolve()
    base = write_tiny_vl(root / "Qwen2.5-VL-tiny", seed=0)
    images = write_images(root / "MIMIC-CXR", n_images)
    run = write_adapters(base, root / "output" / "v0-20261128")
    data = write_records(root / "data" / "test.jsonl", images, n_records)
    held = write_records(root / "data" / "held_out.jsonl", images, held_out, history=True) if held_out else None
    create_world(root / "world", name, base, [run], [data], SAMPLE_GRAPH, held_out=held,
                 description="a tiny VL run made in a test")
    return root


def make_records(images: dict) -> list[dict]:
    """Trajectories with one image, two images and none (a text-only row in the same batch)."""
    from core.io.images import ImageRef

    def refs(*names):
        return [ImageRef(images[n], f"test, {n}") for n in names]

    return [
        {"id": "one", "prompt": "This is a patient's chest DR image <image>. Please help me determine the disease.",
         "completion": "<think> There is an opacity in the left lower lobe. </think> The disease of this patient is "
                       "Pneumonia.", "label": "Pneumonia", "image_refs": refs("d1")},
        {"id": "two", "prompt": "Prior <image> and current <image>. Disease?",
         "completion": "<think> No effusion. Heart is enlarged. </think> The disease of this patient is Cardiomegaly.",
         "label": "Cardiomegaly", "image_refs": refs("d2", "d4")},
        {"id": "none", "prompt": "No image here. Disease?",
         "completion": "<think> Edema. </think> The disease of this patient is Edema.", "label": "Edema",
         "image_refs": []},
    ]
