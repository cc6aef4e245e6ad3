"""Held-out evaluation of a vision-language world: every study (and its synonym twin) is decoded with its
X-ray, batched, equal to decoding it alone; ``runs.evaluate_adapter`` gives a VL checkpoint the text
worlds' figures (accuracy, per category, malformed, flip rate)."""

import json

import pytest

from core.cpo.runs import evaluate_adapter
from core.io.answers import AnswerFormat
from core.models.families.qwen_vl.generation import greedy_vl
from core.models.families.qwen_vl.inputs import encode_records, load_processor, load_vl_model
from core.perturb.evaluation import answers, figures, held_out
from core.workspace.world import load_world
from tests.vl_world import make_vl_world

EVERYTHING = AnswerFormat(pattern=r"(?P<answer>[\s\S]+)")  # the whole completion is the "answer"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_vl_world(tmp_path_factory.mktemp("vleval"), held_out=4)


@pytest.fixture(scope="module")
def held(world):
    return held_out(load_world(world))


@pytest.fixture(scope="module")
def model_and_proc(world):
    base = load_world(world).base_model_dir
    return load_vl_model(base), load_processor(base)


def test_answers_are_decoded_with_each_study_s_image_in_batches_as_alone(held, model_and_proc):
    model, proc = model_and_proc
    recs = held.records + held.perturbed
    got = answers(model, proc, recs, EVERYTHING, batch_size=3, max_new_tokens=10)  # the family: from the config
    alone = [EVERYTHING.parse(greedy_vl(model, proc, encode_records(proc, [r]), 10)[0]) for r in recs]
    assert got == alone and all(got)
    encs = encode_records(proc, recs)
    assert all(e.pixel_values is not None for e in encs)  # every study, twins too, with its X-ray


def test_a_vl_checkpoint_is_evaluated_like_a_text_one(world, held, model_and_proc):
    checkpoint = load_world(world).checkpoints[-1].path
    out = evaluate_adapter(world, checkpoint)
    assert out is not None and out["studies"] == 4 and out["perturbation"] == "graph synonyms"
    assert {"accuracy", "malformed", "perturbed_accuracy", "flip_rate", "per_category"} <= set(out)
    # the same figures from the merged checkpoint's answers, decoded one study at a time
    from peft import PeftModel

    _, proc = model_and_proc
    fmt = load_world(world).answer_format
    merged = PeftModel.from_pretrained(load_vl_model(load_world(world).base_model_dir), str(checkpoint)).merge_and_unload()

    def pred(rs):  # the decoding budget as answers() sets it: the longest reference completion, and more
        longest = max(len(proc.tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in rs)
        return [fmt.parse(greedy_vl(merged, proc, encode_records(proc, [r]), int(longest * 1.25) + 8)[0]) for r in rs]

    expected = figures(held.records, pred(held.records), held.perturbed, pred(held.perturbed))
    assert {k: out[k] for k in expected} == expected
    json.dumps(out)  # evaluation.json


def test_workbench_evaluate_records_a_vl_world_s_figures(world, capsys):
    """``workbench evaluate --world`` on a VL world: one JSON row per checkpoint, recorded as metrics.json
    (the Home page's table and the runs page's 'before' row)."""
    from workbench.cli import _main

    assert _main(["evaluate", "--world", str(world), "--checkpoint", "checkpoint-4", "--limit", "2", "--record"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["checkpoint"] for r in rows] == ["checkpoint-4"] and rows[0]["studies"] == 2
    assert "flip_rate" in rows[0] and load_world(world).metrics()[0]["flip_rate"] == rows[0]["flip_rate"]
