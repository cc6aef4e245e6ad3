"""Images of trajectory records: resolve their paths, read and check them, hash their content.

A record names its images the way the field writes them::

    {"messages": [...], "images": ["xray/123.jpg"], "rejected_images": ["/abs/456.jpg"]}   # ms-swift
    {"prompt": "... <image> ...", "completion": "...", "images": ["123.jpg"]}               # plain
    {"dicom_id": "abc", "report": ..., "diagnose": ..., "counterfact": {...}}               # CCF + image folder

Relative paths are relative to the data file's folder; CCF items find their image through an index of an
image folder (``image_index``), which maps each file's stem (the ``dicom_id``) to its path, searched
recursively so that MIMIC-CXR's ``mimic-cxr-00N/images/<dicom_id>.jpg`` layout works as is.

    refs = record_images(rec, Path("data/train.jsonl"), line=3)           # [ImageRef(path, where), ...]
    img = load_image(refs[0], ImageLimits())                              # PIL RGB image, checked
    key = content_hash(refs[0].path)                                      # sha256 of the file's bytes

Every error is an ``InputError`` that names the record (file, line) and the image path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core.errors import InputError

PLACEHOLDER = "<image>"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageLimits:
    """What an input image file may be before it is decoded (what the model resizes it to is another setting:
    ``core.models.vision.VisionConfig.min_pixels`` / ``max_pixels``)."""
    max_file_bytes: int = 64 << 20  # a file larger than this is refused before it is read
    max_file_pixels: int = 50_000_000  # width x height from the header, checked before decoding (decompression bombs)

    def __post_init__(self):
        if self.max_file_bytes < 1 or self.max_file_pixels < 1:
            raise ValueError(f"ImageLimits: expected positive limits, got {self.max_file_bytes}, {self.max_file_pixels}")


@dataclass(frozen=True)
class ImageRef:
    path: Path  # absolute
    where: str  # the record it belongs to, e.g. "data/train.jsonl, line 3, images[0]"


def _where(source: Path | str, line: int | str | None, field: str) -> str:
    """``data.jsonl, line 3, images[0]``; ``line`` may name the item itself (``"row 2"``, ``"item 'abc'"``)."""
    if line is None:
        return f"{source}, {field}"
    return f"{source}, {line if isinstance(line, str) else f'line {line}'}, {field}"


def resolve(path: str, data_file: Path) -> Path:
    """An absolute path as is; a relative one from the data file's folder."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(data_file).parent / p).resolve()


def record_images(rec: dict, data_file: Path, line: int | str | None = None, field: str = "images") -> list[ImageRef]:
    """The images a record names in ``field`` (``images`` or ``rejected_images``); a string counts as one."""
    value = rec.get(field)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InputError(f"{_where(data_file, line, field)}: expected a list of image paths (strings), got {value!r}")
    return [ImageRef(resolve(v, data_file), _where(data_file, line, f"{field}[{i}]")) for i, v in enumerate(value)]


def refs(rec: dict, where: str = "") -> list[ImageRef]:
    """The images of a workbench trajectory record (``"images"``: absolute path strings, as
    ``core.io.trajectories`` keeps them) as refs for the vision-language family's encoder; ``where`` names the record."""
    where = where or f"trajectory {rec.get('id', '?')}"
    return [ImageRef(Path(p), f"{where}, images[{i}]") for i, p in enumerate(rec.get("images") or [])]


def check_placeholders(text: str, n_images: int, where: str) -> None:
    """Each image needs one ``<image>`` placeholder in the text, in order; a text without any gets none."""
    n = text.count(PLACEHOLDER)
    if n != n_images:
        raise InputError(f"{where}: {n} '{PLACEHOLDER}' placeholder(s) in the text but {n_images} image(s); "
                         "expected one placeholder per image")


def image_index(folder: str | Path) -> dict[str, Path]:
    """``dicom_id`` (file stem) -> image path, for every image under ``folder`` (recursive, so the
    ``mimic-cxr-00N/images/`` layout works); two files with the same stem are an error naming both."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"{root}: image folder not found")
    found: dict[str, Path] = {}  # built once per import by the caller (an rglob over thousands of files)
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            if p.stem in found:
                raise InputError(f"{root}: two images for dicom_id {p.stem!r}: {found[p.stem]} and {p}")
            found[p.stem] = p
    return found


def ccf_image(item: dict, index: dict[str, Path], source: Path | str, item_no: int) -> ImageRef:
    """The image of a CCF item, through its ``dicom_id`` and an ``image_index``."""
    dicom = item.get("dicom_id")
    where = f"{source}, item {item_no}, field 'dicom_id'"
    if not isinstance(dicom, str) or not dicom.strip():
        raise InputError(f"{where}: expected the study's dicom_id (a string) to find its image")
    if dicom not in index:
        raise InputError(f"{where}: no image named {dicom!r} (.jpg/.png) in the image folder")
    return ImageRef(index[dicom], where)


def check_file(ref: ImageRef, limits: ImageLimits) -> None:
    """Exists, is a file, and is not larger than the limit (no decoding)."""
    if not ref.path.exists():
        raise InputError(f"{ref.where}: image not found: {ref.path}")
    if not ref.path.is_file():
        raise InputError(f"{ref.where}: not a file: {ref.path}")
    size = ref.path.stat().st_size
    if size > limits.max_file_bytes:
        raise InputError(f"{ref.where}: image {ref.path} is {size} bytes, over the limit of {limits.max_file_bytes}")


def load_image(ref: ImageRef, limits: ImageLimits | None = None):
    """The image as an RGB PIL image; ``InputError`` names the record and path when it is missing,
    unreadable or oversized (pixels are checked from the header, before decoding)."""
    return _open(ref, limits or ImageLimits(), to_rgb)  # decodes while the file is open


def to_rgb(im):
    """An RGB image as a viewer shows the file: turned upright by its EXIF orientation, and a 16-bit or
    floating-point grey image (radiographs: ``I;16`` PNG or TIFF, 0..65535) scaled to 8 bits over its window
    (``window_levels``), not clipped at 255 (which turned X-rays white)."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I") or im.mode == "F":
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        lo, hi = window_levels(im, a)
        scaled = np.clip((a - lo) / (hi - lo), 0, 1) * 255 if hi > lo else np.zeros_like(a)
        im = Image.fromarray(np.rint(scaled).astype(np.uint8))  # mode L
    return im.convert("RGB")


def window_levels(im, values) -> tuple[float, float]:
    """The grey range mapped to black..white: the DICOM-style window a file gives (``WindowCenter`` /
    ``WindowWidth`` in its text chunks or TIFF tags), else the image's own full range, as radiology viewers do."""
    info = {str(k).lower().replace(" ", ""): v for k, v in (im.info or {}).items()}
    try:
        centre, width = float(info["windowcenter"]), float(info["windowwidth"])
        if width > 0 and all(map(_finite, (centre, width))):
            return centre - width / 2, centre + width / 2
    except (KeyError, TypeError, ValueError):
        pass
    return float(values.min()), float(values.max())


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def check_image(ref: ImageRef, limits: ImageLimits | None = None) -> tuple[int, int]:
    """What ``load_image`` checks, without decoding the pixels (PIL's ``verify``).  -> (width, height)"""
    return _open(ref, limits or ImageLimits(), lambda im: (im.verify(), im.size)[1])


def _open(ref: ImageRef, limits: ImageLimits, use):
    from PIL import Image, UnidentifiedImageError

    check_file(ref, limits)
    try:
        with Image.open(ref.path) as im:
            w, h = im.size
            if w * h > limits.max_file_pixels:
                raise InputError(f"{ref.where}: image {ref.path} has {w}x{h} pixels, over the limit of "
                                 f"{limits.max_file_pixels}")
            return use(im)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL reports truncated or corrupt files as OSError / SyntaxError (from verify)
        raise InputError(f"{ref.where}: cannot read image {ref.path} ({str(e).splitlines()[0]})") from None


def content_hash(path: Path) -> str:
    """sha256 of the file's bytes (first 16 hex digits): the image's part of a cache key, so that a file
    replaced under the same name invalidates cached scores."""
    st = Path(path).stat()
    return _hash(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4096)
def _hash(path: str, size: int, mtime_ns: int) -> str:  # size and mtime make the memo safe against edits
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def images_key(refs: list[ImageRef]) -> str:
    """One key for an ordered list of images (a record's part of a cache key)."""
    return hashlib.sha256("|".join(content_hash(r.path) for r in refs).encode()).hexdigest()[:16]


_PLACEHOLDER_RE = re.compile(re.escape(PLACEHOLDER))


def split_placeholders(text: str) -> list[str]:
    """The text between ``<image>`` placeholders: n placeholders -> n + 1 pieces."""
    return _PLACEHOLDER_RE.split(text)
