"""Images in records: paths, placeholders, ms-swift and CCF layouts, named errors, content hashes."""

import json
import shutil

import pytest

from core.errors import InputError
from core.io.images import (
    ImageLimits,
    ImageRef,
    check_image,
    content_hash,
    image_index,
    images_key,
    load_image,
    record_images,
)
from core.io.vl_records import CCF_PROMPT, read_ccf_records, read_vl_records


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_paths_relative_to_the_data_file_or_absolute(tmp_path, images):
    (tmp_path / "imgs").mkdir()
    shutil.copy(images["d1"], tmp_path / "imgs" / "a.jpg")
    data = tmp_path / "data.jsonl"
    refs = record_images({"images": ["imgs/a.jpg", str(images["d2"])]}, data, line=4)
    assert refs[0].path == (tmp_path / "imgs" / "a.jpg").resolve() and refs[1].path == images["d2"]
    assert refs[1].where == f"{data}, line 4, images[1]"
    assert record_images({"images": "imgs/a.jpg"}, data, 1)[0].path.name == "a.jpg"  # one string: one image
    with pytest.raises(InputError, match=r"line 2, images: expected a list of image paths"):
        record_images({"images": [3]}, data, 2)


def test_swift_records_keep_images_and_rejected_images(tmp_path, images):
    shutil.copytree(images["d1"].parent.parent.parent, tmp_path / "cxr")
    rel = lambda n: str(next((tmp_path / "cxr").rglob(f"{n}.*")).relative_to(tmp_path))  # noqa: E731
    data = write_jsonl(tmp_path / "swift.jsonl", [
        {"messages": [{"role": "system", "content": "You are a radiologist."},
                      {"role": "user", "content": "This is a patient's chest DR image <image>. Disease?"},
                      {"role": "assistant", "content": "<think> opacity </think> The disease of this patient is Pneumonia."}],
         "images": [rel("d1")],
         "rejected_messages": [{"role": "user", "content": "This is a patient's chest DR image <image>. Disease?"},
                               {"role": "assistant", "content": "<think> opacity </think> The disease of this patient is Edema."}],
         "rejected_images": [rel("d2")]},
        {"messages": [{"role": "user", "content": "Untagged. Disease?"},
                      {"role": "assistant", "content": "<think> clear </think> The disease of this patient is No Finding."}],
         "images": [rel("d3")], "rejected_response": "ignored here"},
    ])
    recs = read_vl_records(data)
    assert [r["id"] for r in recs] == ["line-1", "line-1:rejected", "line-2"]
    assert recs[0]["image_refs"][0].path.stem == "d1" and recs[1]["image_refs"][0].path.stem == "d2"
    assert recs[1]["completion"].endswith("Edema.")
    assert recs[2]["prompt"] == "<image>Untagged. Disease?"  # untagged images go first, as ms-swift does


def test_text_counterfactual_keeps_the_chosen_image(tmp_path, images):
    msgs = lambda a: [{"role": "user", "content": "<image> Disease?"}, {"role": "assistant", "content": a}]  # noqa: E731
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": msgs("A"), "rejected_messages": msgs("B"),
                                               "images": [str(images["d1"])]}])
    chosen, rejected = read_vl_records(data)
    assert chosen["image_refs"] == rejected["image_refs"]


@pytest.mark.parametrize("case,expected", [
    ("missing", "line 2, images\\[0\\]: image not found: .*nope.jpg"),
    ("garbage", "line 2, images\\[0\\]: cannot read image .*bad.jpg"),
    ("placeholders", "line 2, field 'prompt': 2 '<image>' placeholder\\(s\\) in the text but 1 image"),
])
def test_bad_images_name_the_record_and_path(tmp_path, images, case, expected):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    good = {"prompt": "<image> ok", "completion": "c", "images": [str(images["d1"])]}
    bad = {"missing": {"prompt": "<image> x", "completion": "c", "images": ["nope.jpg"]},
           "garbage": {"prompt": "<image> x", "completion": "c", "images": ["bad.jpg"]},
           "placeholders": {"prompt": "<image> <image> x", "completion": "c", "images": [str(images["d1"])]}}[case]
    data = write_jsonl(tmp_path / "t.jsonl", [good, bad])
    with pytest.raises(InputError, match=f"{tmp_path / 't.jsonl'}, {expected}"):
        read_vl_records(data)


def test_oversized_images_are_refused_before_decoding(images):
    ref = ImageRef(images["d4"], "data.jsonl, line 9, images[0]")  # 300 x 150
    with pytest.raises(InputError, match=r"line 9, images\[0\]: image .*d4.png has 300x150 pixels, over the limit"):
        check_image(ref, ImageLimits(max_file_pixels=300 * 150 - 1))
    with pytest.raises(InputError, match=r"line 9, images\[0\]: image .*d4.png is \d+ bytes, over the limit of 100"):
        load_image(ref, ImageLimits(max_file_bytes=100))
    assert check_image(ref) == (300, 150) and load_image(ref).size == (300, 150)


def test_content_hash_follows_the_bytes_not_the_name(tmp_path, images):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    shutil.copy(images["d1"], a)
    shutil.copy(images["d1"], b)
    assert content_hash(a) == content_hash(b) != content_hash(images["d2"])
    key = images_key([ImageRef(a, ""), ImageRef(images["d2"], "")])
    assert key != images_key([ImageRef(images["d2"], ""), ImageRef(a, "")])  # order is part of the key
    shutil.copy(images["d3"], a)  # replaced under the same name: a new hash
    assert content_hash(a) == content_hash(images["d3"]) != content_hash(b)


def test_image_index_reads_the_nested_mimic_layout(image_root, tmp_path):
    index = image_index(image_root)
    assert set(index) == {"d1", "d2", "d3", "d4"}
    assert index["d2"].parent.name == "images" and index["d2"].parent.parent.name.startswith("mimic-cxr-00")
    dup = tmp_path / "dup"
    shutil.copytree(image_root, dup)
    shutil.copy(index["d1"], dup / "mimic-cxr-002" / "images" / "d1.png")
    with pytest.raises(InputError, match="two images for dicom_id 'd1'"):
        image_index(dup)


def test_ccf_items_find_their_image_by_dicom_id(tmp_path, image_root):
    ccf = tmp_path / "ccf.json"
    items = [{"dicom_id": "d2", "report": "Enlarged heart.", "diagnose": "Cardiomegaly",
              "counterfact": {"Edema": "Vascular congestion."}},
             {"dicom_id": "d4", "report": "Clear lungs.", "diagnose": "No Finding"}]
    ccf.write_text(json.dumps(items))
    recs = read_ccf_records(ccf, image_root, counterfactuals=True)
    assert [r["id"] for r in recs] == ["d2", "d2:Edema", "d4"]
    assert recs[0]["prompt"] == CCF_PROMPT and recs[0]["image_refs"][0].path.stem == "d2"
    assert recs[1]["image_refs"] == recs[0]["image_refs"] and "Vascular congestion." in recs[1]["completion"]
    items.append({"dicom_id": "d9", "report": "r", "diagnose": "Edema"})
    ccf.write_text(json.dumps(items))
    with pytest.raises(InputError, match=r"ccf.json, item 2, field 'dicom_id': no image named 'd9'"):
        read_ccf_records(ccf, image_root)


def _ramp16(tmp_path, name, **save):
    """A 16-bit grey radiograph-like ramp: 0..4095 (12-bit detector values) in a 65535 range."""
    import numpy as np
    from PIL import Image

    a = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (32, 1))
    im = Image.fromarray(a)  # mode I;16
    im.save(tmp_path / name, **save)
    return tmp_path / name, a


@pytest.mark.parametrize("name", ["x.png", "x.tif"])
def test_16_bit_images_are_scaled_over_their_range_not_clipped_white(tmp_path, name):
    import numpy as np

    path, a = _ramp16(tmp_path, name)
    rgb = np.asarray(load_image(ImageRef(path, "t.jsonl, line 1, images[0]")))
    assert rgb.shape == (32, 64, 3) and rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255
    assert 120 < rgb.mean() < 135  # a ramp: mid-grey on average (clipped at 255 it was 254)
    assert np.all(np.diff(rgb[0, :, 0].astype(int)) >= 0)  # order kept


def test_a_16_bit_png_with_a_dicom_style_window_uses_it(tmp_path):
    import numpy as np
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("WindowCenter", "1000")
    meta.add_text("WindowWidth", "1000")
    path, a = _ramp16(tmp_path, "w.png", pnginfo=meta)
    grey = np.asarray(load_image(ImageRef(path, "w")))[..., 0]
    assert (grey[a <= 500] == 0).all() and (grey[a >= 1500] == 255).all()
    mid = (a > 600) & (a < 1400)
    assert ((grey[mid] > 0) & (grey[mid] < 255)).all()


def test_exif_orientation_turns_the_image_upright(tmp_path):
    from PIL import Image

    im = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: a viewer shows it 20 wide, 40 high
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(ImageRef(tmp_path / "r.jpg", "r")).size == (20, 40)
