"""The scorer's settings (``WatchConfig``), saved as ``config.json`` in the watch's output folder.

Light to import (no torch). A ``core.config.ConfigBase``: the command line's flags (``workbench watch``, ``python -m
core.jobs.worker watch``) come from these fields and their help, and the scorer (job kind ``watch`` of
``core.jobs.registry``) runs from the saved file, so no setting is lost on the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.config import ConfigBase
from core.io.paths import expand_fields

KEEP = ("adapters", "all", "none")  # core.watch.callback.KEEP (the callback file imports nothing of ours)
POSITIONS = ("every", "sentence", "end")  # core.drift.probe.POSITION_MODES


def _help(text: str, path: bool = False, **kw):
    meta = {"help": text, **({"path": True} if path else {})}
    for key in ("choices", "min", "max", "gt", "lt", "none"):
        if key in kw:
            meta[key] = kw.pop(key)
    return field(metadata=meta, **kw)


@dataclass
class WatchConfig(ConfigBase):
    """One watch: what to follow, what to score it on, when to raise an alarm."""

    what: ClassVar[str] = "watch config"

    run: str = _help("the callback's watch folder (watch.json), or a trainer's output folder to follow "
                     "(TRL/HF checkpoint-N/, ms-swift vN-DATE/checkpoint-N/, verl global_step_N/actor/)", path=True)
    base: str | None = _help("base model folder (config.json, weights, tokenizer); default: the world's", path=True, default=None)
    data: str | None = _help("probe set: trajectories (JSONL, messages, CCF, parquet...); default: the world's "
                             "default dataset", path=True, default=None)
    out: str | None = _help("output folder (status, alarms, the growing analysis); default: the watch folder "
                            "itself, required when following a trainer's folder", path=True, default=None)
    world: str | None = _help("a world folder: base, probe set, concept graph and answer format from it", path=True,
                              default=None)
    graph: str | None = _help("concept graph JSON (the concept alarm, answer labels)", path=True, default=None)
    labels: list[str] = _help("answer labels (default: the graph's diseases, else the data's labels)",
                              default_factory=list)
    limit: int = _help("studies in the probe set (the first N of the data)", min=1, default=64)
    positions: str = _help("probe positions: every token, sentence ends, or the end of the CoT", choices=POSITIONS,
                             default="every")
    device: str | None = _help("where the scorer runs: cuda, cuda:1, cpu, mps (default: auto)", none="auto",
                               default=None)
    dtype: str | None = _help("float32, bfloat16, float16 (default: bf16 on CUDA)",
                              choices=("float32", "bfloat16", "float16"), default=None)
    batch_size: int | None = _help("trajectories per scoring pass (default: the most that fit)", min=1,
                                   none="auto", default=None)
    top_k: int = _help("alternatives kept per token", min=0, max=50, default=5)
    keep: str = _help("following a folder: what stays once scored (adapters | all | none); the callback's own "
                      "setting rules its watch folder", choices=KEEP, default="adapters")
    decode: int = _help("studies answered by greedy decoding per step (malformed answers; 0: off)", min=0,
                        default=16)
    once: bool = _help("score what is there, then exit", default=False)
    poll: float = _help("seconds between looks for a new checkpoint", gt=0, default=2.0)
    idle_exit: float | None = _help("following a folder: exit after this many seconds without a new checkpoint "
                                    "(default: run until cancelled; a callback's watch ends with its trainer)",
                                    gt=0, none="never", default=None)
    settle: float = _help("following a folder: seconds a checkpoint's files must stay unchanged to count as "
                          "complete (when the trainer writes no completion mark)", min=0, default=5.0)
    trust_remote_code: bool = _help("run code shipped with the model (off unless asked)", default=False)
    # alarm thresholds (core.watch.alarms): defaults fire on the sample world's shortcut, stay quiet when stationary
    belief_drop: float = _help("belief_fall: the mean final gold-answer belief fell by more than this since the "
                               "previous step", gt=0, default=0.1)
    page_hinkley: float = _help("belief_fall: the Page-Hinkley detector's threshold on the mean final gold belief "
                                "(core.drift.findings.page_hinkley; the engine's default)", gt=0, default=0.1)
    detrimental_rise: float = _help("detrimental_rise: the detrimental share rose by more than this since the "
                                    "previous step", gt=0, default=0.025)
    concept_drop: float = _help("concept_surge: one concept's mean effect drift fell by more than this since the "
                                "previous step", gt=0, default=0.15)
    concept_min: int = _help("concept_surge: mentions a concept needs in the probe set", min=1, default=8)
    entropy_ratio: float = _help("entropy_collapse: mean CoT entropy under this share of the base's", gt=0, lt=1,
                                 default=0.5)
    kl_jump: float = _help("kl_jump: KL to the previous step above this many times its median so far", gt=1,
                           default=3.0)
    kl_min: float = _help("kl_jump: ... and above this many nats", gt=0, default=0.25)
    malformed_share: float = _help("malformed: share of decoded answers that give no label above this",
                                   gt=0, lt=1, default=0.2)

    def __post_init__(self) -> None:
        super().__post_init__()  # bounds and choices, from the metadata
        expand_fields(self)
        if not isinstance(self.run, str) or not self.run.strip():
            raise ValueError(f"field 'run': expected a folder, got {self.run!r}")
