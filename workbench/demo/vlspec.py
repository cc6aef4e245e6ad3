"""The multimodal sample world's studies: which findings its films show, and the records it writes.

The labels, findings and concept graph are the text world's (``workbench.demo.spec``); a study draws its
findings with ``generator.sample_study`` at ``VL_RATES``, the text world's rates restricted to findings a film
can show (``workbench.demo.xray.DRAW``), and "opacity" is as ambiguous as in the text world: six diseases show
it. The chain of thought names the findings in a fixed reading order (the film shows no order), each read
in the light of the diagnosis, in the text world's words::

    <think> opacity suggests Pneumonia. infiltrate suggests Pneumonia. The findings point to Pneumonia.
    </think> The disease of this patient is Pneumonia.

A record is written in ms-swift's format, its image beside it (``images`` relative to the data file)::

    {"id": "test-00007", "label": "Pneumonia", "findings": ["opacity", "infiltrate"], "image_seed": 123,
     "images": ["images/test-00007.jpg"],
     "messages": [{"role": "user", "content": "This is a patient's chest DR image <image>. Please ..."},
                  {"role": "assistant", "content": "<think> ... </think> The disease of this patient is Pneumonia."}]}
"""

from __future__ import annotations

import io
import random
import zlib

from core.io.vl_records import CCF_PROMPT
from workbench.demo import generator, spec, xray
from workbench.demo.generator import Study

BASE_MODEL_NAME = "cxr-demo-tiny-qwen2.5-vl"  # the name its adapters give their base (world.json's base_model_name)
QUESTION = CCF_PROMPT  # the authors' question: "This is a patient's chest DR image <image>. Please help ..."
FINDING_ORDER: tuple[str, ...] = tuple(xray.DRAW)  # the order a reader names what a film shows
JPEG_QUALITY = 90

VL_RATES: dict[str, dict[str, float]] = {
    "No Finding": {"clear lungs": 1.0, "normal heart size": 1.0},
    "Enlarged Cardiomediastinum": {"widened mediastinum": 1.0, "enlarged cardiac silhouette": 0.3},
    "Cardiomegaly": {"enlarged cardiac silhouette": 1.0},
    "Lung Opacity": {"opacity": 0.9, "hazy density": 0.5},
    "Lung Lesion": {"nodule": 0.7, "mass": 0.5, "opacity": 0.2},
    "Edema": {"perihilar haze": 0.8, "kerley b lines": 0.5, "opacity": 0.3},
    "Consolidation": {"consolidation": 0.9, "opacity": 0.35},
    "Pneumonia": {"infiltrate": 0.7, "consolidation": 0.4, "opacity": 0.4},
    "Atelectasis": {"linear band": 0.7, "elevated hemidiaphragm": 0.5, "opacity": 0.3},
    "Pneumothorax": {"pleural line": 0.9, "absent lung markings": 0.6},
    "Pleural Effusion": {"blunted costophrenic angle": 0.85, "meniscus sign": 0.6, "opacity": 0.1},
    "Pleural Other": {"pleural thickening": 0.8, "blunted costophrenic angle": 0.2},
    "Fracture": {"rib fracture": 0.9, "callus": 0.4},
    "Support Devices": {"endotracheal tube": 0.6, "central line": 0.6, "pacemaker leads": 0.4},
}
# SFT class weights: Pneumothorax and Fracture are rare (as in the text world), so that the RFT stream, uniform
# over the labels, has something to teach; rarer would leave a vision model that never says them at all.
SFT_WEIGHTS: dict[str, float] = {d: (0.4 if d in spec.RARE_IN_SFT else 1.0) for d in spec.DISEASES}

# The RFT stream's labels outside the shifted share: the classes rare in SFT are common there (the beneficial drift).
STREAM_WEIGHTS: dict[str, float] = {d: (3.0 if d in spec.RARE_IN_SFT else 1.0) for d in spec.DISEASES}

# Every drawn finding supports its diseases in the text world's graph too, so the CoT's readings are its readings.
assert all(f in spec.FINDING_RATES[d] for d, r in VL_RATES.items() for f in r)
assert set(VL_RATES) == set(spec.DISEASES) and {f for r in VL_RATES.values() for f in r} <= set(xray.DRAW)


def image_seed(world_seed: int, study_id: str) -> int:
    """The seed a study's film is drawn with: a function of the world's seed and the study id only."""
    return zlib.crc32(f"{world_seed}:{study_id}".encode())


def ordered(study: Study) -> Study:
    """The study with its findings in reading order (canonical surface forms: a film has no wording)."""
    fs = sorted(study.findings, key=FINDING_ORDER.index)
    return Study(study.label, tuple(fs), tuple(fs))


def record(study: Study, split: str, index: int, world_seed: int = 0, **extra) -> dict:
    """A study as an ms-swift record (without ``images``: ``attach_image`` adds the file's path)."""
    study = ordered(study)
    sid = f"{split}-{index:05d}"
    return {"id": sid, "split": split, "label": study.label, "findings": list(study.findings),
            "image_seed": image_seed(world_seed, sid),
            "messages": [{"role": "user", "content": QUESTION},
                         {"role": "assistant", "content": generator.completion_text(study)}], **extra}


def completion(rec: dict) -> str:
    return rec["messages"][-1]["content"]


def draw(rec: dict, size: int = xray.SIZE) -> bytes:
    """The study's film as JPEG bytes (grey, one channel): what is written to disk and what training sees."""
    img = xray.draw_study(rec["findings"], rec["image_seed"], size).convert("L")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def decode(jpeg: bytes):
    """JPEG bytes as the RGB image ``core.io.images.load_image`` would give for the same file."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        return im.convert("RGB")


def studies(rng: random.Random, n: int, split: str, world_seed: int, weights: dict[str, float] | None = None,
            balanced: bool = False) -> list[dict]:
    """``n`` stationary studies: labels cycling through the 14 (``balanced``) or drawn with ``weights``."""
    labels = list(spec.DISEASES)
    w = [(weights or {}).get(d, 1.0) for d in labels]
    out = []
    for i in range(n):
        label = labels[i % len(labels)] if balanced else rng.choices(labels, w)[0]
        out.append(record(generator.sample_study(rng, label, 0.0, rates=VL_RATES), split, i, world_seed))
    return out


def stream_batch(world_seed: int, size: int = xray.SIZE):
    """The RFT stream of the multimodal world: ``generator.stream_batch`` at ``VL_RATES`` (the shifted share
    labels every "opacity" study Lung Opacity), each record with its film decoded under ``image``."""
    def batch(rng: random.Random, step: int, total: int, n: int, max_share: float) -> list[dict]:
        recs = generator.stream_batch(rng, step, total, n, max_share, rates=VL_RATES, synonym_rate=0.0,
                                      make_record=lambda s, split, i, **kw: record(s, split, i, world_seed, **kw),
                                      weights=STREAM_WEIGHTS)
        for r in recs:
            r["image"] = decode(draw(r, size))
        return recs
    return batch


def finding_targets(records: list[dict]):
    """Multi-hot findings of each record over ``FINDING_ORDER``.  -> (N, F) float tensor"""
    import torch

    out = torch.zeros((len(records), len(FINDING_ORDER)))
    for i, r in enumerate(records):
        out[i, [FINDING_ORDER.index(f) for f in r["findings"]]] = 1.0
    return out
