"""Thumbnails of a dataset's images (PNG, JPEG, DICOM), made once and kept on disk.

The image path is resolved inside its dataset root exactly as at ingest (``ingest.paths``: no ``..``, no symlink
out of the root). DICOM pixels get the file's VOI LUT or window (pydicom's ``apply_voi_lut``), else a min-max
window, and MONOCHROME1 is inverted, so a thumbnail looks as a reading screen would show it. A thumbnail is keyed
by the image's content hash (or its size and modification time when ingest read no pixels) and the requested
side, which is also its ETag.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..ingest.dicom import DicomProblem, check_pixels
from ..ingest.images import DICOM_MAGIC_OFFSET
from ..ingest.paths import resolve_inside
from ..limits import PathLimits

#: the sides a client may ask for (a fixed few, so the cache holds a bounded number of files per image)
SIDES = (96, 192, 512)


@dataclass(frozen=True)
class Thumbnail:
    path: Path  # the cached PNG
    etag: str


def _dicom_pixels(data: bytes) -> Image.Image:
    from pydicom.pixels import apply_voi_lut

    try:
        ds = check_pixels(io.BytesIO(data))
    except DicomProblem as exc:
        raise ValueError(exc.reason) from exc
    pixels = np.asarray(ds.pixel_array)
    if pixels.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        pixels = pixels[0]  # a multi-frame image: its first frame
    if ds.get("SamplesPerPixel", 1) == 1:
        windowed = apply_voi_lut(pixels, ds) if ("WindowCenter" in ds or "VOILUTSequence" in ds) else pixels
        values = np.asarray(windowed, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            scaled = 1.0 - scaled
        return Image.fromarray(np.round(scaled * 255).astype(np.uint8), mode="L")
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8))


def render(data: bytes, side: int) -> bytes:
    """The image in ``data`` scaled to fit ``side`` x ``side``, as PNG bytes."""
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        image = _dicom_pixels(data)
    else:
        image = Image.open(io.BytesIO(data))
        image.load()
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK") else "L")
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def thumbnail(
    root: str, image_uri: str, content_hash: str, side: int, cache_dir: Path, limits: PathLimits = PathLimits()
) -> Thumbnail:
    """The cached thumbnail of one image, made now if it is not there yet. Raises ``PathRejected`` for a path
    outside the root or a missing file, ValueError for an image that does not decode."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side}")
    _, real = resolve_inside(Path(root), image_uri, "image path", limits)
    if content_hash:
        version = content_hash
    else:
        stat = os.stat(real)
        version = f"{stat.st_size}-{stat.st_mtime_ns}"
    key = hashlib.sha256(f"{real}\0{version}\0{side}".encode()).hexdigest()
    path = cache_dir / key[:2] / f"{key}.png"
    if not path.is_file():
        png = render(real.read_bytes(), side)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(png)
        os.replace(tmp, path)  # atomic: a concurrent reader sees no file or the whole file
    return Thumbnail(path, f'"{key[:32]}"')
