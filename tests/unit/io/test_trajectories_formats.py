"""Trajectories as the field writes them: every format reads to the same records; bad input is named."""

import json

import pytest

from core.errors import InputError
from core.io.answers import AnswerFormat, answer_of
from core.io.trajectories import encode, read_trajectories

COT = "<think> consolidation suggests Pneumonia. </think> The disease of this patient is Pneumonia."
USER = "Report: consolidation. Question: what is the disease?"
CHAT = [{"role": "system", "content": "You are a radiologist."}, {"role": "user", "content": USER}]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _same(recs, label="Pneumonia"):
    assert [r["prompt"] for r in recs] == [USER] and [r["completion"] for r in recs] == [COT]
    assert recs[0]["label"] == label


def test_prompt_completion_jsonl_takes_the_label_from_its_answer(tmp_path):
    recs = read_trajectories(_jsonl(tmp_path / "a.jsonl", [{"prompt": USER, "completion": COT}]))
    _same(recs)
    assert recs[0]["id"] == "line-1" and "chat" not in recs[0]


def test_trl_conversational_prompt_completion(tmp_path):
    rec = {"prompt": CHAT, "completion": [{"role": "assistant", "content": COT}]}
    recs = read_trajectories(_jsonl(tmp_path / "a.jsonl", [rec]))
    _same(recs)
    assert recs[0]["chat"] == CHAT


def test_ms_swift_messages_json_list_ignores_rejected_and_reads_the_last_assistant_turn(tmp_path):
    msgs = CHAT + [{"role": "assistant", "content": "<think> first try </think> Edema"},
                   {"role": "user", "content": USER}, {"role": "assistant", "content": COT}]
    rec = {"messages": msgs, "rejected_messages": [{"role": "user", "content": "x"}], "rejected_images": ["b.png"]}
    path = tmp_path / "swift.json"
    path.write_text(json.dumps([rec]))
    recs = read_trajectories(path)
    _same(recs)
    assert len(recs[0]["chat"]) == 4 and recs[0]["id"] == "item-0" and "images" not in recs[0]


def test_multimodal_content_parts_keep_their_text(tmp_path):
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": USER}]}
    recs = read_trajectories(_jsonl(tmp_path / "a.jsonl", [{"messages": [user, {"role": "assistant", "content": COT}]}]))
    _same(recs)


def test_ccf_items_list_and_keyed_by_dicom_id(tmp_path):
    item = {"report": "consolidation in the left lower lobe", "diagnose": "Pneumonia", "counterfact": {"Edema": "x"}}
    (tmp_path / "ccf.json").write_text(json.dumps({"d-1": item, "d-2": {**item, "diagnose": "Edema"}}))
    recs = read_trajectories(tmp_path / "ccf.json")
    assert [r["id"] for r in recs] == ["d-1", "d-2"] and [r["label"] for r in recs] == ["Pneumonia", "Edema"]
    assert recs[0]["completion"] == ("<think> consolidation in the left lower lobe </think> "
                                     "The disease of this patient is Pneumonia.")
    (tmp_path / "ccf_list.json").write_text(json.dumps([{**item, "dicom_id": "d-9"}]))
    assert read_trajectories(tmp_path / "ccf_list.json")[0]["id"] == "d-9"


def test_parquet_and_hf_datasets_folder(tmp_path):
    import pandas as pd
    from datasets import Dataset, DatasetDict

    rows = [{"id": "s1", "messages": CHAT + [{"role": "assistant", "content": COT}]}]
    pd.DataFrame([{"prompt": USER, "completion": COT, "label": "Pneumonia"}]).to_parquet(tmp_path / "t.parquet")
    _same(read_trajectories(tmp_path / "t.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    recs = read_trajectories(tmp_path / "hf")
    _same(recs)
    assert recs[0]["id"] == "s1"
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    _same(read_trajectories(tmp_path / "dd"))


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"role": "user", "content": "x"}]}, "line 1: field 'messages': expected turns before a final assistant"),
    ({"messages": [{"content": "x"}]}, r"line 1: field 'messages\[0\]': expected an object with 'role'"),
    ({"prompt": CHAT, "completion": "text"}, "line 1: field 'completion': expected a list of messages"),
    ({"report": "", "diagnose": "Edema"}, "line 1: field 'report' must be a non-empty string"),
    ({"prompt": "x"}, "line 1: missing field 'completion'; expected 'prompt' and 'completion'"),
    ({"prompt": "x", "completion": COT, "label": 3}, "line 1: field 'label' must be a string"),
])
def test_bad_records_are_named(tmp_path, record, message):
    with pytest.raises(InputError, match=message):
        read_trajectories(_jsonl(tmp_path / "bad.jsonl", [record]))


def test_bad_containers_are_named(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"prompt": "x"}))
    with pytest.raises(InputError, match="one.json: expected a JSON list of records"):
        read_trajectories(tmp_path / "one.json")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="not a Hugging Face datasets folder"):
        read_trajectories(tmp_path / "folder")
    (tmp_path / "x.parquet").write_text("nope")
    with pytest.raises(InputError, match="x.parquet: not a readable parquet file"):
        read_trajectories(tmp_path / "x.parquet")


@pytest.mark.parametrize("text, answer", [
    ("<think> a </think> The disease of this patient is Lung Opacity.", "Lung Opacity"),
    ("<think> a </think> Edema", "Edema"),
    ("<think> a </think> Edema.", "Edema"),
    ("<think> a </think> The disease of this", None),  # cut short: malformed, not a bare answer
    ("<think> a </think> I think it could be many things given all of these findings here", None),
    ("no think tag at all", None),
    # a label and another sentence is malformed, not a wrong answer that can flip (it was read as "Edema. It is mild")
    ("<think> a </think> Edema. It is mild", None),
    ("<think> a </think> The disease of this patient is Edema. It is mild.", None),
    ("<think> a </think> The disease of this patient is Edema!  Fine", None),
    ("<think> a </think> The disease of this patient is Pleural Effusion.  ", "Pleural Effusion"),
    # the dot of an initial or an abbreviation inside a label is no sentence end
    ("<think> a </think> The disease of this patient is P. jirovecii pneumonia.", "P. jirovecii pneumonia"),
    ("<think> a </think> E. coli sepsis", "E. coli sepsis"),
    ("<think> a </think> The disease of this patient is St. Louis encephalitis.", "St. Louis encephalitis"),
    ("<think> a </think> The disease of this patient is E. coli sepsis. Treat it.", None),
])
def test_default_answer_format(text, answer):
    assert answer_of(text) == answer


def test_configurable_answer_pattern():
    fmt = AnswerFormat.from_dict({"pattern": r"Answer: (?P<answer>\w+)", "sentence": "Answer: {}",
                                  "template": " </think> Answer:"})
    assert fmt.parse("<think> x </think> Answer: B") == "B" and fmt.render("B") == "Answer: B"
    with pytest.raises(InputError, match="answer_format: unknown field"):
        AnswerFormat.from_dict({"patern": "x"})
    with pytest.raises(InputError, match="answer_format.pattern: expected a group"):
        AnswerFormat.from_dict({"pattern": "Answer"})
    # where it is read from is named (a world's world.json), and a value of the wrong kind is refused, not a TypeError
    with pytest.raises(InputError, match=r"^w/world.json: answer_format.pattern: expected a group"):
        AnswerFormat.from_dict({"pattern": "Answer"}, "w/world.json: answer_format")
    with pytest.raises(InputError, match=r"w/world.json: answer_format.pattern: expected text, got 5"):
        AnswerFormat.from_dict({"pattern": 5}, "w/world.json: answer_format")
    with pytest.raises(InputError, match=r"answer_format.bare: expected true or false"):
        AnswerFormat.from_dict({"bare": "no"})


def test_conversations_use_the_tokenizer_chat_template_unless_turned_off(foreign_run):
    from core.models.loading import load_tokenizer

    tok = load_tokenizer(foreign_run["base"])
    recs = read_trajectories(foreign_run["train"], limit=2)
    on, off = encode(tok, recs), encode(tok, recs, chat_template=False)
    text = tok.apply_chat_template(recs[0]["chat"], add_generation_prompt=True, tokenize=False)
    assert on[0].input_ids[: on[0].start] == tok(text, add_special_tokens=False)["input_ids"]
    assert "<|assistant|>" in on[0].tokens[: on[0].start] and "<|assistant|>" not in off[0].tokens
    assert tok.unk_token_id not in on[0].input_ids  # the template's own tokens are in the vocabulary
    assert on[0].tokens[on[0].think_end] == "</think>"


def test_the_chat_template_setting_travels_to_the_scoring_job():
    import json

    from core.drift.config import AnalysisConfig
    from core.drift.job import ScoreOptions
    from core.jobs import registry

    for on in (True, False):
        _, files = registry.command("score", AnalysisConfig(base="b", data="d.jsonl", chat_template=on),
                                    ScoreOptions(out="out"))
        assert AnalysisConfig.from_dict(json.loads(files["config.json"])).chat_template is on


@pytest.mark.parametrize("split", ["../outside/train", "..", "/abs/train", "sub/../../outside/train"])
def test_a_dataset_dict_naming_a_split_outside_its_folder_is_refused(tmp_path, split):
    """Trajectories and imports alike: a split (or a data file of state.json) is a name inside the folder."""
    from datasets import Dataset, DatasetDict

    from core.io.formats import parse_hf_folder

    rows = [{"id": "s1", "messages": CHAT + [{"role": "assistant", "content": COT}]}]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "outside"))
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": [split]}))
    with pytest.raises(InputError, match=r"dd/dataset_dict.json, field 'splits': expected the name of a file or "
                                         r"folder inside"):
        read_trajectories(tmp_path / "dd")
    with pytest.raises(InputError, match=r"dd/dataset_dict.json, field 'splits'"):
        parse_hf_folder(tmp_path / "dd", tmp_path / "images")
    state = json.loads((tmp_path / "outside" / "train" / "state.json").read_text())
    state["_data_files"] = [{"filename": "../../outside/train/" + state["_data_files"][0]["filename"]}]
    (tmp_path / "dd" / "train").mkdir()
    (tmp_path / "dd" / "train" / "state.json").write_text(json.dumps(state))
    with pytest.raises(InputError, match=r"train/state.json, field '_data_files'"):
        read_trajectories(tmp_path / "dd" / "train")
