"""Seeded generator of chest-X-ray-style studies: prompt, chain of thought and answer.

A study draws a disease, then each of its findings independently at the rate in ``spec.FINDING_RATES``,
and writes every finding in one of its surface forms (``spec.SYNONYMS``). The record::

    {"id": "test-00007", "split": "test", "label": "Pneumonia",
     "findings": ["infiltrate", "opacity"], "surfaces": ["patchy opacity", "opacity"],
     "prompt": "Report: the chest radiograph shows patchy opacity and opacity. Question: ...",
     "completion": "<think> patchy opacity suggests Pneumonia. opacity suggests Pneumonia. The findings
                    point to Pneumonia. </think> The disease of this patient is Pneumonia."}

The RFT stream is non-stationary: a growing share of its studies follow a shifted annotation
convention in which any study that shows "opacity" is labelled Lung Opacity (the shortcut).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from core.io.answers import answer_of as parse_answer  # noqa: F401 - the disease after </think>, or None
from workbench.demo import spec

ANSWER_PREFIX = "The disease of this patient is "
QUESTION = "Question: what is the disease of this patient?"


@dataclass(frozen=True)
class Study:
    label: str
    findings: tuple[str, ...]  # canonical names
    surfaces: tuple[str, ...]  # as written in the report, same order


def _join(items: list[str] | tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def prompt_text(surfaces: tuple[str, ...]) -> str:
    return f"Report: the chest radiograph shows {_join(surfaces)}. {QUESTION}"


def completion_text(study: Study) -> str:
    """The gold chain of thought: each finding read in the light of the diagnosis, then the answer."""
    steps = []
    for finding, surface in zip(study.findings, study.surfaces, strict=True):
        rates = spec.FINDING_RATES[study.label]
        reading = study.label if rates.get(finding, 0) > 0 else spec.supporters(finding)[0]
        steps.append(f"{surface} suggests {reading}.")
    body = " ".join(steps) + f" The findings point to {study.label}."
    return f"<think> {body} </think> {ANSWER_PREFIX}{study.label}."


def sample_study(rng: random.Random, label: str, synonym_rate: float = 0.3,
                 force: str | None = None, rates: dict[str, dict[str, float]] | None = None) -> Study:
    """Draw the findings of one study of ``label`` (at least one; ``force`` always included) at ``rates``
    (default ``spec.FINDING_RATES``; the multimodal world draws only the findings its films can show)."""
    rates = (rates or spec.FINDING_RATES)[label]
    while True:
        findings = [f for f, p in rates.items() if rng.random() < p]
        if force and force not in findings:
            findings.append(force)
        if findings:
            break
    rng.shuffle(findings)
    surfaces = [_surface(rng, f, synonym_rate) for f in findings]
    return Study(label, tuple(findings), tuple(surfaces))


def _surface(rng: random.Random, finding: str, synonym_rate: float) -> str:
    forms = spec.SYNONYMS[finding]
    if len(forms) == 1 or rng.random() >= synonym_rate:
        return forms[0]
    return rng.choice(forms[1:])


def to_record(study: Study, split: str, index: int, **extra) -> dict:
    return {"id": f"{split}-{index:05d}", "split": split, "label": study.label,
            "findings": list(study.findings), "surfaces": list(study.surfaces),
            "prompt": prompt_text(study.surfaces), "completion": completion_text(study), **extra}


def stationary(rng: random.Random, n: int, split: str, weights: dict[str, float] | None = None) -> list[dict]:
    """``n`` studies from the stationary distribution (uniform over diseases unless ``weights``)."""
    labels = list(spec.DISEASES)
    w = [(weights or {}).get(d, 1.0) for d in labels]
    return [to_record(sample_study(rng, rng.choices(labels, w)[0]), split, i) for i in range(n)]


def sft_weights() -> dict[str, float]:
    """SFT class weights: a few classes are rare, so the RFT stream has something real to teach."""
    return {d: (0.008 if d in spec.RARE_IN_SFT else 1.0) for d in spec.DISEASES}


def shift_share(step: int, total_steps: int, max_share: float) -> float:
    """Share of shifted-convention studies in the stream at ``step``: grows linearly from 0."""
    return max_share * min(1.0, step / max(1, total_steps - 1))


def stream_batch(rng: random.Random, step: int, total_steps: int, size: int, max_share: float,
                 rates: dict[str, dict[str, float]] | None = None, synonym_rate: float = 0.3,
                 make_record: Callable[..., dict] | None = None, weights: dict[str, float] | None = None) -> list[dict]:
    """One batch of the non-stationary RFT stream at ``step`` (prompts plus the reward's label); ``rates``,
    ``synonym_rate``, ``make_record`` (default ``to_record``) and ``weights`` (of the labels outside the shifted
    share; default uniform) let the multimodal world draw its own studies."""
    share = shift_share(step, total_steps, max_share)
    carriers = [d for d in spec.supporters(spec.SHORTCUT_FINDING, rates) if d != spec.SHORTCUT_LABEL]
    make_record = make_record or to_record
    out = []
    for i in range(size):
        if rng.random() < share:
            shown = sample_study(rng, rng.choice(carriers), synonym_rate, force=spec.SHORTCUT_FINDING, rates=rates)
            study = Study(spec.SHORTCUT_LABEL, shown.findings, shown.surfaces)
            out.append(make_record(study, f"stream{step}", i, shifted=True))
        else:
            label = rng.choices(spec.DISEASES, [weights.get(d, 1.0) for d in spec.DISEASES])[0] if weights \
                else rng.choice(spec.DISEASES)
            study = sample_study(rng, label, synonym_rate, rates=rates)
            out.append(make_record(study, f"stream{step}", i, shifted=False))
    return out


def perturb(record: dict, rng: random.Random) -> dict | None:
    """Swap one finding for a near-synonym (preferring forms that say "opacity"); None if none has one."""
    options = []
    for k, (f, s) in enumerate(zip(record["findings"], record["surfaces"], strict=True)):
        for alt in spec.SYNONYMS[f]:
            if alt != s:
                options.append((("opacity" in alt) and ("opacity" not in s), k, alt))
    if not options:
        return None
    best = [o for o in options if o[0]] or options
    _, k, alt = rng.choice(best)
    surfaces = list(record["surfaces"])
    swap = {"position": k, "from": surfaces[k], "to": alt}
    surfaces[k] = alt
    study = Study(record["label"], tuple(record["findings"]), tuple(surfaces))
    rec = to_record(study, "perturbed", 0, source_id=record["id"], swap=swap)
    rec["id"] = record["id"].replace("test", "perturbed")
    return rec
