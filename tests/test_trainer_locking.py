"""Locked towers (open_clip's --lock-text / --lock-image), the locked text tower's cache and its prefill, the
minilm-cnn presets and towers loaded from local checkpoint directories. Offline: no model hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.convnet import SmallConvNet
from trainer.data import tokenize
from trainer.locking import fully_locked, layer_groups
from trainer.loss import clip_loss
from trainer.model import ClipConfig, ClipModel, build_model, preset_config, random_shift
from trainer.text_cache import TextFeatureCache
from trainer.train import TrainConfig

REPORTS = [
    "No acute cardiopulmonary process.",
    "Large left pleural effusion with basilar atelectasis.",
    "No acute cardiopulmonary process.",
    "Cardiomegaly. No pleural effusion.",
]


@pytest.fixture(scope="module")
def minilm_cnn() -> ClipModel:
    torch.manual_seed(0)
    return build_model("minilm-cnn")


def _inputs(model: ClipModel, reports: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = tokenize(model.tokenizer, reports, model.config.max_tokens)
    return torch.randn(len(reports), 3, model.image_size, model.image_size), ids, mask


def test_minilm_cnn_trains_the_conv_net_and_projections_only(minilm_cnn: ClipModel) -> None:
    model = minilm_cnn.train()
    assert isinstance(model.vision, SmallConvNet) and fully_locked(model.text) and not fully_locked(model.vision)
    assert not model.text.training and model.vision.training  # a locked tower stays in eval mode
    model.zero_grad()
    img, txt, scale = model(*_inputs(model, REPORTS))
    assert img.shape == txt.shape == (4, 128)
    clip_loss(img, txt, scale).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.split(".")[0] in ("vision", "image_projection", "text_projection", "logit_scale")
                             for n in trainable)  # fmt: skip
    missing = [n for n in trainable if model.get_parameter(n).grad is None]
    assert missing == []
    assert all(p.grad is None for p in model.text.parameters())
    model.zero_grad()


def _empty_cache(model: ClipModel) -> TextFeatureCache:
    cache = model.text_cache
    assert cache is not None
    cache.store.clear()
    cache.hits = cache.misses = 0
    return cache


def test_locked_text_outputs_are_cached_and_equal_uncached(minilm_cnn: ClipModel) -> None:
    model = minilm_cnn.eval()
    cache = _empty_cache(model)
    ids, mask = tokenize(model.tokenizer, REPORTS, model.config.max_tokens)
    first = model.text_features(ids, mask)
    # three distinct reports among four rows: the repeat in the same batch is already a hit
    assert (len(cache), cache.misses, cache.hits) == (3, 3, 1)
    again = model.text_features(ids, mask)
    assert (len(cache), cache.misses, cache.hits) == (3, 3, 5)
    uncached = model.locked_text_features(ids, mask)
    torch.testing.assert_close(first, uncached, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, first)
    # the same report in a batch padded to another length is the same key
    ids2, mask2 = tokenize(model.tokenizer, [REPORTS[1], REPORTS[0]], model.config.max_tokens)
    torch.testing.assert_close(model.text_features(ids2, mask2), first[[1, 0]])
    assert len(cache) == 3
    # training mode does not change a locked tower's output (dropout is off there)
    model.train()
    torch.testing.assert_close(model.locked_text_features(ids, mask), uncached)
    model.eval()


def test_cache_filled_under_inference_mode_serves_training(minilm_cnn: ClipModel) -> None:
    model = minilm_cnn
    assert model.text_cache is not None
    model.text_cache.store.clear()
    pixels, ids, mask = _inputs(model, REPORTS[:2])
    with torch.inference_mode():
        model.eval().encode_text(ids, mask)
    model.train().zero_grad()
    img, txt, scale = model(pixels, ids, mask)
    clip_loss(img, txt, scale).backward()
    assert model.text_projection[1].weight.grad is not None
    model.zero_grad()


def test_prefill_encodes_each_distinct_report_once_and_matches_training_lookups(minilm_cnn: ClipModel) -> None:
    model = minilm_cnn.eval()
    cache = _empty_cache(model)
    corpus = [*REPORTS, "Right upper lobe mass.", REPORTS[1]]

    def texts(batch):
        return tokenize(model.tokenizer, batch, model.config.max_tokens)

    new = cache.prefill(corpus, texts, model.locked_text_features, batch_size=2)
    assert new == len(cache) == 4  # four distinct of six rows: the duplicates were dropped before encoding
    assert cache.prefill(corpus, texts, model.locked_text_features) == 0
    misses = cache.misses
    ids, mask = tokenize(model.tokenizer, corpus, model.config.max_tokens)
    looked_up = model.text_features(ids, mask)  # a training batch: every row a hit, padded differently
    assert cache.misses == misses
    torch.testing.assert_close(looked_up, model.locked_text_features(ids, mask), rtol=1e-4, atol=1e-5)
    assert not looked_up.is_inference()  # filled under inference mode, usable by a training step


def test_minilm_cnn32_is_the_same_recipe_at_32_px() -> None:
    small, base = preset_config("minilm-cnn32"), preset_config("minilm-cnn")
    assert (small.image_size, base.image_size) == (32, 64)
    assert small.lock_text and small.text == base.text and small.proj_dim == base.proj_dim
    torch.manual_seed(0)
    model = build_model("minilm-cnn32").train()
    img, txt, scale = model(*_inputs(model, REPORTS))
    assert img.shape == txt.shape == (4, 128)
    clip_loss(img, txt, scale).backward()
    assert model.vision.blocks[0][0].weight.grad is not None
    assert all(p.grad is None for p in model.text.parameters())


def test_partly_unlocked_text_tower_trains_its_last_layers_uncached() -> None:
    cfg = preset_config("tiny")
    cfg.lock_text, cfg.lock_text_unlocked_layers = True, 1
    model = build_model(cfg).train()
    groups = layer_groups(model.text)
    assert [any(p.requires_grad for p in g.parameters()) for g in groups] == [False] * (len(groups) - 1) + [True]
    assert model.text_cache is None and model.text.training
    img, txt, scale = model(*_inputs(model, REPORTS))
    clip_loss(img, txt, scale).backward()
    assert all(p.grad is not None for p in groups[-1].parameters())
    assert all(p.grad is None for p in groups[0].parameters())


def test_lock_image_freezes_the_vision_tower_but_its_last_groups() -> None:
    cfg = preset_config("tiny")
    cfg.lock_image = True
    model = build_model(cfg).train()
    assert fully_locked(model.vision) and not model.vision.training
    assert model.text_cache is None  # the text tower still trains
    img, txt, scale = model(*_inputs(model, REPORTS))
    clip_loss(img, txt, scale).backward()
    assert all(p.grad is None for p in model.vision.parameters())
    assert model.image_projection[1].weight.grad is not None
    cfg.lock_image_unlocked_groups = 2
    partly = build_model(cfg)
    groups = layer_groups(partly.vision)
    assert [any(p.requires_grad for p in g.parameters()) for g in groups][-3:] == [False, True, True]
    cfg.lock_image_unlocked_groups = 99
    with pytest.raises(ValueError, match="cannot leave 99 groups unlocked"):
        build_model(cfg)


def test_train_config_applies_lock_flags_over_the_preset() -> None:
    assert TrainConfig(api="http://x", run_id=1, model="minilm-cnn").model_config().lock_text is True
    cfg = TrainConfig(api="http://x", run_id=1, model="tiny", lock_image=True, lock_text=True,
                      lock_text_unlocked_layers=1).model_config()  # fmt: skip
    assert (cfg.lock_image, cfg.lock_text, cfg.lock_text_unlocked_layers) == (True, True, 1)
    assert TrainConfig(api="http://x", run_id=1, model="minilm-cnn", lock_text=False).model_config().lock_text is False


def test_towers_load_from_local_checkpoint_directories(tmp_path: Path) -> None:
    """A tower saved by transformers' save_pretrained (what a hub download is) loads offline from its directory."""
    torch.manual_seed(1)
    source = build_model("tiny")
    vision_dir, text_dir = tmp_path / "vision", tmp_path / "text"
    source.vision.save_pretrained(vision_dir)
    source.text.save_pretrained(text_dir)
    source.tokenizer.save_pretrained(text_dir)
    cfg = ClipConfig(vision=str(vision_dir), text=str(text_dir), image_size=56, proj_dim=32, max_tokens=64)
    loaded = build_model(cfg)
    for tower, original in ((loaded.vision, source.vision), (loaded.text, source.text)):
        want = original.state_dict()
        got = tower.state_dict()
        assert set(got) == set(want)
        for key, value in want.items():
            torch.testing.assert_close(got[key], value)
    ids, mask = tokenize(loaded.tokenizer, REPORTS, 64)
    ids0, mask0 = tokenize(source.tokenizer, REPORTS, 64)
    assert torch.equal(ids, ids0) and torch.equal(mask, mask0)
    torch.testing.assert_close(loaded.eval().text_features(ids, mask), source.eval().text_features(ids, mask))


def test_random_shift_moves_each_image_within_bounds() -> None:
    pixels = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert random_shift(pixels, 0) is pixels
    gen = torch.Generator().manual_seed(0)
    shifted = random_shift(pixels, 2, gen)
    assert shifted.shape == pixels.shape
    # an interior pixel of the original appears in the shifted image at most 2 px away
    for i in range(2):
        centre = pixels[i, 0, 4, 4]
        where = (shifted[i, 0] == centre).nonzero()
        assert len(where) == 1 and (where[0] - torch.tensor([4, 4])).abs().max() <= 2
