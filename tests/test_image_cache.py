"""The trainer's in-memory cache of decoded images: hits equal fresh loads and touch no file, unreadable images are
never kept, the byte bound holds, and a trainer builds its cache from ``--image-cache-mb`` or takes a shared one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import ImageTransform, encode_batch
from trainer.distributed import World
from trainer.image_cache import ImageCache
from trainer.model import build_model
from trainer.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def tokenizer():
    return build_model("tiny").tokenizer


def _images(root: Path, n: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8), mode="L").save(root / f"{i}.png")
        items.append({"sample_id": i, "image_uri": f"{i}.png", "report": f"report {i}"})
    return items


def test_hits_equal_fresh_loads_and_read_no_file(tmp_path: Path, tokenizer) -> None:
    items = _images(tmp_path, 6)
    transform = ImageTransform(32)
    cache = ImageCache(2**20)
    with ThreadPoolExecutor(2) as pool:
        fresh = encode_batch(items, tmp_path, transform, tokenizer, executor=pool)
        first = encode_batch(items, tmp_path, transform, tokenizer, executor=pool, cache=cache)
        assert (cache.misses, cache.hits, len(cache)) == (6, 0, 6)
        assert cache.bytes == 6 * 3 * 32 * 32 * 4
        for path in tmp_path.glob("*.png"):  # a hit is a lookup: the files are not opened again
            path.unlink()
        again = encode_batch(items[::-1], tmp_path, transform, tokenizer, executor=pool, cache=cache)
    assert (cache.misses, cache.hits) == (6, 6)
    torch.testing.assert_close(first.pixel_values, fresh.pixel_values, rtol=0, atol=0)
    torch.testing.assert_close(again.pixel_values, fresh.pixel_values.flip(0), rtol=0, atol=0)
    assert again.sample_ids == [5, 4, 3, 2, 1, 0] and again.reports[0] == "report 5" and again.unreadable == []


def test_another_transform_is_another_entry(tmp_path: Path, tokenizer) -> None:
    items = _images(tmp_path, 2)
    cache = ImageCache(2**20)
    small = encode_batch(items, tmp_path, ImageTransform(16), tokenizer, workers=1, cache=cache)
    large = encode_batch(items, tmp_path, ImageTransform(32), tokenizer, workers=1, cache=cache)
    assert small.pixel_values.shape[-1] == 16 and large.pixel_values.shape[-1] == 32
    assert (cache.misses, len(cache)) == (4, 4)


def test_unreadable_images_are_reported_every_time_and_never_kept(tmp_path: Path, tokenizer) -> None:
    items = _images(tmp_path, 3)
    (tmp_path / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cache = ImageCache(2**20)
    for _ in range(2):
        batch = encode_batch(items, tmp_path, ImageTransform(32), tokenizer, workers=2, cache=cache)
        assert batch.sample_ids == [0, 2] and [sid for sid, _ in batch.unreadable] == [1]
        assert batch.indices == [0, 2]
    assert len(cache) == 2 and cache.misses == 3 + 1  # the bad image is tried again, the good ones hit


def test_the_byte_bound_holds_and_a_full_cache_still_loads(tmp_path: Path, tokenizer) -> None:
    items = _images(tmp_path, 4)
    one = 3 * 32 * 32 * 4
    cache = ImageCache(2 * one + one // 2)
    batch = encode_batch(items, tmp_path, ImageTransform(32), tokenizer, workers=1, cache=cache)
    assert len(batch) == 4 and len(cache) == 2 and cache.bytes == 2 * one
    off = ImageCache(0)
    encode_batch(items, tmp_path, ImageTransform(32), tokenizer, workers=1, cache=off)
    assert not off.enabled and len(off) == 0 and off.misses == 0
    with pytest.raises(ValueError, match="max_bytes"):
        ImageCache(-1)


def test_a_trainer_sizes_its_cache_from_the_config_or_takes_a_shared_one(tmp_path: Path) -> None:
    config = TrainConfig(api="http://unused", run_id=1, model="tiny", device="cpu", out=tmp_path, image_cache_mb=3)
    assert Trainer(config, World(), client=None).image_cache.max_bytes == 3 * 2**20
    shared = ImageCache(0)  # empty and off, still the one used: an empty cache is not "no cache"
    assert Trainer(config, World(), client=None, image_cache=shared).image_cache is shared
    default = TrainConfig(api="http://unused", run_id=1, model="tiny", device="cpu", out=tmp_path)
    assert Trainer(default, World(), client=None).image_cache.max_bytes == 0
