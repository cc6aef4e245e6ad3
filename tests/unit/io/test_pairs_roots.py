"""Images named inside a preference-pair file opened from the UI stay under the data roots (issue 25): each is
checked before it is opened, one message whether or not it exists; training and the run's examples check the
same roots; a local user's own command line (roots None) is not checked."""

import json
import os

import pytest
from PIL import Image

from core.cpo import runs
from core.cpo.config import TrainConfig
from core.cpo.train import preflight
from core.errors import InputError
from core.io.pairs import read_pairs

PAIR = {"prompt": "<image> Disease?", "chosen": "<think>a</think> A.", "rejected": "<think>b</think> B."}


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def world(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    outside.mkdir()
    Image.new("L", (8, 8), 40).save(outside / "real.png")
    Image.new("L", (8, 8), 90).save(root / "data" / "in.png")
    os.symlink(outside / "real.png", root / "data" / "link.png")  # a link under the roots leading out
    return root, outside


def refusal(data, roots) -> str:
    with pytest.raises(InputError) as e:
        read_pairs(data, roots=roots)
    return str(e.value)


@pytest.mark.parametrize("field", ["images", "rejected_images"])
@pytest.mark.parametrize("kind", ["absolute", "dotdot", "home"])
def test_images_outside_the_roots_are_refused_alike_whether_or_not_they_exist(world, field, kind, monkeypatch):
    root, outside = world
    monkeypatch.setenv("HOME", str(root / "data"))
    messages = []
    for name in ("real.png", "missing.png"):
        path = {"absolute": str(outside / name), "dotdot": f"../../outside/{name}", "home": f"~/../../outside/{name}"}[kind]
        images = {"images": ["in.png"], "rejected_images": [path]} if field == "rejected_images" else {"images": [path]}
        data = write(root / "data" / "pairs.jsonl", [PAIR, {**PAIR, **images}])
        messages.append(refusal(data, [root]).replace(name, "NAME"))
    assert messages[0] == messages[1], messages  # nothing tells which file exists
    assert f"pairs.jsonl, line 2, {field}[0]" in messages[0] and "not under the data roots" in messages[0]
    assert "outside/NAME" in messages[0]  # the path, as the reader would open it


def test_a_link_leading_out_and_a_dollar_path_are_checked_as_read(world, monkeypatch):
    root, outside = world
    data = write(root / "data" / "pairs.jsonl", [{**PAIR, "images": ["link.png"]}])
    assert "images[0]" in refusal(data, [root]) and "not under the data roots" in refusal(data, [root])
    # $VARS inside a file are not expanded when read, so the check does not expand them either: with X=a/b/c,
    # root/$X/../../outside reads tmp/outside (root/$X is a real folder) but, expanded, would check root/a/outside
    monkeypatch.setenv("X", "a/b/c")
    (root / "$X").mkdir()
    data = write(root / "data" / "pairs.jsonl", [{**PAIR, "images": [f"{root}/$X/../../outside/real.png"]}])
    assert "not under the data roots" in refusal(data, [root])

def test_inside_the_roots_or_unchecked_the_pairs_read(world):
    root, outside = world
    data = write(root / "data" / "pairs.jsonl", [{**PAIR, "images": ["in.png"]}])
    assert read_pairs(data, roots=[root])[0]["images"] == [str((root / "data" / "in.png").resolve())]
    mine = write(root / "data" / "mine.jsonl", [{**PAIR, "images": [str(outside / "real.png")]}])
    assert read_pairs(mine)[0]["images"] == [str(outside / "real.png")]  # a local user's command line


def test_a_run_config_with_roots_is_checked_at_preflight_in_training_and_examples(world, tmp_path):
    root, outside = world
    data = write(root / "data" / "pairs.jsonl", [{**PAIR, "images": [str(outside / "real.png")]}])
    cfg = TrainConfig(base_model=str(tmp_path / "no-model"), data=str(data), output_dir=str(tmp_path / "o"),
                      image_roots=[str(root)])
    with pytest.raises(InputError, match=r"pairs\.jsonl, line 1, images\[0\]: .*not under the data roots"):
        preflight(cfg)  # before the model or tokenizer is loaded, before any image is opened
    saved = TrainConfig.load(cfg.save(tmp_path / "config.json") or tmp_path / "config.json")
    assert saved.image_roots == [str(root)]  # a resumed or command-line rerun of the config is checked too
    outside_data = TrainConfig(**{**cfg.__dict__, "data": str(outside / "pairs.jsonl")})
    with pytest.raises(InputError, match="not under the data roots"):
        preflight(outside_data)
    run = runs.Run(1, "r", "cpo", json.loads(cfg.to_json()), str(data), None, None, "done", None, tmp_path / "o",
                   None, None, 0.0, 0.0)
    with pytest.raises(InputError, match=r"line 1, images\[0\]: .*not under the data roots"):
        runs.examples(run)
