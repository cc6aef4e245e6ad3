"""The family matrix: every ``model_type`` the workbench serves, the backend that serves it, and what of the
engine is tested on it; ``core.models.families.family_of_config`` dispatches on this table and nothing else, the
README's matrix and ``workbench families`` are printed from it (``--markdown``: the README's block), and the matrix test
(``tests/unit/models/families/test_matrix.py``) runs one check per cell claimed here, on a tiny random model
of that type, against the model's own direct computation. A model_type listed in ``REFUSED`` is refused by
name with the reason it is not served; any other unknown one is refused with the list of what is.

    entry("gemma2").family       # "text"
    markdown()                   # the README's table
"""

from __future__ import annotations

from dataclasses import dataclass

SCORE, PROBE, EVALUATE, TRAIN, VISUAL = "score", "probe", "evaluate", "train", "visual drift"
OPERATIONS = (SCORE, PROBE, EVALUATE, TRAIN, VISUAL)
TEXT_OPS = (SCORE, PROBE, EVALUATE, TRAIN)
ALL_OPS = OPERATIONS  # a vision-language model: the text operations and visual drift


@dataclass(frozen=True)
class Entry:
    """One model_type in the matrix."""
    model_type: str  # config.json's model_type
    family: str  # the backend that serves it (``core.models.families.FAMILIES`` by name)
    shown: str  # what a researcher calls it
    tested: tuple[str, ...]  # the operations the matrix test checks on a tiny random model of this type
    note: str = ""  # what the tiny model exercises (sliding window, soft-capping, tied embeddings, ...)


MATRIX: tuple[Entry, ...] = (
    Entry("llama", "text", "Llama 3", TEXT_OPS),
    Entry("qwen2", "text", "Qwen2 / Qwen2.5", TEXT_OPS, "tied and untied embeddings; a sliding window"),
    Entry("qwen3", "text", "Qwen3 (dense)", TEXT_OPS),
    Entry("qwen3_moe", "text", "Qwen3-MoE", TEXT_OPS),
    Entry("gemma2", "text", "Gemma 2", TEXT_OPS, "sliding window shorter than the CoT, attention and final soft-capping"),
    Entry("gemma3_text", "text", "Gemma 3 (text)", TEXT_OPS,
          "sliding window shorter than the CoT: mixed and all-sliding layers; final soft-capping"),
    Entry("mistral", "text", "Mistral", TEXT_OPS, "sliding window shorter than the CoT"),
    Entry("phi3", "text", "Phi-3", TEXT_OPS, "sliding window shorter than the CoT"),
    Entry("mixtral", "text", "Mixtral", TEXT_OPS),
    Entry("qwen2_moe", "text", "Qwen2-MoE", TEXT_OPS),
    Entry("gemma", "text", "Gemma", TEXT_OPS),
    Entry("phi", "text", "Phi-1 / Phi-2", TEXT_OPS),
    Entry("olmo2", "text", "OLMo 2", TEXT_OPS),
    Entry("granite", "text", "Granite", TEXT_OPS, "logit scaling"),
    Entry("starcoder2", "text", "StarCoder2", TEXT_OPS),
    Entry("smollm3", "text", "SmolLM3", TEXT_OPS),
    Entry("gpt_neox", "text", "GPT-NeoX / Pythia", TEXT_OPS),
    Entry("gpt2", "text", "GPT-2", TEXT_OPS),
    Entry("qwen2_vl", "qwen_vl", "Qwen2-VL", TEXT_OPS, "vision tower untouched by CPO"),
    Entry("qwen2_5_vl", "qwen_vl", "Qwen2.5-VL", ALL_OPS, "vision tower untouched by CPO; image swap and occlusion"),
    Entry("qwen3_vl", "qwen_vl", "Qwen3-VL", TEXT_OPS, "deepstack features (inner vision layers) in training too"),
)

# model types a researcher may well bring that are not served, and why (said in the refusal and the README)
REFUSED: dict[str, str] = {
    "llava": "LLaVA-1.5 needs its own backend (CLIP tower, projector, `<image>` expanded by its processor's rules)",
    "llava_onevision": "LLaVA-OneVision needs its own backend (SigLIP tower, any-resolution tiles)",
    "gemma3": "Gemma 3 with images needs its own backend (SigLIP tower, bidirectional attention over images)",
    "idefics3": "Idefics3 needs its own backend (image splitting into tiles, pixel shuffle)",
    "smolvlm": "SmolVLM needs its own backend (the Idefics3 layout)",
    "cohere": "its attention reads the probe's 4-D mask otherwise: beliefs 0.02 off re-encoding",
    "cohere2": "its attention reads the probe's 4-D mask otherwise: beliefs 0.02 off re-encoding",
}


def entry(model_type: str | None) -> Entry | None:
    """The matrix row of ``model_type``; None when it is not served."""
    return next((e for e in MATRIX if e.model_type == model_type), None)


def types_of(family: str) -> tuple[str, ...]:
    """The model types a backend serves, in the matrix's order."""
    return tuple(e.model_type for e in MATRIX if e.family == family)


def cells(e: Entry) -> list[str]:
    """One entry's row: "tested" where the matrix test checks the operation, "-" where it does not."""
    return ["tested" if op in e.tested else "-" for op in OPERATIONS]


def markdown() -> str:
    """The matrix as the README's Markdown table (``tests`` checks that the README holds exactly this)."""
    head = ["family", "model_type", "backend", *OPERATIONS, "what the tiny model exercises"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in MATRIX:
        lines.append("| " + " | ".join([e.shown, f"`{e.model_type}`", f"`{e.family}`", *cells(e), e.note]) + " |")
    return "\n".join(lines)


def refused_markdown() -> str:
    """The model types refused by name, and why (the README's list under the matrix)."""
    return "\n".join(f"- `{t}`: {why}" for t, why in REFUSED.items())


def text_table() -> str:
    """The matrix for a terminal (``workbench families``): fixed-width columns."""
    head = ["family", "model_type", "backend", *OPERATIONS]
    rows = [head] + [[e.shown, e.model_type, e.family, *cells(e)] for e in MATRIX]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.append("")
    out.append("refused by name (and why):")
    out += [f"  {t}: {why}" for t, why in REFUSED.items()]
    return "\n".join(out)


README_START, README_END = "<!-- family-matrix: generated by `workbench families --markdown` -->", "<!-- /family-matrix -->"


def readme_block() -> str:
    """What the README holds between its family-matrix markers (the matrix, then the types refused by name)."""
    return "\n".join([README_START, markdown(), "", "Refused by name, with the reason (the rest: refused with the "
                      "list above):", "", refused_markdown(), README_END])

