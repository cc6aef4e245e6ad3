"""The config of a drift analysis (``AnalysisConfig``), saved as ``config.json`` in its folder and as a scoring or
perturbation job's ``config.json``. Light to import (no torch): the command line, the job registry and the pages'
forms read it; the analysis itself is ``core.drift.analysis``.

    cfg = AnalysisConfig(base="sample_data/model", checkpoints="sample_data/rft", data="sample_data/data/test.jsonl")
    cfg = AnalysisConfig.from_world("sample_data", limit=8)      # a world's base, checkpoints, test set and graph
    cfg = AnalysisConfig.load("out/")                            # an analysis folder (relative paths resolved there)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from core.config import parse_json
from core.errors import InputError
from core.io import answers
from core.models.spec import SeriesSpec

POSITION_MODES = ("every", "sentence", "end")  # probe positions (core.drift.probe)
TAU = 0.05  # effect drift beyond which a position is detrimental / beneficial (core.drift.findings)


@dataclass
class AnalysisConfig(SeriesSpec):
    """One analysis: the series (``SeriesSpec``), the trajectories, and how to score and probe them."""

    what: ClassVar[str] = "analysis config"

    data: str = field(metadata={"help": "trajectories JSONL (prompt, completion, label), or any format "
                                        "core.io.trajectories reads", "path": True})
    graph: str | None = field(default=None, metadata={"help": "concept graph (node-link JSON): its diseases are "
                                                              "the default labels, its findings the concepts",
                                                      "path": True})
    labels: list[str] = field(default_factory=list, metadata={"help": "answer labels; default: the graph's "
                                                                      "diseases, else the labels in the data"})
    template: str = field(default=answers.DEFAULT.template, metadata={
        "help": "the answer template appended at each probe position", "label": "Answer template"})
    answer_format: dict = field(default_factory=dict, metadata={
        "help": "how the completions state their answer, read for records without a label (world.json's "
                "answer_format: pattern, sentence, template, bare); empty: the authors' sentence or a bare answer",
        "label": "Answer format"})
    positions: str = field(default="every", metadata={
        "help": "probe positions: every token (finest, slowest), sentence ends, or only the end of the CoT",
        "choices": POSITION_MODES, "label": "Probe positions"})
    include_prompt: bool = field(default=True, metadata={
        "help": "probe inside the prompt too (where a report's findings are read); off: the CoT only",
        "label": "Probe inside the report too"})
    top_k: int = field(default=5, metadata={"help": "alternatives kept per token", "min": 0, "max": 50,
                                            "label": "Top-k alternatives"})
    batch_size: int | None = field(default=None, metadata={
        "help": "trajectories per scoring pass; auto: the most that the free device memory holds, by estimate (a "
                "run that cannot fit is refused first)", "min": 1, "none": "auto"})
    limit: int | None = field(default=None, metadata={"help": "the first N trajectories only", "min": 1,
                                                      "none": "all"})
    tau: float = field(default=TAU, metadata={"help": "effect drift beyond which a position is detrimental / "
                                                      "beneficial", "gt": 0, "lt": 1})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.answers  # noqa: B018  a bad answer format is refused here, naming the field

    @property
    def answers(self) -> answers.AnswerFormat:
        """The answer format records without a label are read with (``core.io.answers``)."""
        return answers.AnswerFormat.from_dict(self.answer_format or None, "answer_format")

    @classmethod
    def from_world(cls, root, dataset: str | None = None, **overrides) -> AnalysisConfig:
        """A world's base, checkpoints, dataset (its default one unless ``dataset`` names another) and graph;
        ``root``: the world folder or a loaded ``World``."""
        from core.workspace.world import load_world

        w = load_world(root) if isinstance(root, (str, Path)) else root
        name = dataset or w.manifest.get("default_dataset", "test")
        fields = dict(base=str(w.base_model_dir), checkpoints=w.checkpoints_arg, data=str(w.dataset_path(name)),
                      graph=str(w.graph_path), base_names=[w.manifest.get("base_model_name", "")],
                      **w.answer_settings())  # the probe asks, and answers are read, as its completions answer
        return cls(**{**fields, **overrides})

    @classmethod
    def load(cls, path: str | Path) -> AnalysisConfig:
        """A config saved as JSON; an analysis folder (or its config.json): relative paths resolved there."""
        path = Path(path)
        if path.is_dir() or path.name == "config.json":
            return load_folder_config(path if path.is_dir() else path.parent)
        return super().load(path)


def load_folder_config(out: Path) -> AnalysisConfig:
    """An analysis folder's config, its relative paths (a portable analysis) resolved against the folder."""
    source = out / "config.json"
    if not source.is_file():
        raise InputError(f"{out}: not an analysis folder (expected config.json and tokens.parquet)")
    try:
        data = parse_json(source.read_text(encoding="utf-8-sig"), str(source), AnalysisConfig.what)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{source}: cannot read the analysis config ({e})") from None
    if isinstance(data, dict):
        for key in AnalysisConfig.path_fields():
            value = data.get(key)
            if isinstance(value, list):
                data[key] = [str((out / v).resolve()) if isinstance(v, str) else v for v in value]
            elif isinstance(value, str) and value:
                data[key] = str((out / value).resolve())
    return AnalysisConfig.from_dict(data, str(source))

