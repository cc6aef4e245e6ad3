"""Visual drift under every checkpoint: the answer probe over image variants, a batch at a time.

The model work of ``core.perturb.visual`` (which builds the variants and says what they mean): each batch of
variants (another study's image, or the study's image with one patch greyed) is probed at the end of its
CoT (the series' family's probe trees, ``Family.tree_batch``) under every checkpoint of a series whose family
reads images. Variants of one study share their text ids; a batch is one forward per checkpoint, its image
features computed once and reused under every adapter checkpoint when the vision tower is shared (LoRA on the
language model); a series of full checkpoints loads each once and makes the batches again under it. Memory
holds one batch of images.

    vs = load_series(cfg)                       # a core.perturb.visual.VisualConfig's base and checkpoints
    df = run(cfg, progress, should_cancel, vs)  # swap_test or occlusion_test, with its cost in df.attrs
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.drift.probe import ProbeConfig, probe_positions, sentence_ids, tokens_of
from core.errors import InputError
from core.io import answers
from core.models.families.qwen_vl.inputs import encode_vl  # the variants are Qwen-VL inputs (patch pixels, grids)
from core.models.prefix_trees import LabelTokens
from core.perturb import visual
from core.perturb.visual import (
    VisualConfig,
    cost_text,
    data_labels,
    donors,
    grid_boxes,
    image_paths,
    occluded_encodings,
    read_records,
    swap_image,
)

Progress = Callable[[float, float, str], None]


def _positions(encs, tk: LabelTokens, tokenizer, cfg: VisualConfig) -> list[list[int]]:
    if cfg.kind == "occlusion" and cfg.occlusion_at == "start":  # right after the image and the prompt
        return [[e.start] for e in encs]
    ends = sentence_ids(tokenizer)
    return [probe_positions(e, cfg.positions, tk.template[0], ends) for e in encs]


@dataclass
class _Counter:
    """Progress over the (batch, checkpoint) steps of a whole test."""
    total: int
    done: int = 0
    progress: Progress | None = None
    should_cancel: Callable[[], bool] | None = None

    def step(self, message: str) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total, message)

    def check(self) -> None:
        from core.progress import Cancelled

        if self.should_cancel and self.should_cancel():
            raise Cancelled("visual drift cancelled")


def beliefs(vs, make_batches: Callable[[], Iterable[list]], cfg: VisualConfig, labels: list[str],
            counter: _Counter) -> dict:
    """Belief over ``labels`` (softmax of the probe's label log-probs) at each probe position of each
    encoding under each checkpoint: ``{(enc.id, checkpoint): (positions into the completion, (P, K))}``.
    ``make_batches()`` yields the encodings a batch at a time (memory holds one batch of images). Adapter
    series: batch-outer, checkpoint-inner (adapters switched in place; a batch's image features computed
    once when the vision tower is shared); full checkpoints: each loaded once, the batches made again."""
    out = {}
    tk = tokens_of(vs.tokenizer, ProbeConfig(labels=labels, template=cfg.template, positions=cfg.positions), labels)
    if all(c.kind == "adapter" for c in vs.checkpoints):
        for group in make_batches():
            trees = _trees(vs, group, tk, cfg)  # its image features shared by every adapter when the tower is
            for name in vs.names:
                with vs.activate(name) as model:
                    _probe_group(model, name, group, trees, counter, out)
        return out
    for name in vs.names:
        with vs.activate(name) as model:
            for group in make_batches():
                _probe_group(model, name, group, _trees(vs, group, tk, cfg), counter, out)
    return out


def _trees(vs, group: list, tk: LabelTokens, cfg: VisualConfig):
    """The group's probe trees (``Family.tree_batch``) and their positions."""
    pos = _positions(group, tk, vs.tokenizer, cfg)
    return vs.family.tree_batch(vs, list(zip(group, pos, strict=True)), tk), pos


def _probe_group(model, name: str, group: list, trees, counter: _Counter, out: dict) -> None:
    counter.check()
    batch, pos = trees
    for e, p, lp in zip(group, pos, batch.label_logprobs(model), strict=True):
        out[(e.id, name)] = ([j - e.start for j in p], _softmax(lp))
    counter.step(f"{name}: {group[-1].id}")


def _softmax(logp: np.ndarray) -> np.ndarray:
    z = np.exp(logp - logp.max(-1, keepdims=True))  # (P, K) belief z_j = softmax_k log P(y_k | x_<j)
    return z / z.sum(-1, keepdims=True)


def _chunks(items: list, size: int) -> list[list]:
    return [items[a: a + size] for a in range(0, len(items), size)]


# ---- the two tests ------------------------------------------------------------------------------------

def swap_test(vs, records: list[dict], pool: list[dict], cfg: VisualConfig, labels: list[str],
              progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None) -> pd.DataFrame:
    """Each record with each donor's image (``donors``), its CoT kept: one row per pair x checkpoint x
    probe position (``position``: tokens into the completion; ``is_end``: the end of the CoT)."""
    pairs = [(r, swap_image(r, d)) for r in records
             for d in donors(r, pool, labels, cfg.swap_to, cfg.donors_per_label)]
    if not pairs:
        raise InputError(f"{cfg.data}: no other study's image to swap in (labels {cfg.swap_to or 'any other'})")
    chunks = _chunks(list({r["id"]: r for r, _ in pairs}.values()) + [v for _, v in pairs], cfg.batch_size)
    steps = len(chunks) * len(vs.names) * (2 if cfg.decode else 1)
    counter = _Counter(steps, progress=progress, should_cancel=should_cancel)
    got = beliefs(vs, lambda: (encode_vl(vs.processor, c, chat_template=cfg.chat_template) for c in chunks), cfg,
                  labels, counter)
    decoded = _decode(vs, chunks, labels, cfg, counter) if cfg.decode else None
    rows = [row for r, v in pairs for name in vs.names
            for row in _swap_rows(r, v, got, decoded, name, vs.steps[name], labels)]
    return pd.DataFrame(rows)


def _swap_rows(r: dict, v: dict, got: dict, decoded: dict | None, name: str, step: int,
               labels: list[str]) -> list[dict]:
    (pos, before), (_, after) = got[(r["id"], name)], got[(v["id"], name)]
    gold, swapped = r.get("label"), v["swap"]["label"]
    gi = labels.index(gold) if gold in labels else None
    si = labels.index(swapped) if swapped in labels else None
    rows = []
    for p, j in enumerate(pos):
        a, b = labels[int(before[p].argmax())], labels[int(after[p].argmax())]
        rows.append({"traj_id": r["id"], "checkpoint": name, "step": step, "position": j,
                     "is_end": p == len(pos) - 1, "gold": gold, "image": "; ".join(image_paths(r)),
                     "swapped_image": "; ".join(image_paths(v)), "swapped_id": v["swap"]["donor"],
                     "swapped_label": swapped,
                     "belief_before": float(before[p, gi]) if gi is not None else np.nan,
                     "belief_original": float(after[p, gi]) if gi is not None else np.nan,
                     "belief_swapped": float(after[p, si]) if si is not None else np.nan,
                     "answer_before": a, "answer_after": b, "flipped": a != b})
    if decoded is not None:
        x, y = decoded[(r["id"], name)], decoded[(v["id"], name)]
        rows[-1].update(decoded_before=x, decoded_after=y, decoded_malformed=x is None or y is None,
                        decoded_flipped=x is not None and y is not None and x != y)  # malformed: not a flip
    return rows


def _decode(vs, chunks: list[list[dict]], labels: list[str], cfg: VisualConfig, counter: _Counter) -> dict:
    """Greedy completion of each record's prompt (with its images) under each checkpoint; its answer.
    Checkpoint-outer (a full checkpoint loads once); the records encoded a chunk at a time."""
    import torch

    out = {}
    for name in vs.names:
        with vs.activate(name) as model, torch.no_grad():
            for chunk in chunks:
                encs = encode_vl(vs.processor, chunk, chat_template=cfg.chat_template)
                for e in encs:
                    counter.check()
                    out[(e.id, name)] = answers.find_answer(_greedy(model, vs.processor, e, cfg.max_new_tokens), labels)
                counter.step(f"{name}: decoded {encs[-1].id}")
    return out


def _greedy(model, proc, e, max_new_tokens: int) -> str:
    import torch

    dev = next(model.parameters()).device
    ids = torch.tensor([e.input_ids[: e.start]], device=dev)
    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         pixel_values=e.pixel_values.to(dev), image_grid_thw=e.image_grid_thw.to(dev),
                         max_new_tokens=max_new_tokens, pad_token_id=proc.tokenizer.pad_token_id)
    return proc.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=False)


def occlusion_test(vs, records: list[dict], cfg: VisualConfig, labels: list[str], progress: Progress | None = None,
                   should_cancel: Callable[[], bool] | None = None) -> pd.DataFrame:
    """Each record's image with one patch greyed at a time: one row per record x checkpoint x patch x
    label, the belief (before the CoT or at its end: ``cfg.occlusion_at``, said in ``probed_at``) with the
    patch covered, without, and the drop. One study at a time, its variants made a batch at a time (memory:
    one batch of images)."""
    from core.io.images import check_image

    plans = []  # (record, image size, boxes)
    for r in records:
        refs = r.get("image_refs") or []
        if len(refs) != 1:
            raise InputError(f"trajectory {r['id']}: occlusion takes a study with one image, it has {len(refs)}")
        size = check_image(refs[0], vs.processor.cfg.limits)
        plans.append((r, size, _boxes(size, cfg, r["id"])))
    steps = sum(len(_chunks([None, *boxes], cfg.batch_size)) for _, _, boxes in plans) * len(vs.names)
    counter = _Counter(steps, progress=progress, should_cancel=should_cancel)
    rows = []
    for r, size, boxes in plans:
        got = beliefs(vs, lambda r=r, boxes=boxes: _occlusion_batches(vs.processor, r, boxes, cfg), cfg, labels,
                      counter)
        rows += [row for name in vs.names
                 for row in _occlusion_rows(r, size, boxes, got, name, vs.steps[name], labels,
                                            visual.OCCLUSION_AT[cfg.occlusion_at])]
    return pd.DataFrame(rows)


def _occlusion_batches(proc, record: dict, boxes: list[tuple], cfg: VisualConfig) -> Iterator[list]:
    """The study as it is, then its occluded variants, ``cfg.batch_size`` encodings at a time."""
    from core.io.images import load_image

    enc = encode_vl(proc, [record], chat_template=cfg.chat_template)[0]
    image = load_image(record["image_refs"][0], proc.cfg.limits)
    first = cfg.batch_size - 1
    yield [enc, *occluded_encodings(proc, enc, image, boxes[:first], cfg.fill)]
    for a in range(first, len(boxes), cfg.batch_size):
        yield occluded_encodings(proc, enc, image, boxes[a: a + cfg.batch_size], cfg.fill, first=a)


def _boxes(size: tuple[int, int], cfg: VisualConfig, traj_id: str) -> list[tuple[int, int, int, int]]:
    w, h = size
    if cfg.region is None:
        return grid_boxes(w, h, min(cfg.grid, w, h))
    x0, y0, x1, y1 = cfg.region
    box = (min(x0, w), min(y0, h), min(x1, w), min(y1, h))
    if box[0] >= box[2] or box[1] >= box[3]:
        raise InputError(f"trajectory {traj_id}: region {cfg.region} lies outside its {w}x{h} image")
    return [box]


def _occlusion_rows(r: dict, size: tuple[int, int], boxes: list[tuple], got: dict, name: str, step: int,
                    labels: list[str], probed_at: str) -> list[dict]:
    base = got[(str(r["id"]), name)][1][-1]  # (K,) at the one probe position (before the CoT, or its end)
    answer = labels[int(base.argmax())]
    n = int(round(len(boxes) ** 0.5))  # patches per side (1 for a picked rectangle)
    rows = []
    for k, box in enumerate(boxes):
        b = got[(f"{r['id']}#patch{k}", name)][1][-1]
        for li, label in enumerate(labels):
            rows.append({"traj_id": r["id"], "checkpoint": name, "step": step, "gold": r.get("label"),
                         "image": image_paths(r)[0], "width": size[0], "height": size[1], "patch": k,
                         "row": k // n, "col": k % n, "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3],
                         "label": label, "belief": float(b[li]), "base_belief": float(base[li]),
                         "drop": float(base[li] - b[li]), "answer": answer,
                         "answer_occluded": labels[int(b.argmax())], "probed_at": probed_at})
    return rows


def load_series(cfg: VisualConfig):
    """The config's series; a base whose family does not read images is refused by name (visual drift swaps
    and covers images)."""
    from core.models import series

    vs = series.load_series(cfg.base, cfg.checkpoints, device=cfg.device, dtype=cfg.dtype, base_names=cfg.base_names,
                            vision=cfg.vision, trust_remote_code=cfg.trust_remote_code)
    if not vs.family.reads_images:
        raise InputError(f"{cfg.base}: visual drift needs a model that reads images; this base is of the "
                         f"{vs.family.name} family ({vs.family.modality})")
    return vs


def run(cfg: VisualConfig, progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None,
        series=None) -> pd.DataFrame:
    """Read the trajectories, load the series (unless given) and run ``cfg.kind``; prints its cost."""
    from core.io.vl_records import read_vl_records

    records = read_records(cfg)
    pool = read_vl_records(cfg.data)
    labels = data_labels(cfg, pool)
    if progress:
        progress(0, 1, "loading the checkpoint series")
    vs = series or load_series(cfg)
    t0 = time.perf_counter()
    if cfg.kind == "swap":
        df = swap_test(vs, records, pool, cfg, labels, progress, should_cancel)
    else:
        df = occlusion_test(vs, records, cfg, labels, progress, should_cancel)
    seconds = time.perf_counter() - t0
    variants = df.drop_duplicates(["traj_id", "swapped_id"] if cfg.kind == "swap" else ["traj_id", "patch"])
    df.attrs.update(seconds=round(seconds, 3), trajectories=len(records), variants=len(variants),
                    checkpoints=len(vs.names), device=str(vs.device))
    print(f"workbench: {cost_text(df.attrs, cfg.kind)}")
    return df
