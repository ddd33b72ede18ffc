"""Images and reports of manifest items → model-ready tensors.

Radiographs come as PNG/JPEG (PIL) or DICOM (pydicom, compressed syntaxes through pylibjpeg). Preprocessing is the
reference's CLIP recipe on a grey image: resize the shorter side (bicubic), centre crop, scale to [0, 1], replicate to
three channels, normalise. No torchvision: its wheel does not load beside the pinned torch, so this is PIL + numpy.

An image that cannot be used raises :class:`UnreadableImage`; batch builders catch it, leave the row out and list it in
``Batch.unreadable`` so the training loop can report the sample to the service and go on with the step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from trainer.image_cache import CacheKey, ImageCache
from trainer.model import IMAGENET_MEAN, IMAGENET_STD

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}


class UnreadableImage(Exception):
    """The image of a sample cannot be used (missing, corrupt, blank, outside the root); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PathEscape(UnreadableImage):
    """An image URI that resolves outside the dataset root (``..``, absolute path, symlink)."""


# --------------------------------------------------------------------------------------------------- image loading


def _sniff_dicom(path: Path) -> tuple[bool, bool]:
    """``(is_dicom, has_magic)``. DICOM Part 10 files carry "DICM" after a 128-byte preamble; some archives drop
    the preamble, so the suffix counts too."""
    with path.open("rb") as fh:
        head = fh.read(132)
    has_magic = head[128:132] == b"DICM"
    return has_magic or path.suffix.lower() in DICOM_SUFFIXES, has_magic


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Min–max scale any numeric array to 0..255 (16-bit PNGs, windowed DICOM values)."""
    values = values.astype(np.float64, copy=False)
    lo, hi = float(values.min()), float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UnreadableImage("pixel values are not finite")
    if hi <= lo:
        raise UnreadableImage(f"blank image (every pixel is {lo:g})")
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _dicom_pixels(path: Path, has_magic: bool) -> np.ndarray:
    """Display pixels of a grey radiograph: modality LUT, then VOI LUT or window, MONOCHROME1 inverted."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    # without the preamble pydicom needs force=True to try; a non-DICOM file then fails at pixel_array
    ds = pydicom.dcmread(path, force=not has_magic)
    pixels = ds.pixel_array  # compressed syntaxes go through the installed pylibjpeg / gdcm plugins
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        # colour (pydicom hands back RGB): no LUTs apply, take the luminance
        return np.asarray(Image.fromarray(_to_uint8(pixels)).convert("L"))
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    out = _to_uint8(np.asarray(values))
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":  # 0 is white in MONOCHROME1
        out = 255 - out
    return out


def _raster_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()  # decode now: truncated files fail here, not later in a transform
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            # 16-bit / float PNG and TIFF: PIL's convert("L") would clip at 255, so scale the range instead
            return _to_uint8(np.asarray(im))
        grey = im if im.mode == "L" else im.convert("L")
        arr = np.asarray(grey)
    if arr.min() == arr.max():
        raise UnreadableImage(f"blank image (every pixel is {int(arr.min())})")
    return arr


def load_image(path: Path) -> Image.Image:
    """Load a radiograph as an 8-bit grey (mode ``L``) PIL image.

    PNG/JPEG/... through PIL; DICOM (detected by content or suffix) through pydicom. Raises :class:`UnreadableImage`
    for a missing, truncated, undecodable or blank file.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(f"no such file: {path}")
    kind = "file"
    try:
        is_dicom, has_magic = _sniff_dicom(path)
        kind = "DICOM" if is_dicom else "image"
        arr = _dicom_pixels(path, has_magic) if is_dicom else _raster_pixels(path)
    except UnreadableImage:
        raise
    except Exception as exc:  # PIL, pydicom and the decoder plugins raise many types; all mean "unreadable"
        raise UnreadableImage(f"cannot decode {kind} {path.name}: {type(exc).__name__}: {exc}") from exc
    if arr.ndim != 2:
        raise UnreadableImage(f"expected a 2-D grey image, got shape {arr.shape}")
    return Image.fromarray(arr)


def resolve_image_path(root: Path, uri: str) -> Path:
    """``root / uri`` for a relative URI that stays inside ``root`` after resolving ``..`` and symlinks."""
    if not uri or "\x00" in uri:
        raise PathEscape(f"invalid image uri {uri!r}")
    rel = PurePosixPath(uri)
    if rel.is_absolute() or ".." in rel.parts:
        raise PathEscape(f"image uri {uri!r} escapes the dataset root")
    real_root = Path(root).resolve()
    real = (real_root / rel).resolve()
    if not real.is_relative_to(real_root):
        raise PathEscape(f"image uri {uri!r} resolves outside the dataset root (symlink)")
    return real


# --------------------------------------------------------------------------------------------------- transforms


class ImageTransform:
    """CLIP-style preprocessing: bicubic resize of the shorter side, centre crop, normalise → float ``[3, S, S]``.

    Mirrors torchvision's ``Resize(S, BICUBIC) → CenterCrop(S) → ToTensor → Normalize(mean, std)``, including its
    rounding of the long side and of the crop offsets; a grey image is replicated to the three channels the
    (ImageNet-pretrained) vision tower expects.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need three channels")
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        size = self.image_size
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        pixels = arr.unsqueeze(0).expand(3, size, size) if arr.ndim == 2 else arr.permute(2, 0, 1)
        return (pixels - self.mean) / self.std

    def __repr__(self) -> str:
        mean, std = self.mean.flatten().tolist(), self.std.flatten().tolist()
        return f"ImageTransform(image_size={self.image_size}, mean={mean}, std={std})"


def tokenize(tokenizer: Any, reports: Sequence[str], max_tokens: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Reports → ``(input_ids, attention_mask)``, truncated to ``max_tokens``, padded to the longest in the batch."""
    if not reports:
        empty = torch.zeros((0, 0), dtype=torch.long)
        return empty, empty.clone()
    enc = tokenizer(
        [r if isinstance(r, str) else "" if r is None else str(r) for r in reports],
        padding="longest",
        truncation=True,
        max_length=max_tokens,
        return_tensors="pt",
    )
    return enc["input_ids"].long(), enc["attention_mask"].long()


# --------------------------------------------------------------------------------------------------- datasets


def _field(item: Any, key: str) -> Any:
    """Manifest items may be plain dicts (JSON) or objects with attributes."""
    return item[key] if isinstance(item, Mapping) else getattr(item, key)


@dataclass
class LoadedItem:
    """One manifest item after loading: pixels, or the reason it could not be read."""

    index: int
    sample_id: int
    report: str
    pixel_values: torch.Tensor | None
    error: str | None = None


@dataclass
class Batch:
    """Tensors of the readable rows of a manifest, in manifest order; the unreadable ones listed apart.

    ``indices`` are the positions of the readable rows in the original item list.
    """

    sample_ids: list[int]
    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    unreadable: list[tuple[int, str]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return replace(
            self,
            pixel_values=self.pixel_values.to(device, non_blocking=non_blocking),
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            attention_mask=self.attention_mask.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Page-locked copies, so a prefetched batch can be copied to the GPU asynchronously."""
        return replace(
            self,
            pixel_values=self.pixel_values.pin_memory(),
            input_ids=self.input_ids.pin_memory(),
            attention_mask=self.attention_mask.pin_memory(),
        )


def loaded_item(index: int, item: Any, pixels: torch.Tensor | None, error: str | None = None) -> LoadedItem:
    """A manifest item with its pixels (decoded now or cached), or with the reason it could not be read."""
    return LoadedItem(index, int(_field(item, "sample_id")), _field(item, "report") or "", pixels, error)


def load_item(index: int, item: Any, root: Path, transform: ImageTransform) -> LoadedItem:
    """Load and transform one manifest item; never raises for a bad image (the reason goes into ``error``)."""
    try:
        pixels = transform(load_image(resolve_image_path(root, str(_field(item, "image_uri")))))
    except UnreadableImage as exc:
        return loaded_item(index, item, None, exc.reason)
    return loaded_item(index, item, pixels)


def collate(loaded: Sequence[LoadedItem], tokenizer: Any, max_tokens: int = 256, image_size: int = 0) -> Batch:
    """Stack the readable items into a :class:`Batch`; ``image_size`` shapes an empty batch's pixel tensor."""
    ok = [x for x in loaded if x.pixel_values is not None]
    unreadable = [(x.sample_id, x.error or "unreadable") for x in loaded if x.pixel_values is None]
    reports = [x.report for x in ok]
    input_ids, attention_mask = tokenize(tokenizer, reports, max_tokens)
    if ok:
        pixel_values = torch.stack([x.pixel_values for x in ok if x.pixel_values is not None])
    else:
        pixel_values = torch.zeros((0, 3, image_size, image_size))
    return Batch(
        sample_ids=[x.sample_id for x in ok],
        pixel_values=pixel_values,
        input_ids=input_ids,
        attention_mask=attention_mask,
        unreadable=unreadable,
        indices=[x.index for x in ok],
        reports=reports,
    )


def encode_batch(
    items: Sequence[Any],
    root: Path,
    transform: ImageTransform,
    tokenizer: Any,
    workers: int = 4,
    max_tokens: int = 256,
    executor: Executor | None = None,
    cache: ImageCache | None = None,
) -> Batch:
    """Load a manifest's images in parallel threads (PIL resizing and the DICOM decoders release the GIL) and
    collate them. Pass a long-lived ``executor`` to avoid starting threads for every batch, and a ``cache`` to keep
    decoded images between epochs."""
    root = Path(root)

    def one(pair: tuple[int, Any]) -> LoadedItem:
        return load_item(pair[0], pair[1], root, transform)

    pairs = list(enumerate(items))
    loaded: list[LoadedItem | None] = [None] * len(pairs)
    keys: list[CacheKey] = []
    if cache is not None and cache.enabled:  # hits are answered here, without a thread or a file system call
        described = repr(transform)
        keys = [(str(root), str(_field(item, "image_uri")), described) for item in items]
        for i, key in enumerate(keys):
            pixels = cache.get(key)
            if pixels is not None:
                loaded[i] = loaded_item(i, items[i], pixels)
    missing = [p for p in pairs if loaded[p[0]] is None]
    if executor is not None:
        fresh = list(executor.map(one, missing))
    elif workers <= 1 or len(missing) <= 1:
        fresh = [one(p) for p in missing]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(missing)), thread_name_prefix="load-image") as pool:
            fresh = list(pool.map(one, missing))
    for got in fresh:
        loaded[got.index] = got
        if keys and cache is not None and got.pixel_values is not None:
            cache.put(keys[got.index], got.pixel_values)
    return collate([x for x in loaded if x is not None], tokenizer, max_tokens, transform.image_size)
