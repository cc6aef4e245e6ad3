"""Formats and snapshots: parse each format, clear errors for malformed files (nothing stored), import ->
export -> import round trips, reproducible exports, the Hugging Face folder, splits and weights."""

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st_

from core.curation import queue as curation
from core.curation import snapshots
from core.curation.snapshots import ExportConfig
from core.errors import InputError
from core.io import formats
from core.io.store import Store
from tests.curation_data import ccf_items, write_ccf

THINK = "<think> opacity suggests {0}. </think> The disease of this patient is {0}."


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "a.db")
    yield s
    s.close()


def counts(store) -> tuple[int, int, int]:
    return tuple(store.con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                 for t in ("trajectories", "counterfactuals", "import_batches"))


def accept_all(store) -> None:
    for item_id in curation.queue(store)["id"]:
        curation.annotate(store, int(item_id), "ada", "accept")


def test_ccf_items_become_one_pair_per_counterfactual_disease():
    items = ccf_items(n=2, targets_per_item=3)
    parsed = formats.parse(json.dumps(items), "ccf.json")
    assert parsed.format == "ccf" and parsed.records == 2 and not parsed.errors and len(parsed.pairs) == 6
    pair = parsed.pairs[0]
    assert pair.chosen == formats.completion(items[0]["report"], items[0]["diagnose"])
    assert pair.rejected.endswith(f"</think> The disease of this patient is {pair.target}.")
    assert (pair.label, pair.prompt, pair.external_id) == (items[0]["diagnose"], items[0]["prompt"], items[0]["id"])
    bare = formats.parse(json.dumps([{"report": "r", "diagnose": "Edema", "counterfact": {"Atelectasis": "x"}}]), "c")
    assert bare.pairs[0].prompt == formats.CCF_QUESTION


def test_trl_plain_and_conversational_and_swift_read_the_same_pair():
    chosen, rejected = THINK.format("Edema"), THINK.format("Atelectasis")
    plain = {"prompt": "Report: opacity.", "chosen": chosen, "rejected": rejected}
    conv = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Report: opacity."}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Report: opacity."}]
    swift = {"messages": turns + [{"role": "assistant", "content": chosen}],
             "rejected_messages": turns + [{"role": "assistant", "content": rejected}]}
    got = [formats.parse(json.dumps(r), "f.jsonl").pairs[0] for r in (plain, conv)]
    got.append(formats.parse(json.dumps([swift]), "s.json").pairs[0])
    assert [formats.parse(json.dumps(r), "f.jsonl").format for r in (plain, conv)] == ["trl", "trl"]
    assert {(p.prompt, p.chosen, p.rejected, p.label, p.target) for p in got} == {
        ("Report: opacity.", chosen, rejected, "Edema", "Atelectasis")}
    assert [p.system for p in got] == [None, "Be brief.", "Be brief."]


@pytest.mark.parametrize("name, text, expected", [
    ("ccf.json", json.dumps([{"report": "r", "diagnose": "Edema", "counterfact": {"A": "x"}},
                             {"report": "r", "diagnose": "Edema", "counterfact": {"A": ""}}]),
     "ccf.json, item 1, field 'counterfact.A': expected a non-empty string, got ''"),
    ("ccf.json", json.dumps([{"report": "r", "diagnose": 3, "counterfact": {"A": "x"}}]),
     "ccf.json, item 0, field 'diagnose': expected a non-empty string, got int"),
    ("ccf.json", json.dumps([{"report": "r", "diagnose": "E", "counterfact": ["A"]}]),
     "ccf.json, item 0, field 'counterfact': expected an object {disease: counterfactual_report}, got list"),
    ("ccf.json", '[{"report": "r",\n "diagnose": }]', "ccf.json, line 2: not valid JSON"),
    ("pairs.jsonl", '{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": "c"\n',
     "pairs.jsonl, line 2, not valid JSON"),
    ("pairs.jsonl", '{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": "c"}\n',
     "pairs.jsonl, line 2, field 'rejected': expected a non-empty string, got nothing"),
    ("pairs.jsonl", json.dumps({"prompt": [{"role": "assistant", "content": "p"}], "chosen": [], "rejected": []}),
     "pairs.jsonl, line 1, field 'prompt[0].role': expected 'user', got 'assistant'"),
    ("swift.json", json.dumps([{"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}],
                                "rejected_messages": [{"role": "user", "content": "other"},
                                                      {"role": "assistant", "content": "r"}]}]),
     "swift.json, item 0, field 'rejected_messages': expected the same system and user turns as 'messages'"),
    ("swift.json", json.dumps([{"messages": [{"role": "user", "content": "p"}]}]),
     "swift.json, item 0, field 'messages': expected the turns ['user', 'assistant'], got 1 messages"),
])
def test_malformed_files_name_the_record_and_field_and_store_nothing(store, tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as e:
        snapshots.import_file(store, path)
    assert expected in str(e.value) and ("Nothing was stored" in str(e.value) or "not valid JSON" in str(e.value))
    assert counts(store) == (0, 0, 0)


def test_empty_unknown_and_non_utf8_files_are_refused(store, tmp_path):
    for name, data, expected in (("e.json", b"  \n", "e.json: the file is empty"),
                                 ("x.jsonl", b'{"foo": 1}\n', "x.jsonl, line 1: cannot tell the format"),
                                 ("o.json", b'{\n"report": "r"\n}\n', "o.json: a single JSON object"),
                                 ("b.json", b"\xff\xfe[", "b.json: not UTF-8 text")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=expected):
            snapshots.import_file(store, tmp_path / name)
    assert counts(store) == (0, 0, 0)


def test_keep_valid_stores_the_valid_part_and_says_how_many(store, tmp_path):
    lines = [{"prompt": f"p{i}", "chosen": THINK.format("Edema"), "rejected": THINK.format("Atelectasis")}
             for i in range(3)] + [{"prompt": "p9", "chosen": "c"}]
    (tmp_path / "f.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    r = snapshots.import_file(store, tmp_path / "f.jsonl", keep_valid=True)
    assert (r.kept, r.duplicates, r.skipped) == (3, 0, 1) and "line 4, field 'rejected'" in r.errors[0]
    again = snapshots.import_file(store, tmp_path / "f.jsonl", keep_valid=True)  # content hashes deduplicate
    assert (again.kept, again.duplicates) == (0, 3)
    assert counts(store) == (3, 3, 2)
    assert [b["skipped"] for b in snapshots.import_batches(store)] == [1, 1]


def test_an_import_killed_half_way_leaves_nothing(store, tmp_path):
    def crash(done, total):
        if done > 1:
            raise KeyboardInterrupt  # as a Stop button or a killed process would
    with pytest.raises(KeyboardInterrupt):
        snapshots.import_file(store, write_ccf(tmp_path / "c.json", n=30, targets_per_item=20), progress=crash)
    assert counts(store) == (0, 0, 0)


@pytest.mark.parametrize("config", [ExportConfig("trl"), ExportConfig("trl", conversational=True, system="Sys."),
                                    ExportConfig("swift", test_fraction=0.3), ExportConfig("ccf")],
                         ids=["trl", "trl-conversational", "swift", "ccf"])
def test_import_export_import_round_trips_byte_for_byte(tmp_path, config):
    first = Store.open(tmp_path / "first.db")
    snapshots.import_file(first, write_ccf(tmp_path / "ccf.json", n=8, targets_per_item=2))
    accept_all(first)
    a = snapshots.export_snapshot(first, tmp_path / "out1", config)
    second = Store.open(tmp_path / "second.db")
    for f in sorted(p for p in a.path.iterdir()):  # train then test: another import order than the first
        snapshots.import_file(second, f)
    accept_all(second)
    b = snapshots.export_snapshot(second, tmp_path / "out2", config)
    assert a.row_count == b.row_count == 16 and a.content_hash == b.content_hash and a.name == b.name
    for f in a.path.iterdir():
        assert f.read_bytes() == (b.path / f.name).read_bytes()


def test_exports_are_reproducible_and_recorded_once(store, tmp_path):
    snapshots.import_file(store, write_ccf(tmp_path / "ccf.json", n=5))
    accept_all(store)
    a = snapshots.export_snapshot(store, tmp_path / "ds", ExportConfig("trl"))
    b = snapshots.export_snapshot(store, tmp_path / "ds", ExportConfig("trl"))
    assert (a.id, a.content_hash) == (b.id, b.content_hash) and len(snapshots.snapshots(store)) == 1
    assert snapshots.snapshot(store, a.name).path == tmp_path / "ds" / a.name
    curation.annotate(store, 1, "ada", "reject")
    with pytest.raises(InputError, match="different export already has this name"):
        snapshots.export_snapshot(store, tmp_path / "ds", ExportConfig("trl", name=a.name))
    with pytest.raises(InputError, match="no dataset snapshot named 'nope'"):
        snapshots.snapshot(store, "nope")


def test_hf_folder_loads_with_datasets_and_splits_by_study(store, tmp_path):
    datasets = pytest.importorskip("datasets")  # installed with trl; the workbench writes the folder itself
    snapshots.import_file(store, write_ccf(tmp_path / "ccf.json", n=40, targets_per_item=2))
    accept_all(store)
    snap = snapshots.export_snapshot(store, tmp_path / "ds", ExportConfig("hf", test_fraction=0.25, seed=3,
                                                                          weights={"ccf.json": 2.0}))
    dd = datasets.load_from_disk(str(snap.path))
    assert set(dd) == {"train", "test"} and dd["train"].num_rows + dd["test"].num_rows == 80 == snap.row_count
    assert 8 <= dd["test"].num_rows <= 36 and snap.split["rows"] == {"train": dd["train"].num_rows,
                                                                       "test": dd["test"].num_rows}
    study = lambda split: set(zip(dd[split]["prompt"], dd[split]["chosen"], strict=True))  # noqa: E731
    assert not study("train") & study("test")  # both counterfactuals of a study land on the same side
    assert set(dd["train"]["weight"]) == {1.0}  # one source: normalised to mean one
    trl = snapshots.export_snapshot(store, tmp_path / "ds", ExportConfig("trl", test_fraction=0.25, seed=3))
    rows = [json.loads(x) for x in (trl.path / "train.jsonl").read_text().splitlines()]
    hf = [{k: v for k, v in r.items() if not (k == "system" and v is None)} for r in dd["train"].to_list()]
    assert rows == hf  # the same records (TRL writes no "system" where there is none; the HF column holds null)


def test_weights_average_one_over_the_rows():
    rows = [{"source": s} for s in ("thinking", "thinking", "perception", "other")]
    w = [r["weight"] for r in snapshots.weighted_rows(rows, {"thinking": 2.0, "perception": 1.0, "other": 0.5})]
    assert w == [1.454545, 1.454545, 0.727273, 0.363636] and sum(w) / len(w) == pytest.approx(1.0)


def test_export_config_is_validated():
    for bad in ({"format": "csv"}, {"test_fraction": 1.0}, {"weights": {"a": -1}}, {"weights": {"a": 0}},
                {"name": "../x"}):
        with pytest.raises(ValueError):
            ExportConfig(**bad)


TEXT = st_.text(st_.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip)


@settings(max_examples=40, deadline=None)
@given(st_.lists(st_.tuples(TEXT, TEXT, TEXT, st_.sampled_from(["Edema", "Atelectasis", "Pleural Other"])),
                 min_size=1, max_size=5), st_.sampled_from(["trl", "trl-conversational", "swift"]))
@example([("line\u2028separator", "next\x85line", "<b>&amp;</b>\r", "Edema")], "trl")  # JSONL is split on \n only
def test_written_pairs_read_back_unchanged(tmp_path_factory, pairs, fmt):
    rows = [{"prompt": p, "chosen": c, "rejected": r, "label": None, "target": t, "source": "s", "weight": 1.0,
             "key": str(i), "system": None} for i, (p, c, r, t) in enumerate(pairs)]
    folder = tmp_path_factory.mktemp("w") / "out"
    formats.write(rows, folder, fmt.split("-")[0], conversational=fmt.endswith("conversational"))
    name = "train.jsonl" if fmt.startswith("trl") else "train.json"
    parsed = formats.parse((folder / name).read_text(encoding="utf-8"), name)
    assert not parsed.errors
    assert [(p.prompt, p.chosen, p.rejected) for p in parsed.pairs] == [(p, c, r) for p, c, r, _ in pairs]


def test_a_plain_trl_export_re_imported_keeps_its_system_turn_and_adds_nothing(store, tmp_path):
    """A plain TRL record carries a chat's system turn in "system" (trl_record writes it): read back, the pair is
    the stored one (the system turn is part of its identity), not a second copy without the system prompt."""
    rows = [{"prompt": f"Findings {i}: opacity.", "chosen": f"<think>r{i}</think> The disease is Edema.",
             "rejected": f"<think>r{i}</think> The disease is Pneumonia.", "system": "You are a radiologist."}
            for i in range(2)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = snapshots.import_file(store, tmp_path / "pairs.jsonl")
    assert first.kept == 2
    accept_all(store)
    snap = snapshots.export_snapshot(store, tmp_path / "ds", ExportConfig("trl", test_fraction=0.0))
    exported = [json.loads(line) for line in (snap.path / "train.jsonl").read_text().splitlines()]
    assert {r["system"] for r in exported} == {"You are a radiologist."}
    again = snapshots.import_file(store, snap.path / "train.jsonl")
    assert (again.kept, again.duplicates) == (0, 2)
    assert {p.system for p in formats.parse((tmp_path / "pairs.jsonl").read_text(), "pairs.jsonl").pairs} == \
        {"You are a radiologist."}


def test_a_lone_surrogate_is_a_named_bad_record_not_a_traceback(store, tmp_path):
    """JSON's "\\ud83d" (half an emoji, as truncated LLM output writes it) is valid JSON but no storable text: the
    record is refused by line, the rest stored on request (it was a raw UnicodeEncodeError, nothing stored)."""
    good = {"prompt": "Findings: opacity.", "chosen": "<think>r</think> The disease is Edema.",
            "rejected": "<think>r</think> The disease is Pneumonia."}
    bad = {**good, "chosen": "<think>r \\ud83d</think> The disease is Edema."}
    (tmp_path / "p.jsonl").write_text(json.dumps(bad).replace("\\\\ud83d", "\\ud83d") + "\n" + json.dumps(good) + "\n")
    with pytest.raises(InputError, match=r"line 1, a string holds a lone UTF-16 surrogate"):
        snapshots.import_file(store, tmp_path / "p.jsonl")
    assert counts(store) == (0, 0, 0)
    kept = snapshots.import_file(store, tmp_path / "p.jsonl", keep_valid=True)
    assert (kept.kept, kept.skipped) == (1, 1)
    (tmp_path / "a.json").write_text("[" + json.dumps(bad).replace("\\\\ud83d", "\\ud83d") + "]")
    with pytest.raises(InputError, match=r"item 0: a string holds a lone UTF-16 surrogate"):
        snapshots.import_file(store, tmp_path / "a.json")


def test_two_counterfactuals_for_one_study_and_target_both_reach_a_ccf_export(store, tmp_path):
    """A CCF item holds one counterfactual per disease: a second accepted pair for the same study and target (graph
    rules and the LLM expert, or two imports) goes into an item of its own (it overwrote the first while the
    snapshot still counted both)."""
    rows = [{"prompt": "Findings: opacity.", "chosen": "<think>opacity</think> The disease of this patient is Edema.",
             "rejected": f"<think>{cot}</think> The disease of this patient is Pneumonia.", "source": src}
            for cot, src in (("consolidation", "graph"), ("airspace disease", "llm"))]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    snapshots.import_file(store, tmp_path / "p.jsonl")
    accept_all(store)
    snap = snapshots.export_snapshot(store, tmp_path / "ds", ExportConfig("ccf", test_fraction=0.0))
    items = json.loads((snap.path / "train.json").read_text())
    assert snap.row_count == 2 and sorted(i["counterfact"]["Pneumonia"] for i in items) == \
        ["airspace disease", "consolidation"]
    assert len(formats.parse((snap.path / "train.json").read_text(), "train.json").pairs) == 2


def test_a_hugging_face_export_keeps_the_system_turn(store, tmp_path):
    """The HF folder has a system column (null where none), read back into the same pairs: the system turn was lost
    (TRL and ms-swift exports kept it)."""
    rows = [{"prompt": f"Findings {i}.", "chosen": "<think>r</think> The disease of this patient is Edema.",
             "rejected": "<think>r</think> The disease of this patient is Pneumonia.",
             **({"system": "You are a radiologist."} if i else {})} for i in range(2)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    snapshots.import_file(store, tmp_path / "p.jsonl")
    accept_all(store)
    snap = snapshots.export_snapshot(store, tmp_path / "ds", ExportConfig("hf", test_fraction=0.0))
    again = snapshots.import_file(store, snap.path)
    assert (again.kept, again.duplicates) == (0, 2)  # the same pairs, system turns included
    parsed = formats.parse_hf_folder(snap.path, tmp_path / "img")
    assert sorted(p.system or "" for p in parsed.pairs) == ["", "You are a radiologist."]
