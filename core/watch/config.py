"""The scorer's settings (``WatchConfig``), saved as ``config.json`` in the watch's output folder.

Light to import (no torch): the command line generates its flags from these fields (their help texts), the page
shows them, and the scorer (a background job) runs from the saved file, so no setting is lost on the way.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from core.errors import InputError
from core.io import jsonsafe
from core.io.paths import expand_optional

KEEP = ("adapters", "all", "none")  # core.watch.callback.KEEP (the callback file imports nothing of ours)
POSITIONS = ("every", "sentence", "end")  # core.drift.probe.POSITION_MODES


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class WatchConfig:
    """One watch: what to follow, what to score it on, when to raise an alarm."""

    run: str = _help("the callback's watch folder (watch.json), or a trainer's output folder to follow "
                     "(TRL/HF checkpoint-N/, ms-swift vN-DATE/checkpoint-N/, verl global_step_N/actor/)")
    base: str | None = _help("base model folder (config.json, weights, tokenizer); default: the world's", default=None)
    data: str | None = _help("probe set: trajectories (JSONL, messages, CCF, parquet...); default: the world's "
                             "default dataset", default=None)
    out: str | None = _help("output folder (status, alarms, the growing analysis); default: the watch folder "
                            "itself, required when following a trainer's folder", default=None)
    world: str | None = _help("a world folder: base, probe set, concept graph and answer format from it", default=None)
    graph: str | None = _help("concept graph JSON (the concept alarm, answer labels)", default=None)
    labels: list[str] = _help("answer labels (default: the graph's diseases, else the data's labels)",
                              default_factory=list)
    limit: int = _help("studies in the probe set (the first N of the data)", default=64)
    positions: str = _help("probe positions: every token, sentence ends, or the end of the CoT", default="every")
    device: str | None = _help("where the scorer runs: cuda, cuda:1, cpu, mps (default: auto)", default=None)
    dtype: str | None = _help("float32, bfloat16, float16 (default: bf16 on CUDA)", default=None)
    batch_size: int | None = _help("trajectories per scoring pass (default: the most that fit)", default=None)
    top_k: int = _help("alternatives kept per token", default=5)
    keep: str = _help("following a folder: what stays once scored (adapters | all | none); the callback's own "
                      "setting rules its watch folder", default="adapters")
    decode: int = _help("studies answered by greedy decoding per step (malformed answers; 0: off)", default=16)
    once: bool = _help("score what is there, then exit", default=False)
    poll: float = _help("seconds between looks for a new checkpoint", default=2.0)
    idle_exit: float | None = _help("following a folder: exit after this many seconds without a new checkpoint "
                                    "(default: run until cancelled; a callback's watch ends with its trainer)",
                                    default=None)
    settle: float = _help("following a folder: seconds a checkpoint's files must stay unchanged to count as "
                          "complete (when the trainer writes no completion mark)", default=5.0)
    trust_remote_code: bool = _help("run code shipped with the model (off unless asked)", default=False)
    # alarm thresholds (core.watch.alarms): defaults fire on the sample world's shortcut, stay quiet when stationary
    belief_drop: float = _help("belief_fall: the mean final gold-answer belief fell by more than this since the "
                               "previous step", default=0.1)
    page_hinkley: float = _help("belief_fall: the Page-Hinkley detector's threshold on the mean final gold belief "
                                "(core.drift.findings.page_hinkley; the engine's default)", default=0.1)
    detrimental_rise: float = _help("detrimental_rise: the detrimental share rose by more than this since the "
                                    "previous step", default=0.025)
    concept_drop: float = _help("concept_surge: one concept's mean effect drift fell by more than this since the "
                                "previous step", default=0.15)
    concept_min: int = _help("concept_surge: mentions a concept needs in the probe set", default=8)
    entropy_ratio: float = _help("entropy_collapse: mean CoT entropy under this share of the base's", default=0.5)
    kl_jump: float = _help("kl_jump: KL to the previous step above this many times its median so far", default=3.0)
    kl_min: float = _help("kl_jump: ... and above this many nats", default=0.25)
    malformed_share: float = _help("malformed: share of decoded answers that give no label above this",
                                   default=0.2)

    def __post_init__(self) -> None:
        for name in ("run", "base", "data", "out", "world", "graph"):
            value = getattr(self, name)
            if isinstance(value, (str, Path)):
                setattr(self, name, expand_optional(str(value)))
        checks = [("run", isinstance(self.run, str) and self.run.strip() != "", "a folder"),
                  ("limit", _int(self.limit) and self.limit > 0, "a positive integer"),
                  ("positions", self.positions in POSITIONS, f"one of {', '.join(POSITIONS)}"),
                  ("keep", self.keep in KEEP, f"one of {', '.join(KEEP)}"),
                  ("decode", _int(self.decode) and self.decode >= 0, "an integer >= 0"),
                  ("top_k", _int(self.top_k) and 0 <= self.top_k <= 50, "0..50"),
                  ("batch_size", self.batch_size is None or (_int(self.batch_size) and self.batch_size > 0),
                   "null or a positive integer"),
                  ("poll", _num(self.poll) and self.poll > 0, "a positive number of seconds"),
                  ("settle", _num(self.settle) and self.settle >= 0, "a number of seconds >= 0"),
                  ("idle_exit", self.idle_exit is None or (_num(self.idle_exit) and self.idle_exit > 0),
                   "null or a positive number of seconds"),
                  ("labels", isinstance(self.labels, list) and all(isinstance(x, str) for x in self.labels),
                   "a list of label strings"),
                  ("concept_min", _int(self.concept_min) and self.concept_min > 0, "a positive integer")]
        for name in ("belief_drop", "page_hinkley", "detrimental_rise", "concept_drop", "kl_min"):
            checks.append((name, _num(getattr(self, name)) and getattr(self, name) > 0, "a positive number"))
        for name in ("entropy_ratio", "malformed_share"):
            checks.append((name, _num(getattr(self, name)) and 0 < getattr(self, name) < 1, "a number in (0, 1)"))
        checks.append(("kl_jump", _num(self.kl_jump) and self.kl_jump > 1, "a number > 1"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"field {name!r}: expected {expected}, got {getattr(self, name)!r}")

    @classmethod
    def field_help(cls, name: str) -> str:
        return next((f.metadata.get("help", "") for f in fields(cls) if f.name == name), "")

    def save(self, path: str | Path) -> None:
        from core.io.cache import atomic_write_text

        atomic_write_text(Path(path), json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> WatchConfig:
        """A saved config; unknown or bad fields raise InputError naming the file and the field."""
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not a readable watch config ({e})") from None
        data = jsonsafe.loads(text, str(path))
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object of WatchConfig fields")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(f"{path}: unknown field {unknown[0]!r}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise InputError(f"{path}: {e}") from None


PATH_FIELDS = ("run", "base", "data", "out", "world", "graph")


def add_arguments(parser) -> None:
    """One ``--flag`` per ``WatchConfig`` field, its help text from the field (every flag defaults to None: a config
    holds the flags given and its own defaults for the rest, ``from_args``)."""
    import typing

    from core.io.paths import expand

    hints = typing.get_type_hints(WatchConfig)
    for f in fields(WatchConfig):
        flag, kind, help_ = "--" + f.name.replace("_", "-"), hints[f.name], f.metadata.get("help", "")
        if f.default not in (MISSING, None) and kind is not bool:
            help_ += f" (default {f.default})"
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_)
        elif f.name == "labels":
            parser.add_argument(flag, nargs="*", default=None, help=help_)
        else:
            parser.add_argument(flag, type=expand if f.name in PATH_FIELDS else _scalar(kind), default=None, help=help_)


def from_args(args) -> WatchConfig:
    """A ``WatchConfig`` from parsed flags (``add_arguments``): the flags given, the defaults for the rest."""
    given = {f.name: getattr(args, f.name) for f in fields(WatchConfig) if getattr(args, f.name, None) is not None}
    given = {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}
    if "run" not in given:
        raise InputError("watch: give --run DIR (a callback's watch folder or a trainer's output folder)")
    try:
        return WatchConfig(**given)
    except ValueError as e:
        raise InputError(str(e)) from None


def _scalar(kind):
    """The argparse type of a field annotated ``int``, ``float | None``, ``str | None`` ..."""
    import typing

    args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
    return args[0] if args[0] in (int, float) else str


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
