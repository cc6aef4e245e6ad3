"""The registry of model families (core.models.families): the family is chosen once, from config.json's
model_type, when a series, a CPO run or an analysis loads its model; a model_type no family serves is refused
at load with a message that names it, says whether it looks like a text or a vision-language model, and lists
the families there are (never a traceback from deep inside a forward pass)."""

import json

import pytest

from core.cpo.config import TrainConfig
from core.drift.analysis import AnalysisConfig, run_analysis
from core.errors import InputError
from core.models.families import (
    FAMILIES,
    QWEN_VL_FAMILY,
    TEXT_FAMILY,
    UnsupportedModel,
    family_for,
    family_named,
    supported,
    table,
)
from core.models.series import load_series


@pytest.fixture(scope="module")
def bert(tmp_path_factory, sample_world):
    """A user's tiny random BERT, saved the way transformers saves it (an encoder, not a causal LM)."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("models") / "bert-tiny"
    BertModel(BertConfig(vocab_size=492, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((sample_world / "model" / name).read_bytes())
    return folder


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """A LLaVA config as transformers writes it: a vision tower and a language model."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    folder = tmp_path_factory.mktemp("models") / "llava-tiny"
    LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=64),
                text_config=LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64)).save_pretrained(folder)
    return folder


def test_the_family_is_chosen_from_model_type(sample_world, tiny_vl):
    assert family_for(sample_world / "model") is TEXT_FAMILY  # llama
    assert family_for(tiny_vl) is QWEN_VL_FAMILY  # qwen2_5_vl
    assert TEXT_FAMILY.modality == "text" and QWEN_VL_FAMILY.modality == "vision-language"
    assert QWEN_VL_FAMILY.reads_images and not TEXT_FAMILY.reads_images


def test_a_loaded_series_carries_its_family(series, vl_series):
    assert series.family is TEXT_FAMILY and series.processor is series.tokenizer
    assert vl_series.family is QWEN_VL_FAMILY and vl_series.processor.tokenizer is vl_series.tokenizer


def test_the_families_are_a_table_of_data():
    rows = table()
    assert [r["family"] for r in rows] == [f.name for f in FAMILIES] == ["text", "qwen_vl"]
    assert {r["modality"] for r in rows} == {"text", "vision-language"}
    assert rows[1]["model_types"] == ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"] and rows[1]["loads_with"] == "AutoModelForImageTextToText"
    assert {"llama", "qwen2", "qwen3", "mistral", "phi3"} <= set(rows[0]["model_types"])
    claimed = [t for f in FAMILIES for t in f.model_types]
    assert len(claimed) == len(set(claimed))  # no model_type is served by two families
    assert family_named("qwen_vl") is QWEN_VL_FAMILY
    with pytest.raises(InputError, match="no model family 'llava'"):
        family_named("llava")


def _refusal(message: str, model_type: str, looks: str) -> None:
    assert f"model_type {model_type!r} is not a supported model family" in message
    assert f"looks like a {looks} model" in message
    assert "supported: text (text: llama, " in message and "qwen_vl (vision-language: qwen2_vl, qwen2_5_vl, qwen3_vl)" in message


def test_a_tiny_random_bert_is_refused_at_load(bert):
    with pytest.raises(UnsupportedModel) as e:
        load_series(bert)
    _refusal(str(e.value), "bert", "text")
    assert str(bert / "config.json") in str(e.value)


def test_a_llava_config_is_refused_as_an_unsupported_vision_language_model(llava):
    with pytest.raises(UnsupportedModel) as e:
        load_series(llava)
    _refusal(str(e.value), "llava", "vision-language")


def test_a_config_naming_mamba2_is_refused_before_any_weight_is_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba2", "hidden_size": 64}))
    with pytest.raises(UnsupportedModel) as e:
        load_series(tmp_path)  # no weights, no tokenizer: the config alone decides
    _refusal(str(e.value), "mamba2", "text")


def test_no_model_type_and_broken_configs_are_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UnsupportedModel, match=r"a/config.json: no model_type is not a supported model family"):
        family_for(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=r"b/config.json: not a readable model config"):
        family_for(tmp_path / "b")
    with pytest.raises(InputError, match="c: model folder not found"):
        family_for(tmp_path / "c")


def test_a_cpo_run_and_an_analysis_refuse_the_same_way(bert, tmp_path, sample_world):
    """Every entry that loads a model asks the registry: a CPO run's pre-flight, an analysis."""
    from core.cpo.train import preflight

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(UnsupportedModel) as e:
        preflight(TrainConfig(base_model=str(bert), data=str(pairs), output_dir=str(tmp_path / "run")))
    _refusal(str(e.value), "bert", "text")
    cfg = AnalysisConfig(base=str(bert), data=str(sample_world / "data" / "test.jsonl"), limit=2)
    with pytest.raises(UnsupportedModel) as e:
        run_analysis(cfg)
    _refusal(str(e.value), "bert", "text")


def test_the_supported_line_names_every_family():
    line = supported()
    for family in FAMILIES:
        assert f"{family.name} ({family.modality}: " in line


def test_llava_is_refused_with_the_reason_it_is_not_served(llava):
    with pytest.raises(UnsupportedModel) as e:
        family_for(llava)
    assert "LLaVA-1.5 needs its own backend" in str(e.value) and "`workbench families`" in str(e.value)


def test_registration_refuses_an_unsupported_base_by_name(llava, bert, sample_world, tmp_path, capsys):
    """`workbench world create` (and the Checkpoints page's "Keep these as a world", the same create_world)
    refuses the base before anything is written, naming its model_type and what is supported."""
    from core.workspace.world import create_world
    from workbench import cli

    data = sample_world / "data" / "test.jsonl"
    with pytest.raises(UnsupportedModel) as e:
        create_world(tmp_path / "w", "w", bert, [], [data])
    _refusal(str(e.value), "bert", "text")
    assert not (tmp_path / "w").exists()
    code = cli.main(["world", "create", "--name", "mine", "--base", str(llava), "--data", str(data),
                     "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "model_type 'llava' is not a supported model family (its config looks like a vision-language" in err
    assert "supported: text (text: llama, " in err


def test_workbench_families_prints_the_matrix(capsys):
    from core.models.families.matrix import MATRIX, REFUSED
    from workbench import cli

    assert cli.main(["families"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["family", "model_type", "backend", "score", "probe", "evaluate", "train",
                                           "visual", "drift"]
    for e in MATRIX:
        assert e.model_type in out
    for t in REFUSED:
        assert f"  {t}: " in out


def test_the_matrix_is_what_dispatch_reads():
    from core.models.families.matrix import MATRIX, OPERATIONS

    for e in MATRIX:
        assert family_named(e.family).model_types.count(e.model_type) == 1
        assert set(e.tested) <= set(OPERATIONS)
        assert e.family == "qwen_vl" or "visual drift" not in e.tested  # a text model sees no image
    assert [t for f in FAMILIES for t in f.model_types] == [e.model_type for e in sorted(
        MATRIX, key=lambda e: [f.name for f in FAMILIES].index(e.family))]


def test_the_readme_holds_the_generated_matrix():
    from pathlib import Path

    from core.models.families.matrix import README_END, README_START, readme_block

    readme = (Path(__file__).resolve().parents[4] / "README.md").read_text()
    held = readme[readme.index(README_START): readme.index(README_END) + len(README_END)]
    assert held == readme_block(), "the README's family matrix differs: paste `workbench families --markdown`"


@pytest.mark.parametrize("model_type", [["llama"], {"a": 1}, 5])
def test_a_model_type_that_is_not_a_string_is_named_not_a_type_error(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "vision_config": {}}))
    with pytest.raises(InputError, match=r"config\.json: field 'model_type': expected a string"):
        family_for(tmp_path)


def test_a_long_model_type_is_not_echoed_whole():
    from core.models.families import family_of_config

    with pytest.raises(InputError) as e:
        family_of_config({"model_type": "x" * 10_000})
    assert "x" * 60 in str(e.value) and "x" * 61 not in str(e.value)
