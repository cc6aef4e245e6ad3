"""The multimodal world's drift table, measured from its files: per checkpoint, what greedy decoding answers
and what the answer probe believes, on the held-out films.

    rows = measure(Path("sample_data/multimodal"))     # one dict per checkpoint (the base first)

The series is loaded as the workbench loads a user's run (``core.models.series.load_series``), the held-out
records through ``core.io.vl_records`` and the Qwen-VL family's ``encode_vl``; the probe is the family's
``tree_label_logprobs`` and the gold CoT's log-probs its ``token_logprobs`` (``core.models.families.qwen_vl``). Figures (see ``FIGURES``):

- accuracy, opacity -> Lung Opacity, rare-class accuracy, malformed: from the greedy answers;
- reading accuracy: the greedy CoT names exactly the findings the film shows (the visual reading);
- image belief in Lung Opacity: P(Lung Opacity | film, question), probed before any CoT, averaged over the
  held-out films that show an opacity but are not Lung Opacity (the shortcut, read off the image alone);
- belief carried by the opacity: the same belief minus the belief on the film's twin without the opacity
  (same patient, other findings in place): how much of it follows that one region of the image;
- belief after the gold CoT: the same studies, P(Lung Opacity) probed after their gold CoT (which argues for
  the true disease): the shortcut overriding the written reasoning;
- gold CoT log-prob: mean per-token log-prob of the gold CoTs (how well the model still writes them).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from workbench.demo import spec, vlmodel, vlspec
from workbench.demo.evaluate import drift_table_row
from workbench.demo.generator import parse_answer

FIGURES: dict[str, str] = {
    "accuracy": "accuracy",
    "opacity_to_lung_opacity": "opacity -> Lung Opacity",
    "rare_class_accuracy": "rare-class accuracy",
    "reading_accuracy": "reading accuracy",
    "image_belief_lung_opacity": "image belief in Lung Opacity",
    "opacity_effect": "belief carried by the opacity",
    "cot_belief_lung_opacity": "belief after the gold CoT",
    "gold_cot_logprob": "gold CoT log-prob / token",
}


def findings_named(text: str) -> list[str]:
    """The findings a generated CoT names ("X suggests ..."), in reading order."""
    return [f for f in vlspec.FINDING_ORDER if f"{f} suggests" in text]


def carriers(records: list[dict]) -> list[int]:
    """Indices of the held-out studies that show an opacity but are not Lung Opacity (the shortcut's targets)."""
    return [i for i, r in enumerate(records)
            if spec.SHORTCUT_FINDING in r["findings"] and r["label"] != spec.SHORTCUT_LABEL]


def greedy_figures(texts: list[str], records: list[dict]) -> dict[str, float]:
    preds = [parse_answer(t) for t in texts]
    row = drift_table_row(records, preds, [], [])
    reading = [findings_named(t) == r["findings"] for t, r in zip(texts, records, strict=True)]
    return {"accuracy": row["accuracy"], "opacity_to_lung_opacity": row["opacity_to_lung_opacity"],
            "rare_class_accuracy": row["rare_class_accuracy"], "malformed": row["malformed"],
            "reading_accuracy": sum(reading) / max(1, len(reading))}


def probe_figures(model, proc, encs: list, idx: list[int], batch_size: int = 16) -> dict[str, float]:
    """Mean P(Lung Opacity) (normalised over the 14 labels) before the CoT and after the gold CoT, over ``idx``."""
    from core.drift.probe import ProbeConfig, probe_positions, tokens_of
    from core.models.families.qwen_vl.forward import tree_label_logprobs

    cfg = ProbeConfig(positions="end")
    first = proc.tokenizer(cfg.template, add_special_tokens=False)["input_ids"][0]
    labels = list(spec.DISEASES)
    lo = labels.index(spec.SHORTCUT_LABEL)
    beliefs = []
    for i in range(0, len(idx), batch_size):
        group = [encs[k] for k in idx[i: i + batch_size]]
        positions = [[e.start, probe_positions(e, "end", first, set())[-1]] for e in group]
        for lp in tree_label_logprobs(model, proc, group, positions, tokens_of(proc.tokenizer, cfg, labels)):  # (2, K)
            p = np.exp(lp - lp.max(1, keepdims=True))
            beliefs.append((p / p.sum(1, keepdims=True))[:, lo])
    b = np.array(beliefs).reshape(-1, 2)
    return {"image_belief_lung_opacity": float(b[:, 0].mean()) if len(b) else 0.0,
            "cot_belief_lung_opacity": float(b[:, 1].mean()) if len(b) else 0.0}


def image_beliefs(model, proc, encs: list, batch_size: int = 16) -> np.ndarray:
    """P(Lung Opacity | film, question) of each trajectory, probed before any CoT (normalised over the labels)."""
    from core.drift.probe import ProbeConfig, tokens_of
    from core.models.families.qwen_vl.forward import tree_label_logprobs

    labels = list(spec.DISEASES)
    tk = tokens_of(proc.tokenizer, ProbeConfig(positions="end"), labels)
    out = []
    for i in range(0, len(encs), batch_size):
        group = encs[i: i + batch_size]
        for lp in tree_label_logprobs(model, proc, group, [[e.start] for e in group], tk):
            p = np.exp(lp[0] - lp[0].max())
            out.append(p[labels.index(spec.SHORTCUT_LABEL)] / p.sum())
    return np.array(out)


def twin_encodings(proc, raw: list[dict], idx: list[int], folder: Path) -> list:
    """The opacity films' twins: the same film without the opacity (``xray.draw_study`` keeps the patient and
    the other findings in place), written to ``folder`` and encoded with the gold CoT."""
    from core.io.images import ImageRef
    from core.models.families.qwen_vl.inputs import encode_vl

    recs = []
    for k in idx:
        r = raw[k]
        path = folder / f"{r['id']}-no-opacity.jpg"
        path.write_bytes(vlspec.draw({**r, "findings": [f for f in r["findings"] if f != spec.SHORTCUT_FINDING]}))
        recs.append({"id": r["id"], "prompt": vlspec.QUESTION, "completion": vlspec.completion(r),
                     "label": r["label"], "image_refs": [ImageRef(path, f"{r['id']} without opacity")]})
    return encode_vl(proc, recs)


def gold_logprob(model, proc, encs: list, batch_size: int = 32) -> float:
    from core.models.families.qwen_vl.forward import token_logprobs
    from core.models.families.qwen_vl.inputs import collate

    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encs), batch_size):
            for lp in token_logprobs(model, collate(encs[i: i + batch_size], proc, model)):
                total, n = total + float(lp.sum()), n + len(lp)
    return total / max(1, n)


def measure(world: Path, limit: int | None = None, checkpoints: list[str] | None = None, threads: int = 2,
            log: Callable[[str], None] = print) -> list[dict]:
    """The drift table of the world in ``world`` (its base and every checkpoint, or those named), measured
    on its first ``limit`` held-out studies (all by default)."""
    from core.io.images import load_image
    from core.io.vl_records import read_vl_records
    from core.models.families.qwen_vl.inputs import encode_vl
    from core.models.series import load_series

    torch.set_num_threads(threads)
    world = Path(world)
    data = world / "data" / "test.jsonl"
    raw = [json.loads(line) for line in data.read_text().splitlines()][:limit]
    recs = read_vl_records(data)[: len(raw)]
    vs = load_series(world / "model", world / "rft", device="cpu", dtype="float32", base_names=[vlspec.BASE_MODEL_NAME])
    encs = encode_vl(vs.processor, recs)
    images = [load_image(r["image_refs"][0]) for r in recs]
    idx = carriers(raw)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        twins = twin_encodings(vs.processor, raw, idx, Path(tmp))
        for name in checkpoints or vs.names:
            with vs.activate(name) as model:
                texts = vlmodel.greedy(model, vs.processor, images)
                effect = image_beliefs(model, vs.processor, [encs[k] for k in idx]) - \
                    image_beliefs(model, vs.processor, twins)
                row = {"step": vs.steps[name], "checkpoint": "base (SFT)" if name == "base" else name,
                       **greedy_figures(texts, raw), **probe_figures(model, vs.processor, encs, idx),
                       "opacity_effect": float(effect.mean()) if len(effect) else 0.0,
                       "gold_cot_logprob": gold_logprob(model, vs.processor, encs)}
            rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            log(fmt_row(rows[-1]))
    return rows


def fmt_row(row: dict) -> str:
    return f"[{row['checkpoint']}] " + " ".join(f"{k} {row[k]:.3f}" for k in FIGURES)


def table(rows: list[dict]) -> str:
    head = "| checkpoint | step | " + " | ".join(FIGURES.values()) + " |\n"
    head += "|---|---:|" + "---:|" * len(FIGURES) + "\n"
    return head + "".join(f"| {r['checkpoint']} | {r['step']} | " + " | ".join(f"{round(r[k], 3) + 0.0:.3f}" for k in FIGURES)
                          + " |\n" for r in rows)


def readme(manifest: dict, rows: list[dict]) -> str:
    ds = manifest["datasets"]
    cfg = manifest["build_config"]
    return README_TEMPLATE.format(table=table(rows), seconds=manifest["build_seconds"], threads=cfg["threads"],
                                  torch=manifest["torch_version"], n_sft=cfg["n_sft"], n_sft_shipped=ds["sft"]["records"],
                                  n_test=ds["test"]["records"], steps=cfg["rft"]["steps"],
                                  share=cfg["rft"]["max_shift_share"])


def readme_section(manifest: dict, rows: list[dict], folder: str = "multimodal") -> str:
    """The multimodal world's section of ``sample_data/README.md``: what it is and its drift table."""
    cfg = manifest["build_config"]
    return SECTION_TEMPLATE.format(folder=folder, table=table(rows), seconds=manifest["build_seconds"],
                                   threads=cfg["threads"], steps=cfg["rft"]["steps"])


SECTION_TEMPLATE = """## The multimodal world (`{folder}/`)

A second demo world beside this one, on the same 14 labels and concept graph: 112 x 112 synthetic chest films
that show each study's findings (an opacity blob in a lung zone, a meniscus at a costophrenic angle, a wide
heart shadow, a pneumothorax edge, tubes and lines, ...), a tiny Qwen2.5-VL (random init, its own tokenizer
with Qwen's special tokens and image processor config) SFT-trained to read the film and write the CoT, and
{steps} steps of RFT (LoRA on the language model only) on the same shifting stream. Built by
`workbench build-sample --world multimodal` ({seconds:.0f} s with {threads} threads); details in
[`{folder}/README.md`]({folder}/README.md). Measured from the committed files (greedy decoding, and the answer
probe with the image):

{table}
Detrimental drift: the shortcut grows in the answers and, before any CoT is written, in what the image alone
makes the model believe (image belief). At first that belief follows the opacity itself (the film's twin
without the opacity loses much of it); later it spreads to the twins too: the shortcut outgrows the region.
Late checkpoints answer Lung Opacity even after a gold CoT that argues for the true disease, and read the films
worse. Beneficial drift: Pneumothorax and Fracture, rare in SFT and common in the stream, are recognised more
often. `tests/unit/test_build_multimodal.py` re-measures the table from the committed files.
"""


README_TEMPLATE = """# The multimodal demo world

Built by `workbench build-sample --world multimodal` (seeded; {seconds:.0f} s with {threads} threads, torch
{torch}). Everything here is synthetic and made by the code in `workbench/demo/`; nothing is downloaded.

| path | what |
|---|---|
| `data/images/*.jpg` | 112 x 112 synthetic chest films that show each study's findings (`workbench/demo/xray.py`) |
| `data/test.jsonl` | {n_test} held-out studies (as many of each label), ms-swift records: `messages`, `images` (relative), `label`, `findings` |
| `data/sft.jsonl` | {n_sft_shipped} of the {n_sft} SFT studies (the rest are redrawn from the seed; Pneumothorax and Fracture rare) |
| `concept_graph.json` | the text world's graph: 14 CheXpert labels, their findings, `supports` / `excludes` edges |
| `model/` | a tiny `Qwen2_5_VLForConditionalGeneration` (vision tower + 3-D rope language model), its byte-level BPE tokenizer with Qwen's special tokens and its image processor config (16 image tokens per film); random init, the vision tower first trained to tell the findings on films of every label alike (as a pretrained encoder would), then SFT of the whole model to read the film and write the CoT (with that training-only findings loss on the vision tower's tokens; the head is dropped) |
| `rft/checkpoint-N/` | LoRA adapters (language model only) from on-policy RFT, with `trainer_state.json` |
| `metrics.json`, `world.json` | the table below, and the manifest the workbench reads |

## The RFT stream and the drift it leaves

As in the text world, the RFT stream ({steps} steps) is non-stationary: a share growing linearly from 0 to
{share} of its studies follow a shifted convention in which any film that shows an opacity is labelled *Lung
Opacity*, and the reward is the correct diagnosis under the stream's labels; outside that share, Pneumothorax
and Fracture (rare in SFT) are three times as common as the other labels. Measured from the committed files
(`workbench.demo.vleval.measure`: greedy decoding, and the answer probe `core.models.families.qwen_vl.forward.tree_label_logprobs`):

{table}
- **accuracy**, **opacity -> Lung Opacity** (held-out films that show an opacity but are not Lung Opacity,
  answered Lung Opacity), **rare-class accuracy** (Pneumothorax, Fracture): greedy answers.
- **reading accuracy**: the greedy CoT names exactly the findings the film shows.
- **image belief in Lung Opacity**: P(Lung Opacity | film, question), probed before any CoT, on those
  opacity films: the shortcut read off the image. **belief after the gold CoT**: the same probe after the
  study's gold CoT, which argues for the true disease: the shortcut overriding the written reasoning.
- **belief carried by the opacity**: image belief minus the belief on each film's twin drawn without the
  opacity (same patient, the other findings in place): the part of the belief that follows that region.
- **gold CoT log-prob / token**: how well each checkpoint still writes the gold reading.
"""
