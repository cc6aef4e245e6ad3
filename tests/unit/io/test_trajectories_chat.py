"""The chat template wherever a conversation meets the model: greedy decoding in the perturbation test, and
training on a plain TRL export of chat data. Each test compares the token ids the model is fed with the ids
scoring feeds it (``core.io.trajectories.encode``: the conversation through the tokenizer's chat template)."""

import pytest

from core.models.families.text import tokenize_pairs as tokenize  # CPO's pair ids of the text family
from core.io import formats
from core.io.pairs import read_pairs
from core.io.trajectories import encode, prompt_ids, read_trajectories
from core.models.series import load_series
from core.perturb import text as perturb


@pytest.fixture(scope="module")
def series(foreign_run):
    return load_series(foreign_run["base"], foreign_run["run"], base_names=["tiny-llama-base"])


def fed_prompts(series, run) -> list[list[int]]:
    """The prompt ids of each ``generate`` call's first forward pass (left padding dropped), recorded at the
    real model's embedding layer."""
    seen = []
    with series.activate("base") as model:
        emb = model.get_input_embeddings()
    hook = emb.register_forward_hook(lambda m, inp, out: seen.append(inp[0].tolist()) if inp[0].shape[1] > 1 else None)
    try:
        run()
    finally:
        hook.remove()
    pad = series.tokenizer.pad_token_id
    return [[t for i, t in enumerate(row) if t != pad or any(x != pad for x in row[:i])] for batch in seen
            for row in batch]


def test_perturbation_generate_prompts_conversations_through_the_chat_template(series, foreign_run):
    rec = read_trajectories(foreign_run["heldout"])[0]
    find = rec["prompt"].split("shows ")[1].split(" and")[0]
    swapped = perturb.replace_span(rec, find, "pleural line")
    assert swapped["chat"][-1]["content"] == swapped["prompt"] and "pleural line" in swapped["prompt"]
    tok = series.tokenizer
    scored = [encode(tok, [r])[0] for r in (rec, swapped)]
    want = [e.input_ids[: e.start] for e in scored]
    assert want[0] != prompt_ids(tok, rec["prompt"])  # the template matters here
    fed = fed_prompts(series, lambda: perturb.perturbation_test(series, [rec], find, "pleural line",
                                                                ["Pneumonia", "Edema", "Pneumothorax"]))
    assert fed[:2] == want  # under the base model: before and after the swap, as scoring encodes them
    plain = fed_prompts(series, lambda: perturb.perturbation_test(series, [rec], find, "pleural line", ["Edema"],
                                                                  chat_template=False))
    assert plain[0] == prompt_ids(tok, rec["prompt"])  # the setting off: the prompt text, as scoring then does


def test_a_plain_trl_export_of_chat_data_trains_on_the_templated_prompt(series, foreign_run, tmp_path):
    rec = read_trajectories(foreign_run["heldout"])[0]
    system = rec["chat"][0]["content"]
    row = {"prompt": rec["prompt"], "chosen": rec["completion"], "rejected": rec["completion"].replace("is", "was"),
           "label": rec["label"], "target": "Edema", "source": "thinking", "weight": 1.0, "key": "k", "system": system}
    formats.write([row], tmp_path / "plain", "trl")
    formats.write([row], tmp_path / "conv", "trl", conversational=True)
    plain, conv = (read_pairs(tmp_path / f / "train.jsonl") for f in ("plain", "conv"))
    tok = series.tokenizer
    want = encode(tok, [rec])[0]
    assert tokenize(tok, plain)[0]["prompt_ids"] == want.input_ids[: want.start]
    assert tokenize(tok, plain)[0]["prompt_ids"] == tokenize(tok, conv)[0]["prompt_ids"]
    no_system = {k: v for k, v in row.items() if k != "system"}
    formats.write([no_system], tmp_path / "text", "trl")
    assert "system" not in (tmp_path / "text" / "train.jsonl").read_text()  # plain data stays plain
    assert tokenize(tok, read_pairs(tmp_path / "text" / "train.jsonl"))[0]["prompt_ids"] == prompt_ids(tok, rec["prompt"])
