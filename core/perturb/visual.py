"""Visual drift: does a checkpoint's answer follow the image, and which parts of it? (vision-language series)

Two image counterfactuals, both teacher-forced (the trajectory's CoT is kept; only the image changes) and
read by the answer probe (``core.drift.probe``, through the series' family) under every checkpoint of the series:

- **Image swap**: the study's image is replaced by another study's image, of a chosen label or one of each
  other label (CPO++'s visual counterfactual: same report, counterfactual image). A model that reads the
  image should move its belief; one that answers from the report alone should not. Rows say the belief in
  the original label and in the swapped image's label, the answer before and after, and whether it flipped;
  optionally each checkpoint also re-decodes greedily from the swapped image.
- **Region occlusion**: a grid of patches (``grid`` x ``grid``) or one rectangle is greyed, one variant per
  patch; the drop of each label's belief per patch and checkpoint is the heatmap drawn over the image.

This module builds the variants and says what they mean (no model work); ``core.perturb.visual_probe`` probes
them, a batch of ``batch_size`` variants per forward under each checkpoint. Variants of one study share
their text ids (an occluded image keeps its size, so its image tokens too).

    cfg = VisualConfig.from_world(world, kind="occlusion", traj_ids=["study-000"], grid=4)
    df = core.perturb.visual_probe.run(cfg)   # one row per trajectory x checkpoint x patch x label (the model work)
    swap_flip_rates(swaps)            # per true label and checkpoint: flip rate under image swaps
    python -m core.jobs.worker visual --config config.json --out result.parquet     # as a background job
    core.jobs.registry.launch(ws, "visual", cfg, VisualOptions(out=...))             # (core.perturb.job)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from core.errors import InputError
from core.io import answers
from core.models.spec import SeriesSpec

KINDS = ("swap", "occlusion")
SWAP_COLUMNS = ("traj_id", "checkpoint", "step", "gold", "image", "swapped_image", "swapped_label",
                "belief_original", "belief_swapped", "answer_before", "answer_after", "flipped")
OCCLUSION_COLUMNS = ("traj_id", "checkpoint", "step", "image", "patch", "x0", "y0", "x1", "y1", "label",
                     "belief", "base_belief", "drop", "probed_at")
OCCLUSION_AT = {"start": "before the CoT (image and prompt only)", "end": "at the end of the CoT"}


@dataclass
class VisualConfig(SeriesSpec):
    """One visual-drift job: the series (``SeriesSpec``), what to perturb and on which trajectories (saved as the
    job's JSON and beside its result)."""

    what: ClassVar[str] = "visual-drift config"

    kind: str = field(default="swap", metadata={"help": "swap: replace the image by other studies' images; "
                                                        "occlusion: grey patches one at a time", "choices": KINDS})
    data: str = field(default="", metadata={"help": "the trajectories (plain or ms-swift JSONL with images)",
                                            "path": True})
    traj_ids: list[str] = field(default_factory=list, metadata={
        "help": "trajectories to perturb; empty: every one (up to limit)", "flag": "--traj-id"})
    limit: int | None = field(default=None, metadata={"help": "the first N trajectories of the data only", "min": 1,
                                                      "none": "all"})
    labels: list[str] = field(default_factory=list, metadata={"help": "answer labels; empty: the labels in the "
                                                                      "data"})
    template: str = field(default=answers.DEFAULT.template, metadata={"help": "text the probe appends before a "
                                                                              "label"})
    positions: str = field(default="end", metadata={
        "help": "probe at the end of the CoT (end) or also at its sentence ends (sentence)",
        "choices": ("end", "sentence")})
    swap_to: list[str] = field(default_factory=list, metadata={
        "help": "swap: take images of these labels; empty: one of each other label"})
    donors_per_label: int = field(default=1, metadata={"help": "swap: how many other studies' images per label",
                                                       "min": 1})
    decode: bool = field(default=False, metadata={"help": "swap: also let each checkpoint write its own CoT from "
                                                          "the swapped image"})
    max_new_tokens: int = field(default=96, metadata={"help": "swap with decode: tokens each greedy completion "
                                                              "may write", "min": 1})
    grid: int = field(default=4, metadata={"help": "occlusion: patches per side (grid x grid variants per image)",
                                           "min": 1})
    region: list[int] | None = field(default=None, metadata={
        "help": "occlusion: one rectangle x0 y0 x1 y1 in image pixels instead of the grid"})
    fill: int | None = field(default=None, metadata={
        "help": "occlusion: grey level 0-255 of a covered patch; default: the image's mean", "min": 0, "max": 255,
        "none": "mean"})
    occlusion_at: str = field(default="start", metadata={
        "help": "occlusion: where the belief is read: 'start' (before the CoT: what the image and the prompt alone "
                "make the model believe; a CoT that names the answer drowns the image's effect by its end) or "
                "'end' (after the whole CoT)", "choices": tuple(OCCLUSION_AT)})
    batch_size: int = field(default=16, metadata={"help": "variants per forward pass", "min": 1})

    def __post_init__(self):
        # its own rules first: the error names what was set wrong before a missing base is mentioned
        if self.region is not None and (len(self.region) != 4 or self.region[0] >= self.region[2]
                                        or self.region[1] >= self.region[3] or min(self.region) < 0):
            raise ValueError(f"region: expected [x0, y0, x1, y1] with x0 < x1, y0 < y1, >= 0; got {self.region!r}")
        self.check_fields()
        super().__post_init__()
        if not self.data:
            raise ValueError("field 'data': expected the trajectories file, got an empty path")

    @classmethod
    def from_world(cls, world, dataset: str | None = None, **kw) -> VisualConfig:
        """The world's base, series and dataset (its default one unless ``dataset`` names another); ``world``: a
        loaded ``World`` or its folder."""
        if isinstance(world, (str, Path)):
            from core.workspace.world import load_world

            world = load_world(world)
        name = dataset or world.manifest.get("default_dataset") or next(iter(world.manifest["datasets"]))
        return cls(**{"base": str(world.base_model_dir), "checkpoints": world.checkpoints_arg,
                      "data": str(world.dataset_path(name)), **kw})

    @classmethod
    def from_analysis(cls, acfg, **kw) -> VisualConfig:
        """The series and data an analysis scored (a ``core.drift.analysis.AnalysisConfig``: its base, its
        checkpoints with any CPO run joined, its data file, labels, template and pixel limits): the lab's image
        section then perturbs the study its text section does, under the same checkpoints."""
        return cls(base=acfg.base, checkpoints=acfg.checkpoints or [], data=acfg.data, labels=list(acfg.labels),
                   template=acfg.template, device=acfg.device, dtype=acfg.dtype, min_pixels=acfg.min_pixels,
                   max_pixels=acfg.max_pixels, chat_template=acfg.chat_template, base_names=list(acfg.base_names),
                   trust_remote_code=acfg.trust_remote_code, **kw)


# ---- records and their image variants ---------------------------------------------------------------

def read_records(cfg: VisualConfig) -> list[dict]:
    """The config's trajectories with their images (``core.io.vl_records``), filtered by ``traj_ids``."""
    from core.io.vl_records import read_vl_records

    records = read_vl_records(cfg.data)
    if cfg.traj_ids:
        by_id = {r["id"]: r for r in records}
        missing = [t for t in cfg.traj_ids if t not in by_id]
        if missing:
            raise InputError(f"{cfg.data}: no trajectory {missing[0]!r} (traj_ids)")
        records = [by_id[t] for t in cfg.traj_ids]
    return records[: cfg.limit] if cfg.limit else records


def data_labels(cfg: VisualConfig, records: list[dict]) -> list[str]:
    labels = list(cfg.labels) or sorted({r["label"] for r in records if r.get("label")})
    if len(labels) < 2:
        raise InputError(f"{cfg.data}: expected at least two answer labels (a 'label' per record, or labels "
                         f"in the config), got {labels}")
    return labels


def image_paths(record: dict) -> list[str]:
    """A record's images as path strings (``images`` of the contract, or its ``image_refs``)."""
    return [str(r.path) for r in record.get("image_refs") or []] or list(record.get("images") or [])


def swap_image(record: dict, donor: dict) -> dict:
    """``record`` with ``donor``'s images in place of its own; the text (prompt with its ``<image>``
    placeholders, CoT) unchanged. The donor must have as many images."""
    own, new = record.get("image_refs") or [], donor.get("image_refs") or []
    if len(own) != len(new) or not own:
        raise InputError(f"trajectory {record['id']}: cannot take the images of {donor['id']} "
                         f"({len(own)} image(s) here, {len(new)} there)")
    return {**record, "id": f"{record['id']}#swap:{donor['id']}", "image_refs": list(new),
            "images": [str(r.path) for r in new], "method": "image_swap",
            "swap": {"donor": donor["id"], "label": donor.get("label")}}


def donors(record: dict, pool: list[dict], labels: list[str], swap_to: list[str], per_label: int) -> list[dict]:
    """Other studies whose images ``record`` takes: ``per_label`` of each label in ``swap_to`` (empty: of
    each label but its own), in data order; a study with other images, and as many of them."""
    targets = list(swap_to) or [lab for lab in labels if lab != record.get("label")]
    own = set(image_paths(record))
    out = []
    for label in targets:
        found = [d for d in pool if d.get("label") == label and d["id"] != record["id"]
                 and not own & set(image_paths(d)) and len(image_paths(d)) == len(own)]
        out += found[:per_label]
    return out


def grid_boxes(width: int, height: int, n: int) -> list[tuple[int, int, int, int]]:
    """``n`` x ``n`` patches covering the image, row by row: (x0, y0, x1, y1), x1/y1 exclusive."""
    xs = np.linspace(0, width, n + 1).round().astype(int)
    ys = np.linspace(0, height, n + 1).round().astype(int)
    return [(int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1])) for r in range(n) for c in range(n)]


def occlude(image, box: tuple[int, int, int, int], fill: int | None = None):
    """A copy of the PIL ``image`` with ``box`` greyed (``fill``, else the image's mean grey level)."""
    from PIL import ImageDraw

    out = image.copy()
    grey = int(round(np.asarray(image.convert("L")).mean())) if fill is None else int(fill)
    ImageDraw.Draw(out).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(grey, grey, grey))
    return out


def occluded_encodings(proc, enc, image, boxes: list[tuple], fill: int | None, first: int = 0) -> list:
    """One ``VLEncoded`` per box (``#patch<first + k>``): the same ids (same image size, so the same image
    tokens), the occluded image's pixels."""
    out = []
    for k, box in enumerate(boxes, start=first):
        pixels, grid = proc.pixels([occlude(image, box, fill)])
        if not np.array_equal(grid.numpy(), enc.image_grid_thw.numpy()):  # cannot happen: the size is kept
            raise RuntimeError(f"trajectory {enc.id}: occlusion changed the image grid")
        out.append(dataclasses.replace(enc, id=f"{enc.id}#patch{k}", pixel_values=pixels, images_key=""))
    return out


# ---- summaries, the job --------------------------------------------------------------------------------

def swap_flip_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Per true label (category) and checkpoint, at the end of the CoT: n swaps, the flip rate (the answer
    changed), the share whose answer *became* the swapped image's label (``follows_image``: flips only, so
    never above the flip rate; an answer that already was that label with the study's own image did not
    follow the image) and the mean change of the belief in the true label."""
    end = df[df["is_end"]] if "is_end" in df else df
    g = end.assign(follows=end["flipped"].astype(bool) & (end["answer_after"] == end["swapped_label"]),
                   change=end["belief_original"] - end["belief_before"])
    out = g.groupby(["gold", "checkpoint", "step"]).agg(
        n=("flipped", "size"), flip_rate=("flipped", "mean"), follows_image=("follows", "mean"),
        belief_change=("change", "mean")).reset_index()
    return out.rename(columns={"gold": "category"}).sort_values(["category", "step"]).reset_index(drop=True)


def strongest_label(rows: pd.DataFrame) -> str:
    """Of one study's occlusion rows, the label whose belief a patch moves most (largest ``|drop|`` under any
    checkpoint): the one to draw first, where the image's effect shows (the gold label's belief can be near
    zero before the CoT, and so cannot drop)."""
    return str(rows.loc[rows["drop"].abs().idxmax(), "label"])


def top_patches(rows: pd.DataFrame, label: str) -> pd.DataFrame:
    """Per checkpoint (in step order), the patch whose greying lowers the belief in ``label`` most."""
    part = rows[rows["label"] == label].sort_values(["step", "drop"], ascending=[True, False])
    return part.groupby("checkpoint", sort=False).head(1)[
        ["checkpoint", "step", "patch", "x0", "y0", "x1", "y1", "base_belief", "belief", "drop"]].reset_index(drop=True)


def cost_text(meta: dict, kind: str) -> str:
    """What a result cost, in words: variants x checkpoints, seconds, per image x checkpoint."""
    n, k, s = meta.get("variants", 0), meta.get("checkpoints", 0), meta.get("seconds", 0.0)
    per = s / max(1, meta.get("trajectories", 0) * k)
    what = "swapped images" if kind == "swap" else "occluded variants"
    return (f"{n} {what} x {k} checkpoints in {s:.1f} s on {meta.get('device', '?')} "
            f"({per:.2f} s per study x checkpoint)")


def sidecar(out: str | Path) -> Path:
    """The file beside a result table that keeps its config and cost: ``<name>.visual.json``."""
    return Path(out).with_name(Path(out).stem + ".visual.json")


def check_output(out: Path, force: bool, kind: str) -> None:
    """Before any work: ``out`` is new or (with ``force``) a table this workbench wrote, and so is its
    sidecar; nothing else is ever overwritten."""
    from core.io.outputs import check_result_file

    check_result_file(out, force, SWAP_COLUMNS if kind == "swap" else OCCLUSION_COLUMNS)
    side = sidecar(out)
    if side.exists() and "config" not in _json(side):
        raise InputError(f"{side}: a file the workbench did not write is there; nothing was changed. "
                         "Choose another --out")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_result(df: pd.DataFrame, cfg: VisualConfig, out: str | Path) -> Path:
    """The table as parquet at ``out`` and, beside it (``sidecar``), its config and cost (``df.attrs``)."""
    from core.io.cache import atomic_write_text, write_parquet

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(df, out)
    atomic_write_text(sidecar(out), json.dumps({"config": asdict(cfg), **df.attrs}, indent=1))
    return out


def read_result(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """A result table and its sidecar (config and cost; empty if it is missing or unreadable)."""
    path = Path(path)
    meta = _json(sidecar(path))
    try:
        return pd.read_parquet(path), meta
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read this visual-drift result ({e})") from None


def results_dir(workspace, world) -> Path:
    """Where the Perturbation lab keeps a world's visual-drift results: ``perturbations/visual/<world>/``
    (``world``: a world, or its name)."""
    import re

    name = world if isinstance(world, str) else world.name
    return workspace.perturbations_dir / "visual" / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "world")


def result_path(folder: str | Path, cfg: VisualConfig) -> Path:
    """Where a job writes its table: one parquet per (kind, data, trajectories, settings), so the same job
    run again replaces its own result and a different one never does."""
    import hashlib
    import re

    what = asdict(cfg)
    for k in ("device", "dtype", "batch_size", "trust_remote_code"):  # how it runs, not what it measures
        what.pop(k)
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]
    who = cfg.traj_ids[0] if len(cfg.traj_ids) == 1 else f"{len(cfg.traj_ids) or cfg.limit or 'all'}"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{cfg.kind}-{Path(cfg.data).stem}-{who}").strip("-")
    return Path(folder) / f"{slug}-{digest}.parquet"


def list_results(folder: str | Path) -> list[Path]:
    """Finished result tables under ``folder``, newest first."""
    found = [p for p in Path(folder).glob("*.parquet") if p.name.split("-", 1)[0] in KINDS]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def result_kind(path: str | Path) -> str:
    return Path(path).name.split("-", 1)[0]
