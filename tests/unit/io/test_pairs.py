"""One preference-pair contract: what export writes, training reads; export refuses what training refuses."""

import json

import pytest

from core.cpo import train as cpo
from core.curation import queue as curation
from core.curation import snapshots
from core.curation.snapshots import ExportConfig
from core.errors import InputError
from core.io.pairs import normalise_weights, read_pairs
from core.io.store import Store
from tests.curation_data import write_ccf


@pytest.fixture
def curated(tmp_path):
    store = Store.open(tmp_path / "a.db")
    snapshots.import_file(store, write_ccf(tmp_path / "ccf.json", n=4))
    for item_id in curation.queue(store)["id"]:
        curation.annotate(store, int(item_id), "ada", "accept")
    yield store
    store.close()


def test_one_weight_rule_for_export_and_training():
    import core.cpo.trainer as trainer

    assert trainer.normalise_weights is normalise_weights and cpo.read_pairs is read_pairs
    with pytest.raises(ValueError, match="positive"):
        normalise_weights([1.0, 0.0])
    with pytest.raises(ValueError, match="training refuses 0"):
        ExportConfig(weights={"thinking": 0.0})


@pytest.mark.parametrize("conversational", [False, True])
def test_every_trl_export_is_read_by_training(curated, tmp_path, conversational):
    snap = snapshots.export_snapshot(curated, tmp_path / "ds", ExportConfig("trl", conversational=conversational,
                                                                            system="You are a radiologist.",
                                                                            weights={"other": 2.0}))
    assert snapshots.trainable(snap)
    pairs = read_pairs(snap.path / "train.jsonl")
    raw = [json.loads(line) for line in (snap.path / "train.jsonl").read_text().splitlines()]
    assert len(pairs) == len(raw) == 4
    assert [p["chosen"] for p in pairs] == [r["chosen"] if not conversational else r["chosen"][0]["content"] for r in raw]
    assert sum(p["weight"] for p in pairs) / len(pairs) == pytest.approx(1.0)
    # a system turn makes it chat data, plain or conversational: training renders it with the chat template
    assert pairs[0]["chat"][0] == {"role": "system", "content": "You are a radiologist."}
    assert pairs[0]["chat"][-1] == {"role": "user", "content": pairs[0]["prompt"]}


def test_other_exports_are_not_offered_for_training(curated, tmp_path):
    snap = snapshots.export_snapshot(curated, tmp_path / "ds", ExportConfig("swift"))
    assert not snapshots.trainable(snap)


def test_conversational_pairs_are_tokenized_through_the_chat_template(foreign_run, tmp_path):
    from core.models.families.text import tokenize_pairs
    from core.models.loading import load_tokenizer

    tok = load_tokenizer(foreign_run["base"])
    rec = {"prompt": [{"role": "user", "content": "Report : fever"}],
           "chosen": [{"role": "assistant", "content": "<think> fever </think> Pneumonia"}],
           "rejected": [{"role": "assistant", "content": "<think> fever </think> Edema"}]}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    enc = tokenize_pairs(tok, read_pairs(path))[0]  # a text run's pair ids (the family's encode_pairs)
    expected = tok.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=False)
    assert enc["prompt_ids"] == tok(expected, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("rec, message", [
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "field 'prompt': expected a list of"),
    ({"prompt": [{"role": "user", "content": "x"}], "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     "field 'chosen': expected an assistant turn"),
    ({"prompt": "x", "chosen": "a", "rejected": "b", "weight": 0}, "field 'weight': expected a positive finite number"),
])
def test_bad_pairs_are_named(tmp_path, rec, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(InputError, match=f"p.jsonl, line 1, {message}"):
        read_pairs(path)
