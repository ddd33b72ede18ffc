"""Path safety and image file checks: every image must resolve to a readable file inside its dataset root."""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from .rows import RowRejected

_DRIVE = re.compile(r"^[A-Za-z]:")
DICOM_MAGIC_OFFSET = 128  # DICOM Part 10: a 128-byte preamble, then "DICM"


class PathRejected(RowRejected):
    """A path that is unsafe or names nothing usable (a RowRejected, so an upload goes on without the row)."""


@dataclass(frozen=True, slots=True)
class ImageFile:
    uri: str  # normalised path relative to the root, as stored in Sample.image_uri
    path: Path  # the resolved file that was checked (read this one, not the symlink, to avoid a swap)
    sha256: str


def relative_uri(rel: str, what: str = "image path") -> str:
    """The normalised relative form of ``rel``; refuses absolute paths and ``..`` before touching the disk."""
    if not rel:
        raise PathRejected(f"missing {what}")
    if "\x00" in rel:
        raise PathRejected(f"{what} contains a NUL character")
    if "\\" in rel:
        # On POSIX a backslash is an ordinary character, so "..\\x" would not escape, but it is almost
        # always a Windows path that would then name the wrong file: say so instead of guessing.
        raise PathRejected(f"{what} contains a backslash (use '/' separators): {rel!r}")
    if rel.startswith("/") or _DRIVE.match(rel):
        raise PathRejected(f"absolute {what} not allowed: {rel!r}")
    pure = PurePosixPath(rel)
    if ".." in pure.parts:
        raise PathRejected(f"'..' not allowed in {what} (no escaping the dataset root): {rel!r}")
    return str(pure)


def resolve_inside(root: Path, rel: str, what: str = "image path") -> tuple[str, Path]:
    """``(uri, real path)``; the real path, after following every symlink, must stay under the real root.

    The containment check comes before the existence check, so a client learns nothing about files
    outside the root.
    """
    uri = relative_uri(rel, what)
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / uri))
    if not real.is_relative_to(real_root):
        raise PathRejected(f"{what} resolves outside the dataset root (symlink escape): {rel!r}")
    if not real.exists():
        raise PathRejected(f"file not found: {uri}")
    return uri, real


def check_image_bytes(data: bytes) -> None:
    """Raise PathRejected unless ``data`` is a decodable image (DICOM, or anything Pillow reads)."""
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        from .dicom import DicomProblem, check_pixels  # here, not at the top: dicom.py imports this module

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


def read_image(root: Path, rel: str) -> ImageFile:
    """Resolve, read, hash (sha256 of the file bytes) and check one image."""
    uri, real = resolve_inside(root, rel)
    if not real.is_file():
        raise PathRejected(f"image path is not a file: {uri}")
    try:
        data = real.read_bytes()
    except OSError as exc:
        raise PathRejected(f"image file unreadable: {uri}: {exc.strerror}") from exc
    check_image_bytes(data)
    return ImageFile(uri=uri, path=real, sha256=hashlib.sha256(data).hexdigest())


def check_root(root: str) -> str:
    """A dataset root: an existing, readable, absolute directory on this server (normalised, not resolved,
    so a root reached through a mount symlink keeps its name; containment is checked against its real path)."""
    if "\x00" in root:
        raise PathRejected("root contains a NUL character")
    if not root or not os.path.isabs(root):
        raise PathRejected(f"root must be an absolute path: {root!r}")
    normal = os.path.normpath(root)
    if not os.path.isdir(normal):
        raise PathRejected(f"root is not an existing directory on the server: {root!r}")
    if not os.access(normal, os.R_OK | os.X_OK):
        raise PathRejected(f"root is not readable by the service: {root!r}")
    return normal
