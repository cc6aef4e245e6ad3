"""Bad input from users' files: every JSON reader names the file and line (never a RecursionError or
ValueError traceback), oversized records are refused before tokenizing, a BOM is accepted, and a
trainer_state.json with wrong types names the field."""

import json

import pytest

from core.cpo.config import TrainConfig
from core.cpo.train import read_pairs
from core.errors import InputError
from core.graph import concepts
from core.graph import formats as graph_io
from core.io import formats, jsonsafe
from core.io.trajectories import read_jsonl
from core.models.resume import read_trainer_state

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 5000
TRAJ = {"prompt": "p", "completion": "<think> c </think> The disease of this patient is Edema.", "label": "Edema"}
PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}


def _lines(path, *lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("bad", [f'{{"prompt": {DEEP}}}', f'{{"prompt": "p", "n": {HUGE}}}'])
def test_trajectories_and_train_data_name_the_line_of_deep_or_huge_json(tmp_path, bad):
    traj = _lines(tmp_path / "t.jsonl", json.dumps(TRAJ), bad)
    with pytest.raises(InputError, match=r"t\.jsonl, line 2: (JSON nested too deeply|a number too long)"):
        read_jsonl(traj)
    pairs = _lines(tmp_path / "p.jsonl", json.dumps(PAIR), bad)
    with pytest.raises(InputError, match=r"p\.jsonl, line 2: "):
        read_pairs(pairs)


def test_a_record_past_the_size_limit_is_refused_before_parsing(tmp_path):
    big = json.dumps({**TRAJ, "completion": "x" * (jsonsafe.MAX_RECORD_CHARS + 1)})
    with pytest.raises(InputError, match=r"t\.jsonl, line 2: the record has .* characters, more than"):
        read_jsonl(_lines(tmp_path / "t.jsonl", json.dumps(TRAJ), big))
    text = json.dumps([{"report": "r", "diagnose": "Edema", "counterfact": {"Pneumonia": "x" * (
        jsonsafe.MAX_RECORD_CHARS + 1)}}])
    parsed = formats.parse(text, "ccf.json", "ccf")
    assert parsed.pairs == [] and "item 0" in parsed.errors[0] and "characters" in parsed.errors[0]
    with pytest.raises(InputError, match="item 0: more than 1,048,576 characters"):
        formats.parse(text, "ccf.json")


@pytest.mark.parametrize("bad", [DEEP, f'[{{"report": "r", "diagnose": "E", "n": {HUGE}}}]'])
def test_curation_import_of_a_deep_or_huge_json_array_names_the_line(bad):
    with pytest.raises(InputError, match=r"ccf\.json, line 1: (JSON nested too deeply|a number too long)"):
        formats.parse(bad, "ccf.json")


def test_curation_import_of_deep_or_huge_json_lines_reports_the_lines_and_keeps_the_rest():
    good = json.dumps({**PAIR, "label": "Edema"})
    parsed = formats.parse("\n".join([good, "{\"prompt\": " + DEEP + "}", f'{{"chosen": {HUGE}}}', good]), "p.jsonl")
    assert len(parsed.pairs) == 2 and len(parsed.errors) == 2
    assert "line 2" in parsed.errors[0] and "nested too deeply" in parsed.errors[0]
    assert "line 3" in parsed.errors[1] and "number too long" in parsed.errors[1]


def test_curation_import_accepts_a_utf8_bom(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(PAIR) + "\n").encode())
    parsed = formats.parse(formats.read_text(path), path.name)
    assert parsed.format == "trl" and len(parsed.pairs) == 1 and not parsed.errors
    traj = tmp_path / "t.jsonl"
    traj.write_bytes(b"\xef\xbb\xbf" + (json.dumps(TRAJ) + "\n").encode())
    assert read_jsonl(traj)[0]["label"] == "Edema"


def test_concept_graph_json_deep_or_huge_names_the_file(tmp_path):
    for bad in (DEEP, '{"nodes": [], "edges": [], "n": ' + HUGE + "}"):
        with pytest.raises(InputError, match=r"g\.json, line 1: "):
            graph_io.import_graph(bad.encode(), "g.json")
        (tmp_path / "g.json").write_text(bad)
        with pytest.raises(InputError, match=r"g\.json, line 1: "):
            concepts.load_graph(tmp_path / "g.json")


def test_train_config_deep_json_names_the_file(tmp_path):
    (tmp_path / "run.json").write_text('{"lr":\n' + DEEP + "}")
    with pytest.raises(InputError, match=r"run\.json: not a valid CPO run config \(JSON nested too deeply\)"):
        TrainConfig.load(tmp_path / "run.json")


@pytest.mark.parametrize("state, field", [
    ({"global_step": "abc"}, "global_step"),
    ({"global_step": 1e400}, "global_step"),
    ({"global_step": 10**99}, "global_step"),  # 100 digits: stored as a 64-bit integer, it overflowed after scoring
    ({"global_step": 3, "log_history": [{"step": 2**63}]}, r"log_history\[0\]\.step"),
    ({"global_step": 3, "log_history": "oops"}, "log_history"),
    ({"global_step": 3, "log_history": [{"step": "x"}]}, r"log_history\[0\]\.step"),
    ({"global_step": 3, "log_history": [5]}, r"log_history\[0\]"),
    ([1, 2], None),
])
def test_trainer_state_with_wrong_types_names_the_file_and_field(tmp_path, state, field):
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(state).replace('1e+400', '1e400').replace("Infinity", "1e400"))
    with pytest.raises(InputError, match=rf"trainer_state\.json, field '{field}'" if field else "expected a JSON object"):
        read_trainer_state(path)


def test_trainer_state_with_wrong_types_exits_2_from_score(tmp_path, quick_world, capsys):
    import shutil

    from workbench import cli

    run = tmp_path / "run"
    shutil.copytree(quick_world / "rft" / "checkpoint-4", run / "checkpoint-4")
    (run / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": "abc"}')
    code = cli.main(["score", "--base", str(quick_world / "model"), "--checkpoints", str(run), "--data",
                     str(quick_world / "data" / "test.jsonl"), "--out", str(tmp_path / "o"), "--no-cache"])
    assert code == 2
    assert "trainer_state.json, field 'global_step'" in capsys.readouterr().err


def test_a_trajectory_longer_than_the_context_is_warned_by_name(sample_world, tmp_path, capsys):
    from workbench import cli

    first = read_jsonl(sample_world / "data" / "test.jsonl", 1)[0]
    think = formats.think_of(first["completion"])
    long = {**first, "id": "long-one", "completion": formats.completion(" ".join([think] * 12), first["label"])}
    data = _lines(tmp_path / "t.jsonl", json.dumps({**first, "id": "short-one"}), json.dumps(long))
    code = cli.main(["score", "--base", str(sample_world / "model"), "--data", str(data), "--graph",
                     str(sample_world / "concept_graph.json"), "--positions", "end", "--no-cache",
                     "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: trajectory long-one: " in err and "longer than the model's context of 256" in err
    assert "short-one" not in err


def test_deep_json_in_analysis_and_world_files_is_named(sample_world, tmp_path):
    import shutil

    from core.drift.analysis import Analysis, list_analyses
    from core.workspace.world import load_world

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(DEEP)
    with pytest.raises(InputError, match=r"a/config\.json: not a valid analysis config \(JSON nested too deeply\)"):
        Analysis.load(tmp_path / "a")
    assert list_analyses(tmp_path) == []  # skipped, not a crash
    world = tmp_path / "w"
    shutil.copytree(sample_world, world, ignore=shutil.ignore_patterns("analysis"))
    (world / "metrics.json").write_text(DEEP)
    with pytest.raises(InputError, match=r"metrics\.json, line 1: JSON nested too deeply"):
        load_world(world).metrics()
