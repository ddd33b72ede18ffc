"""Image file checks: an image row names a readable file inside the root that decodes (DICOM, or what Pillow reads)."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..limits import PathLimits
from .dicom import DicomProblem, check_pixels
from .paths import PathRejected, relative_uri, resolve_inside

DICOM_MAGIC_OFFSET = 128  # DICOM Part 10: a 128-byte preamble, then "DICM"
#: ``Sample.content_hash`` of a sample whose image was not read: a text-only or embedding-only dataset
NO_IMAGE_HASH = ""


@dataclass(frozen=True, slots=True)
class ImageFile:
    uri: str  # normalised path relative to the root, as stored in Sample.image_uri
    path: Path  # the resolved file that was checked (read this one, not the symlink, to avoid a swap)
    sha256: str


def check_image_bytes(data: bytes) -> None:
    """Raise PathRejected unless ``data`` is a decodable image (DICOM, or anything Pillow reads)."""
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        try:
            check_pixels(io.BytesIO(data))
        except DicomProblem as exc:
            raise PathRejected(f"unreadable image: {exc.reason}") from exc
        return
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # structure and checksums (catches truncation) without a full decode
    except Exception as exc:  # Pillow raises many types for bad files; every one means "unreadable"
        raise PathRejected(f"unreadable image: {type(exc).__name__}: {exc}") from exc


def read_image(root: Path, rel: str, limits: PathLimits = PathLimits()) -> ImageFile:
    """Resolve, read, hash (sha256 of the file bytes) and check one image."""
    uri, real = resolve_inside(root, rel, "image path", limits)
    if not os.path.isfile(real):
        raise PathRejected(f"image path is not a file: {uri}")
    try:
        data = real.read_bytes()
    except OSError as exc:
        raise PathRejected(f"image file unreadable: {uri}: {exc.strerror}") from exc
    check_image_bytes(data)
    return ImageFile(uri=uri, path=real, sha256=hashlib.sha256(data).hexdigest())


def image_of(root: Path, rel: str, require: bool, limits: PathLimits = PathLimits()) -> tuple[str, str]:
    """``(uri, content hash)``: the image read and checked; with ``require`` off only its path is checked (it may be
    absent or empty), since offline curation of given embeddings needs no pixels."""
    if require:
        image = read_image(root, rel, limits)
        return image.uri, image.sha256
    return (relative_uri(rel, "image path", limits) if rel else ""), NO_IMAGE_HASH
