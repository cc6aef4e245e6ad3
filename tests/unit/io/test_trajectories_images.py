"""``core.io.trajectories.read_trajectories`` keeps images in every format that carries them: plain
``prompt`` + ``images``, ms-swift ``messages`` + ``images``, TRL's conversational vision format (``{"type":
"image"}`` parts and an ``images`` column), and a Hugging Face ``datasets`` folder with an ``Image`` feature
(paths kept; bytes written once into a content-addressed cache)."""

import json

import pytest

from core.errors import InputError
from core.io.images import ImageRef, refs
from core.io.trajectories import read_trajectories

COT = "<think> There is an opacity. </think> The disease of this patient is Pneumonia."


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_plain_records_resolve_paths_against_the_data_file(tmp_path, images):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "img").mkdir()
    (tmp_path / "data" / "img" / "a.jpg").write_bytes(images["d1"].read_bytes())
    data = write(tmp_path / "data" / "t.jsonl", [
        {"id": "p", "prompt": "Film <image>. Disease?", "completion": COT, "images": ["img/a.jpg"]},
        {"id": "q", "prompt": "Disease?", "completion": COT, "images": [str(images["d2"])]},
        {"id": "t", "prompt": "No image. Disease?", "completion": COT}])
    recs = read_trajectories(data)
    assert recs[0]["images"] == [str((tmp_path / "data" / "img" / "a.jpg").resolve())]
    assert recs[1]["images"] == [str(images["d2"])] and recs[1]["prompt"] == "<image>Disease?"  # untagged: first
    assert "images" not in recs[2] and recs[2]["prompt"] == "No image. Disease?"
    assert refs(recs[0], "t.jsonl, line 1") == [ImageRef(tmp_path / "data" / "img" / "a.jpg", "t.jsonl, line 1, images[0]")]


def test_trl_conversational_vision_records_keep_image_parts_as_placeholders(tmp_path, images):
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the disease?"}]}
    rec = {"prompt": [user], "completion": [{"role": "assistant", "content": COT}], "images": [str(images["d3"])]}
    recs = read_trajectories(write(tmp_path / "trl.jsonl", [rec]))
    assert recs[0]["chat"] == [{"role": "user", "content": "<image>What is the disease?"}]
    assert recs[0]["images"] == [str(images["d3"])] and recs[0]["label"] == "Pneumonia"


def _dataset(folder, column, feature_type, rows):
    """A ``datasets.save_to_disk`` folder written by the datasets library itself."""
    import datasets

    features = datasets.Features({"prompt": datasets.Value("string"), "completion": datasets.Value("string"),
                                  column: feature_type})
    datasets.Dataset.from_dict({"prompt": [r[0] for r in rows], "completion": [r[1] for r in rows],
                                column: [r[2] for r in rows]}, features=features).save_to_disk(str(folder))
    return folder


def test_a_datasets_image_feature_with_bytes_goes_to_a_content_addressed_cache(tmp_path, images):
    import datasets
    from PIL import Image

    folder = _dataset(tmp_path / "ds", "images", datasets.Sequence(datasets.Image()),
                      [("<image> Disease?", COT, [Image.open(images["d1"])]),
                       ("<image> Disease?", COT, [Image.open(images["d1"])])])
    cache = tmp_path / "cache" / "images"
    recs = read_trajectories(folder, image_cache=cache)
    assert recs[0]["images"] == recs[1]["images"]  # the same bytes, one file
    stored = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(stored) == 1 and str(stored[0]) == recs[0]["images"][0]
    assert Image.open(stored[0]).size == Image.open(images["d1"]).size
    json.dumps(recs)  # no bytes left in the records: they go on into an analysis's JSONL


def test_a_datasets_image_feature_that_stores_paths_keeps_them(tmp_path, images):
    """An ``Image`` column of ``{bytes: None, path}`` structs (files referenced, not embedded), in the
    ``save_to_disk`` layout (an arrow stream and state.json), one path relative to the folder."""
    import pyarrow as pa

    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "d3.jpg").write_bytes(images["d3"].read_bytes())
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"prompt": ["<image> Disease?"] * 2, "completion": [COT] * 2,
                      "image": pa.array([{"bytes": None, "path": str(images["d2"])},
                                         {"bytes": None, "path": "d3.jpg"}], type=image)})
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    recs = read_trajectories(folder, image_cache=tmp_path / "cache")
    assert recs[0]["images"] == [str(images["d2"])] and "image" not in recs[0]
    assert recs[1]["images"] == [str((folder / "d3.jpg").resolve())]
    assert not (tmp_path / "cache").exists()  # referenced, not copied


def test_bad_image_values_are_named(tmp_path, images):
    data = write(tmp_path / "t.jsonl", [{"prompt": "<image> x", "completion": COT, "images": [3]}])
    with pytest.raises(InputError, match=r"t\.jsonl, line 1, images: expected a list of image paths"):
        read_trajectories(data)
    big = tmp_path / "big.png"
    from PIL import Image

    Image.new("1", (8000, 7000)).save(big)  # 56 M pixels (1 bit each: small to write): over the 50 M limit, refused from the header
    data = write(tmp_path / "t.jsonl", [{"prompt": "<image> x", "completion": COT, "images": ["big.png"]}])
    with pytest.raises(InputError, match=r"t\.jsonl, line 1, images\[0\]: image .*big\.png has 8000x7000 pixels"):
        read_trajectories(data)
    assert read_trajectories(data, check_images=False)[0]["images"] == [str(big)]


@pytest.mark.parametrize("kind", ["absolute", "dotdot"])
def test_images_outside_the_roots_are_refused_with_one_message_whether_or_not_they_exist(tmp_path, images, kind):
    """A file opened in the UI names image paths on this machine: outside the data roots each is refused the
    same way (not "image not found" for one and "cannot read image" for a protected file)."""
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "real.jpg").write_bytes(images["d1"].read_bytes())
    messages = []
    for name in ("real.jpg", "missing.jpg"):
        path = str(outside / name) if kind == "absolute" else f"../../outside/{name}"
        data = write(root / "data" / "t.jsonl", [{"id": "p", "prompt": "<image> Disease?", "completion": COT,
                                                   "images": [path]}])
        with pytest.raises(InputError) as e:
            read_trajectories(data, image_roots=[root])
        messages.append(str(e.value).replace(str(outside / name), "PATH").replace(path, "PATH"))
    assert messages[0] == messages[1] and "t.jsonl, line 1, images[0]" in messages[0]
    assert "not under the data roots" in messages[0]
    (root / "data" / "in.jpg").write_bytes(images["d1"].read_bytes())
    inside = write(root / "data" / "ok.jsonl", [{"prompt": "<image> Disease?", "completion": COT, "images": ["in.jpg"]}])
    assert read_trajectories(inside, image_roots=[root])[0]["images"] == [str((root / "data" / "in.jpg").resolve())]
