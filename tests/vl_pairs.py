"""Preference pairs with images for a VL world made by ``tests.vl_world.make_vl_world``: counterfactual text
pairs (another finding, another answer; source ``shortcut``) and visual pairs (the same CoT, another study's
image on the rejected side; source ``image_swap``), image paths relative to the pairs file, as curation
export writes them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.vl_world import COTS, LABELS, QUESTION


def cot(label: str) -> str:
    return f"<think> {COTS[label]} </think> The disease of this patient is {label}."


def world_images(root: Path) -> list[Path]:
    """The X-ray-like images of a VL world built under ``root``, in a fixed order."""
    return sorted((Path(root) / "MIMIC-CXR").rglob("*.jpg"))


def write_vl_pairs(root: Path, out: Path, n: int = 8) -> Path:
    """``n`` pairs, every second one visual; images relative to ``out``'s folder."""
    images = world_images(root)
    lines = []
    for i in range(n):
        label, other = LABELS[i % len(LABELS)], LABELS[(i + 1) % len(LABELS)]
        image = Path("..") / images[i % len(images)].relative_to(Path(root))
        rec = {"prompt": QUESTION, "chosen": cot(label), "rejected": cot(other), "source": "shortcut",
               "label": label, "images": [str(image)]}
        if i % 2:  # visual: same CoT, another study's image (absolute, as an export may write it)
            rec.update(rejected=cot(label), source="image_swap",
                       rejected_images=[str(images[(i + 1) % len(images)])])
        lines.append(json.dumps(rec))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out
