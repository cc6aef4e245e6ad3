"""Held-out evaluation any world can fill: accuracy, per-category accuracy, malformed answers, flip rate.

A world's held-out set is labelled trajectories (``world.json``: ``"evaluation": {"held_out": DATASET,
"perturbed": DATASET}``); the perturbed twin (records with ``source_id``) is optional, and without one the
concept graph's synonyms make the twins (the first finding named in a prompt swapped for a synonym). A
world's plug-in (``core.workspace.world.World.plugin``) may add its own figures through ``extra_metrics``::

    held = held_out(world, limit=100)                 # None when the world has no held-out set
    figures = evaluate_model(model, tokenizer, held, world.answer_format, world.plugin)
    # {"accuracy": .., "perturbed_accuracy": .., "flip_rate": .., "malformed": .., "per_category": {...}, ...}

Answers come from greedy decoding of the whole completion (chat template for conversations) by the model's
family (``core.models.families``: a vision-language model decodes each study with its images; ``processor``
is then its processor), read with the world's answer format (``core.io.answers``); an answer that does not
parse counts as malformed (and wrong), and says so: ``malformed`` is its share, apart, and each accuracy's
denominator is stated (``studies``; ``perturbed_studies`` for the twins).
flip rate = share of twins whose answer differs from their source's answer (the paper's perturbation test).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import InputError
from core.io.answers import DEFAULT, AnswerFormat


@dataclass
class HeldOut:
    records: list[dict]  # labelled trajectories (read_trajectories records)
    perturbed: list[dict] = field(default_factory=list)  # twins, each with source_id naming a record
    origin: str = ""  # where the twins came from: a dataset name, "graph synonyms" or ""


def synonym_twins(records: list[dict], graph) -> list[dict]:
    """For each record, its twin with the first finding named in the prompt swapped for that finding's next
    synonym in the concept graph (records naming no finding with a synonym have no twin). A twin keeps its
    source's ``images``: a vision-language study is re-asked about the same X-ray."""
    from core.graph import concepts
    from core.perturb.text import replace_span

    names = sorted(((n, f) for f in concepts.findings(graph) for n in concepts.names(graph, f)
                    if len(concepts.names(graph, f)) > 1), key=lambda x: -len(x[0]))
    twins = []
    for rec in records:
        text = rec["prompt"].lower()
        hit = next(((n, f) for n, f in names if n.lower() in text), None)
        if hit is None:
            continue
        forms = concepts.names(graph, hit[1])
        other = forms[(forms.index(hit[0]) + 1) % len(forms)]
        twin = replace_span({**rec, "chat": None}, hit[0], other)
        if twin is not None:
            twins.append({**twin, "id": f"{rec['id']}~syn", "source_id": rec["id"], "chat": _swap_chat(rec, hit[0], other)})
    return twins


def _swap_chat(rec: dict, find: str, replace: str) -> list[dict] | None:
    if not rec.get("chat"):
        return None
    return [{**t, "content": t["content"].replace(find, replace)} for t in rec["chat"]]


def answers(model, processor, records: list[dict], fmt: AnswerFormat = DEFAULT, batch_size: int = 64,
            max_new_tokens: int | None = None, family=None) -> list[str | None]:
    """Greedy-decode each record's completion from its prompt (chat template for a conversation) and read the
    answer; None where it does not parse. ``processor``: the tokenizer of a text model, the processor of a
    vision-language one (each record decoded with its ``images``); ``family``: the model's
    (``core.models.families``), by default the one its config names."""
    if not records:
        return []
    family = family or _family_of(model)
    if not family.reads_images and (with_images := next((r for r in records if r.get("images")), None)):
        raise InputError(f"held-out study {with_images.get('id')}: has images but the model ({family.name} family) "
                         "reads text only; expected a vision-language model to decode it with its images")
    tokenizer = family.tokenizer(processor)
    if max_new_tokens is None:  # room for the longest reference completion, and a little more
        longest = max(len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in records)
        max_new_tokens = min(4096, int(longest * 1.25) + 8)
    batch_size = min(batch_size, family.max_generation_batch or batch_size)  # images make rows heavy
    return [fmt.parse(t) for t in family.greedy(model, processor, records, max_new_tokens, batch_size)]


def _family_of(model):
    from core.models.families import family_of_config

    return family_of_config(model.config, f"{getattr(model.config, 'name_or_path', '') or 'the model'}: config")


def figures(records: list[dict], preds: list[str | None], perturbed: list[dict] | None = None,
            preds_perturbed: list[str | None] | None = None) -> dict:
    """Accuracy, per-category accuracy (``category``, else the label), malformed share; with twins, their
    accuracy and the flip rate."""
    def acc(recs, ps):
        # a malformed answer (None) is never right, even beside a twin whose own label could not be read
        return sum(p is not None and p == r["label"] for r, p in zip(recs, ps, strict=True)) / max(1, len(recs))

    by_cat: dict[str, list] = {}
    for r, p in zip(records, preds, strict=True):
        by_cat.setdefault(str(r.get("category") or r["label"]), []).append(p is not None and p == r["label"])
    out = {"accuracy": acc(records, preds), "malformed": sum(p is None for p in preds) / max(1, len(preds)),
           "studies": len(records)}
    if perturbed:
        by_id = dict(zip((r["id"] for r in records), preds, strict=True))
        out["perturbed_accuracy"] = acc(perturbed, preds_perturbed)
        out["perturbed_studies"] = len(perturbed)  # the twins' accuracy's denominator
        pairs = [(by_id.get(r["source_id"]), p) for r, p in zip(perturbed, preds_perturbed, strict=True)]
        read = [(a, b) for a, b in pairs if a is not None and b is not None]  # a malformed answer is no flip
        # None (JSON null) when no pair was read on both sides: no rate, and perturbed_malformed says why
        out["flip_rate"] = sum(a != b for a, b in read) / len(read) if read else None
        out["perturbed_malformed"] = sum(p is None for p in preds_perturbed) / len(perturbed)
    out = {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
    out["per_category"] = {k: round(sum(v) / len(v), 4) for k, v in sorted(by_cat.items())}
    return out


def evaluate_model(model, processor, held: HeldOut, fmt: AnswerFormat = DEFAULT, plugin=None,
                   batch_size: int = 64, family=None) -> dict:
    """``figures`` of ``model`` on ``held``, plus the plug-in's ``extra_metrics`` (e.g. the sample world's
    shortcut share) computed from the same answers. ``processor``: the model's tokenizer, or a vision-language
    model's processor (every study, and its perturbed twin, decoded with its images); see ``answers``."""
    preds = answers(model, processor, held.records, fmt, batch_size, family=family)
    preds_p = answers(model, processor, held.perturbed, fmt, batch_size, family=family)
    out = figures(held.records, preds, held.perturbed, preds_p)
    extra = getattr(plugin, "extra_metrics", None)
    if extra is not None:
        out.update({k: round(v, 4) for k, v in extra(held.records, preds, held.perturbed, preds_p).items()})
    if held.origin:
        out["perturbation"] = held.origin
    return out


def held_out(world, limit: int | None = None) -> HeldOut | None:
    """The world's held-out set (the first ``limit`` records and their twins), or None when it has none."""
    from core.graph import concepts
    from core.io.trajectories import read_trajectories

    spec = world.evaluation_spec()
    if not spec.get("held_out"):
        return None
    records = [r for r in read_trajectories(world.dataset_path(spec["held_out"]), fmt=world.answer_format)
               if r.get("label")][:limit]
    ids = {r["id"] for r in records}
    if spec.get("perturbed"):
        twins = [r for r in read_trajectories(world.dataset_path(spec["perturbed"]), fmt=world.answer_format)
                 if r.get("source_id") in ids]
        return HeldOut(records, twins, spec["perturbed"])
    if world.graph_path.is_file():
        return HeldOut(records, synonym_twins(records, concepts.load_graph(world.graph_path)), "graph synonyms")
    return HeldOut(records)
