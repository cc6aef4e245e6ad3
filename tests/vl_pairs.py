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


def image_only_processor(proc):
    """transformers' Qwen2.5-VL processor without its video processor (which needs torchvision, absent on a
    CPU-only machine), so that TRL's own vision collator can run: the same image processor and tokenizer."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return proc.full or ImageOnlyProcessor(proc.image_processor, proc.tokenizer, proc.tokenizer.chat_template)


def trl_vision_rows(proc, pairs: list[dict]) -> list[dict]:
    """Same-image pairs (``core.io.pairs.read_pairs``) in TRL's vision format, the prompt already templated (so
    TRL's collator and ours see the same text): ``<image>`` as Qwen's vision tokens, completions ending in EOS."""
    from PIL import Image

    from core.models.families.qwen_vl.pairs import prompt_text

    eos = proc.tokenizer.eos_token
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    return [{"prompt": prompt_text(proc, p).replace("<image>", image), "chosen": p["chosen"] + eos,
             "rejected": p["rejected"] + eos, "images": [Image.open(f).convert("RGB") for f in p["images"]]}
            for p in pairs]
