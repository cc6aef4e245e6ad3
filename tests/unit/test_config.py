"""The config base (core.config): every config saves and loads exactly, refuses what it does not know by one rule,
loads the names an earlier version wrote, and generates its flags and form fields from its fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from core.config import ConfigBase, field_type
from core.counterfactuals.batch import BatchConfig, BatchOptions
from core.counterfactuals.expert import ExpertConfig
from core.cpo.config import TrainConfig
from core.cpo.config import TrainOptions
from core.drift.config import AnalysisConfig
from core.drift.job import ScoreOptions
from core.errors import InputError
from core.perturb.job import PerturbOptions, VisualOptions
from core.perturb.visual import VisualConfig
from core.watch.config import WatchConfig
from core.watch.job import WatchOptions

# one instance of every config class, its fields away from their defaults where a flag can say it
EXAMPLES = {
    AnalysisConfig: AnalysisConfig(base="/m/base", data="/d/test.jsonl", checkpoints=["/r/c-2", "/r/c-4"],
                                   graph="/g.json", labels=["Edema", "Pneumonia"], template=" Answer:",
                                   positions="sentence", include_prompt=False, top_k=7, batch_size=4, limit=9,
                                   device="cpu", dtype="float32", base_names=["hub/base"], trust_remote_code=True,
                                   tau=0.2, chat_template=False, min_pixels=28 * 28, max_pixels=112 * 112),
    TrainConfig: TrainConfig(base_model="/m/base", data="/p.jsonl", output_dir="/runs/a", init_adapter="/r/c-4",
                             objective="cpo++", negatives="random", max_steps=5, learning_rate=1e-4, beta=0.2,
                             cpo_alpha=0.5, batch_size=2, gradient_accumulation_steps=3, max_length=64, lora_r=4,
                             lora_alpha=8, bf16=False, seed=3, save_steps=2, logging_steps=2, resume=True,
                             base_names=["b"], gradient_checkpointing=True, source_weights={"image_swap": 0.5},
                             min_pixels=784, max_pixels=4 * 784),
    VisualConfig: VisualConfig(kind="occlusion", base="/m/vl", checkpoints="/r", data="/d.jsonl",
                               traj_ids=["s-1", "s-2"], limit=3, labels=["A", "B"], template=" Answer:",
                               positions="sentence", swap_to=["B"], donors_per_label=2, decode=True, max_new_tokens=8,
                               grid=2, region=[0, 0, 8, 8], fill=128, batch_size=4, device="cpu", dtype="float32",
                               min_pixels=784, max_pixels=4 * 784, chat_template=False, base_names=["x"],
                               trust_remote_code=True),
    BatchConfig: BatchConfig(workspace="/ws", world="/w", dataset="test", n=5, mode="one", target="Edema",
                             method="llm", expert_checkpoint="checkpoint-2", expert={"temperature": 0.5}),
    ExpertConfig: ExpertConfig(temperature=0.5, top_p=0.9, max_new_tokens=12, seed=4, graph_scope="all"),
    ScoreOptions: ScoreOptions(out="/o", force=True, workspace="/ws", cache=False, shard="1/2", merge=True),
    PerturbOptions: PerturbOptions(out="/o.parquet", find="opacity", replace="shadow", mode="probe", force=True,
                                   shard="0/2", merge=True),
    VisualOptions: VisualOptions(out="/v.parquet", force=True),
    TrainOptions: TrainOptions(evaluate="/w", evaluate_limit=20),
    BatchOptions: BatchOptions(),
    WatchConfig: WatchConfig(run="/r/watch", base="/m/base", data="/d.jsonl", out="/o", graph="/g.json",
                             labels=["Edema", "Pneumonia"], limit=9, positions="sentence", device="cpu",
                             dtype="float32", batch_size=4, top_k=7, keep="none", decode=0, once=True, poll=0.5,
                             idle_exit=30.0, settle=1.0, trust_remote_code=True, belief_drop=0.2, page_hinkley=0.3,
                             detrimental_rise=0.05, concept_drop=0.1, concept_min=4, entropy_ratio=0.4, kl_jump=2.0,
                             kl_min=0.5, malformed_share=0.3),
    WatchOptions: WatchOptions(workspace="/ws"),
}
CLASSES = list(EXAMPLES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_config_round_trips_exactly(cls, tmp_path):
    cfg = EXAMPLES[cls]
    path = cfg.save(tmp_path / "config.json" if cls is not AnalysisConfig else tmp_path / "analysis.json")
    back = cls.load(path)
    assert back == cfg and back.to_json() == path.read_text()  # equal, and saved again byte for byte
    assert cls.from_dict(json.loads(path.read_text()), str(path)) == cfg
    assert all(not f.name.startswith("_") for f in dataclasses.fields(cls))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_field_has_help_text_in_its_metadata(cls):
    missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
    assert missing == [], f"{cls.__name__}: fields without metadata help: {missing}"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_an_unknown_key_is_refused_naming_the_key_the_file_and_the_known_fields(cls, tmp_path):
    data = {**EXAMPLES[cls].to_dict(), "colour": 1}
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=rf"c\.json: unknown field 'colour' in the {cls.what} \(known: .+\)") as e:
        cls.load(tmp_path / "c.json")
    assert all(f.name in str(e.value) for f in dataclasses.fields(cls))


@dataclass
class _Run(ConfigBase):
    what: ClassVar[str] = "test run config"
    renamed: ClassVar[dict] = {"lr": "learning_rate", "warmup": None}

    data: str = field(metadata={"help": "pairs"})
    learning_rate: float = field(default=2e-5, metadata={"help": "step size", "gt": 0})
    steps: int = field(default=10, metadata={"help": "steps", "min": 1})
    pixels: int | None = field(default=None, metadata={"help": "pixels", "min": 784})
    device: str | None = field(default=None, metadata={"help": "device", "none": "auto", "choices": ("cpu", "cuda")})
    names: list[str] = field(default_factory=list, metadata={"help": "names", "flag": "--name"})
    paths: str | list[str] | None = field(default=None, metadata={"help": "one path or several"})
    weights: dict[str, float] = field(default_factory=dict, metadata={"help": "weights"})
    on: bool = field(default=True, metadata={"help": "switch"})


def test_earlier_names_load_and_removed_fields_are_dropped():
    old = _Run.from_dict({"data": "d", "lr": 0.1, "warmup": 5}, "old.json")
    assert old == _Run(data="d", learning_rate=0.1)
    with pytest.raises(InputError, match="old.json: both 'lr' .* and 'learning_rate' are given"):
        _Run.from_dict({"data": "d", "lr": 0.1, "learning_rate": 0.2}, "old.json")


@pytest.mark.parametrize("data, message", [
    ({"data": "d", "steps": "five"}, "field 'steps': expected an integer, got 'five'"),
    ({"data": "d", "steps": True}, "field 'steps': expected an integer, got True"),
    ({"data": "d", "learning_rate": "fast"}, "field 'learning_rate': expected a number, got 'fast'"),
    ({"data": "d", "names": ["a", 1]}, "field 'names': expected a list of text, got"),
    ({"data": "d", "paths": 3}, "field 'paths': expected null or text or a list of text, got 3"),
    ({"data": "d", "weights": {"a": "x"}}, "field 'weights': expected an object, got"),
    ({"data": "d", "on": "yes"}, "field 'on': expected true or false, got 'yes'"),
    ({"data": "d", "steps": 0}, "field 'steps': expected a positive integer, got 0"),
    ({"data": "d", "learning_rate": 0}, "field 'learning_rate': expected a positive number, got 0"),
    ({"data": "d", "pixels": 100}, "field 'pixels': expected null or an integer >= 784, got 100"),
    ({"data": "d", "device": "tpu"}, "field 'device': expected one of cpu, cuda, got 'tpu'"),
    ({"steps": 3}, "missing field 'data' \\(pairs\\)"),
    ([1, 2], "not a valid test run config \\(expected a JSON object of its fields, got list\\)"),
])
def test_bad_values_are_named_by_field_and_file(data, message):
    with pytest.raises(InputError, match=f"^run.json: {message}"):
        _Run.from_dict(data, "run.json")


def test_broken_and_deeply_nested_files_are_named(tmp_path):
    (tmp_path / "a.json").write_text('{"data": "d",\n "steps": }')
    with pytest.raises(InputError, match=r"a\.json: not a valid test run config \(not valid JSON at line 2"):
        _Run.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"data": "d", "weights": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(InputError, match=r"b\.json: not a valid test run config \(JSON nested too deeply\)"):
        _Run.load(tmp_path / "b.json")
    with pytest.raises(InputError, match=r"missing\.json: cannot read the test run config"):
        _Run.load(tmp_path / "missing.json")
    assert _Run.from_dict({"data": "d", "device": "auto"}).device is None  # the none word, as a person writes it


def test_save_is_atomic_and_never_leaves_a_partial_file(tmp_path, monkeypatch):
    import core.atomic

    path = _Run(data="d").save(tmp_path / "run.json")
    before = path.read_text()

    def crash(tmp, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(core.atomic.os, "replace", crash)
    with pytest.raises(OSError):
        _Run(data="other").save(path)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"}


@pytest.mark.parametrize("cls", CLASSES + [_Run], ids=lambda c: c.__name__)
def test_the_flags_are_the_fields_and_give_the_config_back(cls):
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    assert set(_flags(parser)) == {f.name for f in dataclasses.fields(cls)}  # one flag per field, no other
    cfg = EXAMPLES.get(cls) or _Run(data="d", learning_rate=0.5, steps=3, pixels=1000, device="cuda", names=["a", "b"],
                                    paths=["p", "q"], weights={"x": 2.0}, on=False)
    ns = parser.parse_args(cfg.to_argv())
    assert cls.from_args(ns) == cfg
    assert cls.from_args(parser.parse_args([]), base=cfg) == cfg  # nothing given: the base as it is


def test_flag_forms_none_words_lists_and_overrides():
    parser = argparse.ArgumentParser()
    _Run.add_arguments(parser)
    ns = parser.parse_args(["--data", "d", "--device", "auto", "--name", "a", "--name", "b", "c", "--no-on",
                            "--paths", "one", "--weights", '{"x": 1}'])
    assert _Run.from_args(ns) == _Run(data="d", names=["a", "b", "c"], on=False, paths="one", weights={"x": 1})
    base = _Run(data="file", steps=4)
    assert _Run.from_args(parser.parse_args(["--steps", "7"]), base=base) == _Run(data="file", steps=7)
    with pytest.raises(InputError, match=r"missing --data \(pairs\); or give --config"):
        _Run.from_args(parser.parse_args([]), hint="or give --config")
    with pytest.raises(InputError, match="field 'steps': expected a positive integer, got 0"):
        _Run.from_args(parser.parse_args(["--data", "d", "--steps", "0"]))
    for bad in (["--steps", "x"], ["--device", "tpu"], ["--weights", "[1]"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    options = argparse.ArgumentParser()
    ScoreOptions.add_arguments(options, overrides=False)  # options: the one flag that changes a default
    assert {"--force", "--no-cache", "--merge"} <= set(_flags(options).values()) and "--no-force" not in str(options.format_usage())


def test_form_fields_describe_every_field_for_a_page():
    form = {f.name: f for f in TrainConfig.form_fields()}
    assert list(form) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert form["objective"].kind == "choice" and set(form["objective"].descriptions) == {"cpo", "cpo++", "sft"}
    assert form["max_steps"].kind == "int" and form["max_steps"].bounds == {"min": 1} and form["max_steps"].default == 60
    assert form["learning_rate"].label == "Learning rate" and form["cpo_alpha"].label == "NLL weight (cpo_alpha)"
    assert form["bf16"].kind == "bool" and form["bf16"].optional and form["source_weights"].kind == "dict"
    analysis = {f.name: f for f in AnalysisConfig.form_fields(["device", "batch_size", "checkpoints"])}
    assert analysis["device"].choices == (None, "cuda", "cpu", "mps") and analysis["device"].none == "auto"
    assert analysis["batch_size"].optional and analysis["checkpoints"].kind == "list"
    assert field_type(str | list[str] | None).text_or_list


def test_the_series_spec_is_one_set_of_fields_with_one_meaning():
    from core.models.spec import SeriesSpec

    spec = [f.name for f in dataclasses.fields(SeriesSpec)]
    for cls in (AnalysisConfig, VisualConfig):
        assert [f.name for f in dataclasses.fields(cls)][:len(spec)] == spec  # inherited, first in a saved file
    for name in ("min_pixels", "max_pixels"):  # the training run's pixel limits: the same field
        assert TrainConfig.field_help(name) == AnalysisConfig.field_help(name)
    assert AnalysisConfig(base="~/m", data="d").base.endswith("/m") and "~" not in AnalysisConfig(base="~/m", data="d").base
    with pytest.raises(ValueError, match="min_pixels"):
        AnalysisConfig(base="b", data="d", min_pixels=4 * 784, max_pixels=784)
    with pytest.raises(ValueError, match="field 'base'"):
        AnalysisConfig(data="d")
    cfg = AnalysisConfig(base="b", data="d", max_pixels=112 * 112, chat_template=False)
    assert (cfg.vision.max_pixels, cfg.chat_template) == (112 * 112, False)  # chat template: the series', not the images'

