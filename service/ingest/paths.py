"""Path safety and image file checks: every image must resolve to a readable file inside its dataset root."""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from ..limits import PathLimits
from .rows import RowRejected, unstorable_text

_DRIVE = re.compile(r"^[A-Za-z]:")
DICOM_MAGIC_OFFSET = 128  # DICOM Part 10: a 128-byte preamble, then "DICM"


class PathRejected(RowRejected):
    """A path that is unsafe or names nothing usable (a RowRejected, so an upload goes on without the row)."""


@dataclass(frozen=True, slots=True)
class ImageFile:
    uri: str  # normalised path relative to the root, as stored in Sample.image_uri
    path: Path  # the resolved file that was checked (read this one, not the symlink, to avoid a swap)
    sha256: str


def check_lengths(path: str, what: str, limits: PathLimits) -> None:
    """PATH_MAX / NAME_MAX style bounds (UTF-8 bytes), before the path reaches the filesystem."""
    size = len(path.encode())
    if size > limits.path_bytes:
        raise PathRejected(f"{what} is {size} bytes long, over the limit of {limits.path_bytes}")
    longest = max(path.split("/"), key=lambda part: len(part.encode()))
    if len(longest.encode()) > limits.name_bytes:
        raise PathRejected(
            f"{what} has a component of {len(longest.encode())} bytes, over the limit of {limits.name_bytes} "
            f"(starts {longest[:24]!r})"
        )


def relative_uri(rel: str, what: str = "image path", limits: PathLimits = PathLimits()) -> str:
    """The normalised relative form of ``rel``; refuses absolute, over-long paths and ``..`` before touching the
    disk."""
    if not rel:
        raise PathRejected(f"missing {what}")
    if (problem := unstorable_text(rel)) is not None:
        raise PathRejected(f"{what} contains {problem}")
    check_lengths(rel, what, limits)
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


def resolve_inside(
    root: Path, rel: str, what: str = "image path", limits: PathLimits = PathLimits()
) -> tuple[str, Path]:
    """``(uri, real path)``; the real path, after following every symlink, must stay under the real root.

    The containment check comes before the existence check, so a client learns nothing about files
    outside the root. Lengths are checked first (of ``rel``, of the root joined with it, and of the real path),
    so an over-long path is refused, never passed to the filesystem.
    """
    uri = relative_uri(rel, what, limits)
    real_root = Path(os.path.realpath(root))
    check_lengths(f"{real_root}/{uri}", f"{what} under the dataset root", limits)
    real = Path(os.path.realpath(real_root / uri))
    if not real.is_relative_to(real_root):
        raise PathRejected(f"{what} resolves outside the dataset root (symlink escape): {rel!r}")
    check_lengths(str(real), f"{what} (resolved)", limits)
    if not os.path.exists(real):  # not Path.exists: that raises on EACCES; a file we cannot stat is not found
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


class RootNotAllowed(PathRejected):
    """A root outside the allowed roots: the answer names neither the path nor whether it exists."""


def check_allowed(root: str, allowed: Sequence[Path] | None) -> None:
    """Refuse a root whose real path (every symlink followed) is not under one of the ``allowed`` directories
    (None: anywhere, the embedded default; an empty list: nowhere)."""
    if allowed is None:
        return
    if not allowed:
        raise RootNotAllowed(
            "no allowed dataset roots are configured (set CHEX_ALLOWED_ROOTS to the directories datasets may use)"
        )
    real = Path(os.path.realpath(root))
    if not any(real.is_relative_to(os.path.realpath(a)) for a in allowed):
        raise RootNotAllowed("root is outside the allowed dataset roots (CHEX_ALLOWED_ROOTS)")


def check_root(root: str, allowed: Sequence[Path] | None = None, limits: PathLimits = PathLimits()) -> str:
    """A dataset root: an existing, readable, absolute directory on this server, under an allowed root
    (normalised, not resolved, so a root reached through a mount symlink keeps its name; containment is checked
    against its real path). Existence is only looked at once the root is known to be allowed."""
    if (problem := unstorable_text(root)) is not None:
        raise PathRejected(f"root contains {problem}")
    if not root or not os.path.isabs(root):
        raise PathRejected(f"root must be an absolute path: {root!r}")
    check_lengths(root, "root", limits)
    normal = os.path.normpath(root)
    check_allowed(normal, allowed)
    if not os.path.isdir(normal):
        raise PathRejected(f"root is not an existing directory on the server: {root!r}")
    if not os.access(normal, os.R_OK | os.X_OK):
        raise PathRejected(f"root is not readable by the service: {root!r}")
    return normal
