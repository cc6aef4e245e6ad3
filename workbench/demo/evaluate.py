"""Answer accuracy of a model on the demo world's test sets, by batched greedy decoding of the CoT.

``answer(model, tokenizer, prompts)`` decodes prompt -> ``<think> ... </think> The disease ... X.`` and
parses X. ``drift_table_row`` turns the answers on the stationary and perturbed sets into the figures
that ``sample_data/README.md`` reports per checkpoint.
"""

from __future__ import annotations

from core.models.families.text import greedy_completions
from workbench.demo import spec
from workbench.demo.generator import parse_answer


def answer(model, tokenizer, prompts: list[str], batch_size: int = 256, max_new_tokens: int = 72) -> list[str | None]:
    """Greedy-decode each prompt's completion and return the parsed answer (None if malformed)."""
    texts = greedy_completions(model, tokenizer, prompts, max_new_tokens, batch_size, model.device.type)
    return [parse_answer(t) for t in texts]


def drift_table_row(test: list[dict], preds: list[str | None], perturbed: list[dict],
                    preds_perturbed: list[str | None]) -> dict[str, float]:
    """The per-checkpoint figures: accuracy, perturbed accuracy, flip rate, shortcut share, rare-class accuracy.

    flip rate = share of studies whose answer changes when one finding becomes a near-synonym (paired by
    ``source_id``); shortcut share = share of stationary studies that show "opacity" but are not Lung
    Opacity, answered Lung Opacity.
    """
    def acc(recs, preds, keep=lambda r: True):
        pairs = [(r, p) for r, p in zip(recs, preds, strict=True) if keep(r)]
        return sum(p == r["label"] for r, p in pairs) / max(1, len(pairs))

    by_id = dict(zip((r["id"] for r in test), preds, strict=True))
    flips = [by_id[r["source_id"]] != p for r, p in zip(perturbed, preds_perturbed, strict=True)
             if by_id[r["source_id"]] is not None and p is not None]  # a malformed answer is no flip
    carriers = [p for r, p in zip(test, preds, strict=True)
                if spec.SHORTCUT_FINDING in r["findings"] and r["label"] != spec.SHORTCUT_LABEL]
    return {
        "accuracy": acc(test, preds),
        "perturbed_accuracy": acc(perturbed, preds_perturbed),
        "flip_rate": sum(flips) / max(1, len(flips)),
        "opacity_to_lung_opacity": sum(p == spec.SHORTCUT_LABEL for p in carriers) / max(1, len(carriers)),
        "rare_class_accuracy": acc(test, preds, lambda r: r["label"] in spec.RARE_IN_SFT),
        "malformed": sum(p is None for p in preds) / max(1, len(preds)),
    }


def evaluate_world(model, tokenizer, world, limit: int | None = None, batch_size: int = 256) -> dict[str, float]:
    """The world's own evaluation of ``model``: the ``metrics.json`` row figures (accuracy, perturbed accuracy,
    flip rate, opacity -> Lung Opacity, rare-class accuracy, malformed) on its held-out test sets.

    ``world`` is a ``core.workspace.world.World`` or its folder; ``limit`` keeps the first N stationary studies and
    their perturbed twins (for quick checks; the README figures use all).
    """
    from core.io.trajectories import read_jsonl
    from core.workspace.world import load_world

    world = load_world(world) if not hasattr(world, "dataset_path") else world
    test = read_jsonl(world.dataset_path("test"))[:limit]
    ids = {r["id"] for r in test}
    perturbed = [r for r in read_jsonl(world.dataset_path("test_perturbed")) if r["source_id"] in ids]
    preds = answer(model, tokenizer, [r["prompt"] for r in test], batch_size)
    preds_p = answer(model, tokenizer, [r["prompt"] for r in perturbed], batch_size)
    return {k: round(v, 4) for k, v in drift_table_row(test, preds, perturbed, preds_p).items()}
