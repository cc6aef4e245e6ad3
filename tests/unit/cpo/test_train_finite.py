"""Weights and losses stay finite or the run says so: a pair weight of 1e400 (infinity in JSON), weights near the
float maximum whose mean would overflow, and a run whose weights blow up stop as failed, naming where."""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.cpo.config import TrainConfig
from core.cpo.train import read_pairs, train
from core.cpo.trainer import check_finite, normalise_weights
from core.errors import InputError, NonFiniteError
from workbench.demo.preferences import build_preferences

BASE_NAME = "cxr-demo-tiny-llama"


@pytest.mark.parametrize("weight", ["1e400", "-1e400", "NaN", "Infinity"])
def test_a_pair_weight_that_is_not_finite_is_refused_by_line_and_field(tmp_path, weight):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                    f'{{"prompt": "a", "chosen": "b", "rejected": "c", "weight": {weight}}}\n')
    with pytest.raises(InputError, match=r"p.jsonl, line 2, field 'weight': expected a positive finite number"):
        read_pairs(path)


def test_weights_near_the_float_maximum_normalise_without_overflow():
    got = normalise_weights([1e308, 1e308, 1.0, 1.0])
    assert all(math.isfinite(w) for w in got) and math.fsum(got) == pytest.approx(4.0)
    assert got[0] == pytest.approx(2.0) and got[2] == pytest.approx(2e-308)
    assert normalise_weights([1.7e308] * 3) == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="too wide a range"):
        normalise_weights([1e308, 5e-324])  # the smallest would round to 0: its pair would silently not count
    with pytest.raises(ValueError, match="positive finite"):
        normalise_weights([1.0, float("inf")])


def test_a_config_with_an_infinite_number_or_source_weight_is_refused(tmp_path):
    base = {"base_model": "m", "data": "d.jsonl", "output_dir": "o"}
    (tmp_path / "lr.json").write_text(json.dumps(base)[:-1] + ', "learning_rate": 1e400}')
    with pytest.raises(InputError, match=r"lr.json: field 'learning_rate'"):
        TrainConfig.load(tmp_path / "lr.json")
    (tmp_path / "sw.json").write_text(json.dumps(base)[:-1] + ', "source_weights": {"image_swap": 1e400}}')
    with pytest.raises(InputError, match=r"sw.json: field 'source_weights'"):
        TrainConfig.load(tmp_path / "sw.json")


def test_a_non_finite_loss_or_weight_is_named_with_its_step():
    with pytest.raises(NonFiniteError, match=r"step 7: the loss is nan"):
        check_finite(torch.tensor(float("nan")), torch.ones(2), 7)
    with pytest.raises(NonFiniteError, match=r"step 3: a pair weight is not finite"):
        check_finite(torch.tensor(0.5), torch.tensor([1.0, float("inf")]), 3)
    check_finite(torch.tensor(0.5), torch.ones(2), 1)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, sample_world):
    return build_preferences(sample_world, tmp_path_factory.mktemp("pairs") / "pairs.jsonl", n=16, seed=0)


def _cfg(sample_world, data, out, **kw) -> TrainConfig:
    opts = dict(base_model=str(sample_world / "model"), data=str(data), output_dir=str(out),
                init_adapter=str(sample_world / "rft" / "checkpoint-160"), max_steps=2, batch_size=4,
                learning_rate=1e-3, save_steps=1, base_names=[BASE_NAME], objective="cpo++")
    return TrainConfig(**{**opts, **kw})


def test_huge_weights_on_half_the_pairs_train_with_a_real_loss(tmp_path, sample_world, pairs):
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    heavy = tmp_path / "heavy.jsonl"
    heavy.write_text("".join(json.dumps({**r, "weight": 1e308 if i % 2 else 1.0}) + "\n" for i, r in enumerate(rows)))
    result = train(_cfg(sample_world, heavy, tmp_path / "run", max_steps=2, save_steps=10))
    losses = [json.loads(line)["loss"] for line in result.metrics_path.read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)  # not 0.0 at every step


def test_a_run_whose_weights_blow_up_fails_naming_the_step_and_saves_nothing(tmp_path, sample_world, pairs):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"training failed: NonFiniteError: step 1: the trained weight .* is not "
                                           r"finite"):
        train(_cfg(sample_world, pairs, out, learning_rate=1e39))
    assert not (out / "adapter").exists() and not list(out.glob("checkpoint-*"))
