"""The CLIP model, its presets and the contrastive loss (trainer/model.py, trainer/loss.py). Offline: no model hub."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from trainer.data import tokenize
from trainer.loss import clip_loss
from trainer.model import PRESETS, ClipConfig, ClipModel, build_model, load_checkpoint_model, pool_tokens


@pytest.fixture(scope="module")
def tiny() -> ClipModel:
    torch.manual_seed(0)
    return build_model("tiny")


def _inputs(model: ClipModel, n: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    reports = ["No acute cardiopulmonary process.", "Large left pleural effusion with basilar atelectasis.", "Edema."]
    ids, mask = tokenize(model.tokenizer, reports[:n], model.config.max_tokens)
    pixels = torch.randn(n, 3, model.image_size, model.image_size)
    return pixels, ids, mask


def test_tiny_forward_backward_reaches_every_trainable_parameter(tiny: ClipModel) -> None:
    tiny.train()
    tiny.zero_grad()
    pixels, ids, mask = _inputs(tiny)
    img, txt, scale = tiny(pixels, ids, mask)
    assert img.shape == txt.shape == (3, tiny.config.proj_dim)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    clip_loss(img, txt, scale).backward()
    # DDP (without find_unused_parameters) hangs on a trainable parameter that never gets a gradient
    missing = [n for n, p in tiny.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []
    frozen = [n for n, p in tiny.named_parameters() if not p.requires_grad]
    assert frozen == ["vision.embeddings.mask_token"]
    tiny.zero_grad()


def test_logit_scale_starts_at_log_100_and_still_learns(tiny: ClipModel) -> None:
    assert isinstance(tiny.logit_scale, torch.nn.Parameter)
    assert tiny.logit_scale.item() == pytest.approx(math.log(100))
    assert tiny.scale().item() == pytest.approx(100.0, rel=1e-6)
    tiny.zero_grad()
    tiny.scale().backward()  # a clamp on exp() would block this gradient, exp(log 100) rounds above 100
    assert tiny.logit_scale.grad is not None and tiny.logit_scale.grad.item() == pytest.approx(100.0, rel=1e-5)
    tiny.zero_grad()
    with torch.no_grad():
        tiny.logit_scale.fill_(7.0)
    assert tiny.scale().item() == pytest.approx(100.0, rel=1e-6)
    tiny.clamp_logit_scale_()
    assert tiny.logit_scale.item() == pytest.approx(math.log(100))


def test_pool_tokens_by_hand() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # row 0: 0..3, row 1: 4..7
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert pool_tokens(hidden, mask, "cls").flatten().tolist() == [0.0, 4.0]
    assert pool_tokens(hidden, mask, "eos").flatten().tolist() == [2.0, 7.0]  # last real token, not the padding
    assert pool_tokens(hidden, mask, "mean").flatten().tolist() == [1.0, 5.5]  # padding left out of the mean
    left_padded = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert pool_tokens(hidden, left_padded, "eos").flatten().tolist() == [3.0, 7.0]
    with pytest.raises(ValueError):
        pool_tokens(hidden, mask, "max")  # type: ignore[arg-type]


def test_eos_pooling_reads_the_sep_state_and_variants_differ(tiny: ClipModel) -> None:
    tiny.eval()
    _, ids, mask = _inputs(tiny)
    sep = tiny.tokenizer.sep_token_id
    last = mask.sum(1) - 1
    assert (ids[torch.arange(3), last] == sep).all()  # right padding: the last real token is [SEP]
    with torch.no_grad():
        hidden = tiny.text(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = {}
        for pooling in ("eos", "cls", "mean"):
            tiny.config.pooling = pooling  # type: ignore[assignment]
            pooled[pooling] = tiny.text_features(ids, mask)
        tiny.config.pooling = "eos"
    torch.testing.assert_close(pooled["eos"], hidden[torch.arange(3), last])
    torch.testing.assert_close(pooled["cls"], hidden[:, 0])
    assert not torch.allclose(pooled["eos"], pooled["cls"])
    assert not torch.allclose(pooled["eos"], pooled["mean"])


def test_param_groups_cover_every_trainable_parameter_once(tiny: ClipModel) -> None:
    groups = tiny.param_groups(weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    trainable = {id(p) for p in tiny.parameters() if p.requires_grad}
    assert set(ids) == trainable
    names = {id(p): n for n, p in tiny.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    exempt = {names[id(p)] for p in groups[1]["params"]}
    assert "logit_scale" in exempt
    assert "text.embeddings.word_embeddings.weight" in exempt
    assert "vision.embeddings.cls_token" in exempt and "vision.embeddings.position_embeddings" in exempt
    assert all(not n.endswith(".bias") for n in decayed)
    assert not any("norm" in n.lower() for n in decayed)
    assert {"image_projection.1.weight", "text_projection.1.weight"} <= decayed
    assert "vision.embeddings.patch_embeddings.projection.weight" in decayed  # a conv kernel is a weight matrix
    torch.optim.AdamW(groups, lr=1e-4)  # accepted as is


def test_config_round_trip_and_checkpoint_reload(tiny: ClipModel, tmp_path) -> None:
    data = tiny.config.to_dict()
    assert ClipConfig.from_dict(data) == tiny.config
    with pytest.raises(ValueError, match="unknown"):
        ClipConfig.from_dict({**data, "bogus": 1})
    path = tmp_path / "ckpt.pt"
    torch.save({"model": tiny.state_dict(), "model_config": data, "step": 3, "run_id": "r-1", "optimizer": {}}, path)
    loaded, meta = load_checkpoint_model(path)
    assert meta == {"model_config": data, "step": 3, "run_id": "r-1"}
    tiny.eval()
    loaded.eval()
    pixels, ids, mask = _inputs(tiny)
    with torch.no_grad():
        for a, b in zip(tiny(pixels, ids, mask), loaded(pixels, ids, mask), strict=True):
            torch.testing.assert_close(a, b)


def test_unknown_preset_is_refused() -> None:
    assert {"default", "tiny", "minilm"} <= set(PRESETS)
    assert PRESETS["default"].vision == "facebook/dinov2-base" and PRESETS["default"].image_size == 378
    assert PRESETS["default"].pooling == "eos" and PRESETS["default"].proj_dim == 512
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("huge")


def test_minilm_preset_loads_the_pretrained_text_encoder() -> None:
    model = build_model("minilm").eval()
    assert model.text.config.hidden_size == 384
    texts = ["Large pleural effusion.", "Fluid collection in the pleural space.", "The invoice is due on Friday."]
    ids, mask = tokenize(model.tokenizer, texts, model.config.max_tokens)
    with torch.no_grad():
        feats = torch.nn.functional.normalize(model.text_features(ids, mask), dim=-1)
    sim = feats @ feats.T
    # pretrained weights put the two radiology paraphrases closer than an unrelated sentence; random ones would not
    assert sim[0, 1] > sim[0, 2] + 0.2


def test_clip_loss_matches_a_hand_computed_value() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(2.0)
    # logits = 2 * img @ txt.T = [[2, 1.2], [0, 1.6]]
    i2t = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(math.exp(1.6) / (1 + math.exp(1.6)))
    t2i = -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    expected = (i2t / 2 + t2i / 2) / 2
    assert clip_loss(img, txt, scale).item() == pytest.approx(expected, rel=1e-6)
    # swapping the pairs makes the loss larger
    assert clip_loss(img, txt.flip(0), scale).item() > expected
    with pytest.raises(ValueError):
        clip_loss(img, txt[:1], scale)


def test_trainer_imports_neither_service_nor_workers_nor_torchvision() -> None:
    code = (
        "import sys, trainer.model, trainer.loss, trainer.data, trainer.eval, trainer.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'workers', 'torchvision'))\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
