"""The training loop, driven by the service's manifests.

warm-up:   encode without gradients, post f = normalize(concat(u, v)); the service runs k-means once all are in.
curation:  forward the super-batch, post its f, get the curated batch, InfoNCE on the kept rows only.
           (``select_mode="nograd"``: select from a no-grad pass, then forward + backward on the kept rows only.)
subset:    InfoNCE on every row of the manifest (the service serves only the curated subset), then acknowledge.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import LATEST, load_checkpoint, save_checkpoint
from .client import ServiceClient, ServiceError
from .data import Batch, ImageTransform, encode_batch, tokenize
from .distributed import World, barrier, broadcast_object, cleanup, gather_objects, gather_rows, init_distributed
from .image_cache import ImageCache
from .loss import clip_loss
from .model import ClipConfig, ClipModel, build_model, preset_config
from .prefetch import BackgroundAcks, ManifestFeed, Prefetcher
from .schedule import cosine_lr, estimate_total_steps

Amp = Literal["off", "bf16", "fp16"]
SelectMode = Literal["grad", "nograd"]


@dataclass
class TrainConfig:
    api: str
    run_id: int
    token: str | None = None
    model: str = "default"
    #: open_clip's lock flags; None keeps the preset's choice
    lock_text: bool | None = None
    lock_text_unlocked_layers: int | None = None
    lock_image: bool | None = None
    lock_image_unlocked_groups: int | None = None
    data_root: Path = Path(".")
    out: Path = Path("runs/trainer")
    #: None: cuda when available, else cpu (resolved on construction, so every later reader sees a device)
    device: str | None = None
    amp: Amp = "off"
    select_mode: SelectMode = "grad"
    lr: float = 5e-5
    weight_decay: float = 0.2
    lr_warmup_steps: int | None = None
    total_steps: int | None = None
    #: subset ratio assumed for the learning-rate horizon until the subset phase shows the real one
    expected_subset_ratio: float = 0.25
    grad_clip: float | None = 1.0
    accumulate: int = 1
    max_steps: int | None = None
    checkpoint_every: int = 50
    resume: bool = False
    prefetch: int = 2
    workers: int = 4
    #: decoded images kept in memory between epochs, in MiB (0: off); see trainer.image_cache
    image_cache_mb: int = 0
    seed: int = 0
    metrics: Path | None = None
    tensorboard: Path | None = None
    progress: bool = True
    retry_for: float = 600.0

    def model_config(self) -> ClipConfig:
        """The preset's config with the lock flags given here applied."""
        cfg = preset_config(self.model)
        for key in ("lock_text", "lock_text_unlocked_layers", "lock_image", "lock_image_unlocked_groups"):
            value = getattr(self, key)
            if value is not None:
                setattr(cfg, key, value)
        return cfg

    def __post_init__(self) -> None:
        self.data_root, self.out = Path(self.data_root), Path(self.out)
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {self.accumulate}")
        if self.amp not in ("off", "bf16", "fp16"):
            raise ValueError(f"amp must be off, bf16 or fp16, got {self.amp!r}")
        if self.select_mode not in ("grad", "nograd"):
            raise ValueError(f"select_mode must be grad or nograd, got {self.select_mode!r}")
        if self.image_cache_mb < 0:
            raise ValueError(f"image_cache_mb must be >= 0, got {self.image_cache_mb}")
        if not 0 < self.expected_subset_ratio <= 1:
            raise ValueError(f"expected_subset_ratio must be in (0, 1], got {self.expected_subset_ratio}")


@dataclass
class Summary:
    """What a finished (or stopped) training process did; also the last JSON line of ``chexcurate-train train``."""

    run_id: int
    steps: int = 0
    optimizer_steps: int = 0
    manifests: dict[str, int] = field(default_factory=lambda: {"warmup": 0, "curation": 0, "subset": 0})
    rows: dict[str, int] = field(default_factory=lambda: {"warmup": 0, "curation": 0, "subset": 0})
    kept: int = 0
    unreadable: int = 0
    lease_expired: int = 0
    trained_rows: int = 0
    #: estimated forward-pass units spent selecting and training in curation, as if every row cost one forward
    #: (backward = 2 forwards): the whole-batch forward with gradient costs 3B, the no-grad path B + 3k
    curation_compute: float = 0.0
    curation_compute_grad_mode: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: {"wait": 0.0, "select": 0.0, "train": 0.0})
    final_loss: float | None = None
    finished: bool = False
    checkpoint: str | None = None
    #: the checkpoint step this process continued from (``--resume`` with a checkpoint), else None
    resumed_from_step: int | None = None

    @property
    def select_compute_saved(self) -> float:
        """Share of the curation-phase compute the no-grad selection saved against the whole-batch forward."""
        if not self.curation_compute_grad_mode:
            return 0.0
        return 1.0 - self.curation_compute / self.curation_compute_grad_mode

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "select_compute_saved": round(self.select_compute_saved, 4)}


def curation_features(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """f = normalize(concat(u, v)) of already L2-normalised u, v (what the service's engine expects)."""
    return F.normalize(torch.cat([img.float(), txt.float()], dim=1), dim=1)


class MetricsLog:
    """One JSON object per step to a file, and the same scalars to TensorBoard when asked."""

    def __init__(self, path: Path | None, tensorboard: Path | None) -> None:
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - closed in close()
        self.tb = None
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError("--tensorboard needs the tensorboard package (pip install tensorboard)") from exc
            self.tb = SummaryWriter(str(tensorboard))

    def write(self, record: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(f"{record['phase']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


class Trainer:
    """State of one training process; :func:`train` runs it."""

    def __init__(
        self,
        config: TrainConfig,
        world: World,
        client: ServiceClient | None,
        model: ClipModel | None = None,
        image_cache: ImageCache | None = None,
    ) -> None:
        """``model``: an already built model to train instead of ``config.model``'s preset; ``image_cache``: one
        shared with other trainings instead of ``config.image_cache_mb`` of this one's own."""
        self.cfg, self.world, self.client = config, world, client
        self.device = torch.device(config.device or "cpu")
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 AMP needs a CUDA device; use --amp bf16 or off on CPU")
        torch.manual_seed(config.seed)
        self.model: ClipModel = (model or build_model(config.model_config())).to(self.device)
        self.net: nn.Module = self.model
        if world.size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = torch.optim.AdamW(self.model.param_groups(config.weight_decay), lr=config.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.transform = ImageTransform(
            self.model.config.image_size, self.model.config.image_mean, self.model.config.image_std
        )
        self.image_cache = image_cache if image_cache is not None else ImageCache(config.image_cache_mb * 2**20)
        self.images = ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="load-image")
        self.summary = Summary(run_id=config.run_id)
        self.step = 0  # manifests processed by this run's trainer (across restarts)
        self.optimizer_step = 0
        self.micro = 0
        self.total_steps = config.total_steps or config.max_steps or 1
        self.subset_ratio = config.expected_subset_ratio
        self.samples_total = 0
        self.epoch_seen: tuple[str, int] | None = None
        self.acks: BackgroundAcks | None = None  # rank 0 only, set up by fit()

    # -- set-up -----------------------------------------------------------------------------------------------
    def model_id(self) -> str:
        cfg = self.model.config
        return f"{self.cfg.model}:{cfg.vision}+{cfg.text}"

    def restore(self) -> None:
        """Continue from ``out/latest.pt``; every rank loads it, so ``out`` must be storage all ranks share."""
        path = self.cfg.out / LATEST
        found = gather_objects(path.exists())
        if any(found) and not all(found):
            missing = [rank for rank, seen in enumerate(found) if not seen]
            raise ValueError(f"ranks {missing} cannot see {path}: --out must be on storage shared by every rank")
        if not found[0]:
            return
        state = load_checkpoint(path)
        if int(state["run_id"]) != self.cfg.run_id:
            raise ValueError(f"{path} belongs to run {state['run_id']}, not run {self.cfg.run_id}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.optimizer_step = int(state["step"]), int(state["optimizer_step"])
        self.subset_ratio = float(state.get("subset_ratio", self.subset_ratio))
        self.summary.checkpoint = str(path)
        self.summary.resumed_from_step = self.step

    def checkpoint(self) -> None:
        if not self.world.is_main:
            return
        if self.acks is not None:  # a checkpoint covers acknowledged manifests only: a resume retrains nothing
            self.acks.collect(block=True)
        state = {
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "step": self.step,
            "optimizer_step": self.optimizer_step,
            "run_id": self.cfg.run_id,
            "model_id": self.model_id(),
            "subset_ratio": self.subset_ratio,
        }
        self.summary.checkpoint = str(save_checkpoint(self.cfg.out, state))

    def update_horizon(self, phase: str) -> None:
        """Re-estimate the cosine horizon from the service's epoch sizes when a new epoch starts."""
        if self.cfg.total_steps or self.cfg.max_steps or self.client is None or phase == "warmup":
            return
        run = self.client.run(self.cfg.run_id)
        size, config = int(run.get("epoch_size") or 0), run["config"]
        if not size:
            return
        if phase == "curation":
            samples = size
        else:  # the subset epoch's size is the subset: the real ratio replaces the assumed one
            samples = self.samples_total or round(size / self.subset_ratio)
            self.subset_ratio = min(1.0, size / samples)
        self.samples_total = samples
        self.total_steps = estimate_total_steps(
            samples,
            config["batch_size"],
            config["epochs"],
            config["curation_epochs"],
            self.subset_ratio,
            self.cfg.accumulate,
        )

    # -- one step -----------------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward with gradient, through DDP. Every rank must take part in it and in the backward's gradient
        all-reduce, so a rank whose share of the rows is empty forwards one placeholder pair and keeps none of its
        rows: its graph still reaches every parameter and contributes zeros."""
        if len(batch) == 0:
            img, txt, scale = self.encode(self.placeholder())
            return img[:0], txt[:0], scale
        with self.autocast():
            return self.net(batch.pixel_values, batch.input_ids, batch.attention_mask)

    @torch.no_grad()
    def encode_nograd(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward without gradient on the bare model: no DDP collective, so an empty share needs no forward."""
        if len(batch) == 0:
            empty = torch.zeros((0, self.model.proj_dim), device=self.device)
            return empty, empty.clone(), self.model.scale()
        with self.autocast():
            return self.model(batch.pixel_values, batch.input_ids, batch.attention_mask)

    def placeholder(self) -> Batch:
        """One blank image and an empty report (the tokenizer's special tokens only)."""
        size = self.model.config.image_size
        input_ids, attention_mask = tokenize(self.model.tokenizer, [""], self.model.config.max_tokens)
        return Batch(
            sample_ids=[-1], pixel_values=torch.zeros((1, 3, size, size)), input_ids=input_ids,
            attention_mask=attention_mask,
        ).to(self.device)  # fmt: skip

    def load(self, items: list[Any]) -> Batch:
        batch = encode_batch(
            items,
            self.cfg.data_root,
            self.transform,
            self.model.tokenizer,
            max_tokens=self.model.config.max_tokens,
            executor=self.images,
            cache=self.image_cache,
        )
        # positions in the manifest: this rank holds items rank, rank + size, ...
        batch.indices = [self.world.rank + i * self.world.size for i in batch.indices]
        return batch.to(self.device, non_blocking=True)

    def report_unreadable(self, manifest: dict[str, Any], batch: Batch) -> None:
        everyone = [u for part in gather_objects(batch.unreadable) for u in part]
        self.summary.unreadable += len(everyone)
        if self.world.is_main and self.client is not None:
            for sample_id, reason in everyone:
                try:
                    self.client.report_unreadable(self.cfg.run_id, sample_id, reason, manifest["manifest_id"])
                except ServiceError as exc:
                    if exc.code != "not_leased":
                        raise
                    # the lease lapsed: the sample goes to another trainer, which reports it in turn

    def post(self, manifest: dict[str, Any], features: torch.Tensor, batch: Batch) -> dict[str, Any] | None:
        """Post the features of every readable row of the manifest, in manifest order (gathered over ranks);
        the answer (or None when the lease was lost) reaches every rank."""
        gathered = gather_rows(features.detach().float())
        positions = gather_objects(batch.indices)
        answer: dict[str, Any] | None = None
        if self.world.is_main and self.client is not None:
            order = np.argsort(np.concatenate([np.asarray(p, dtype=np.int64) for p in positions]), kind="stable")
            array = gathered.cpu().numpy()[order].astype(np.float16)
            try:
                answer = self.client.post_embeddings(self.cfg.run_id, manifest["manifest_id"], array)
                answer["_positions"] = np.concatenate(positions)[order].tolist()
            except ServiceError as exc:
                if exc.code != "lease_expired":
                    raise
                answer = None
        return broadcast_object(answer)

    def local_keep(self, answer: dict[str, Any], batch: Batch) -> torch.Tensor:
        kept_positions = {p for p, k in zip(answer["_positions"], answer["keep"], strict=True) if k}
        return torch.tensor([i in kept_positions for i in batch.indices], dtype=torch.bool, device=self.device)

    def optimise(self, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> float:
        """InfoNCE over the rows of every rank (gathered with gradients), backward, and a step every
        ``accumulate`` manifests."""
        all_img, all_txt = gather_rows(img, with_grad=True), gather_rows(txt, with_grad=True)
        if len(all_img) < 2:  # a single pair has no negatives
            return float("nan")
        loss = clip_loss(all_img, all_txt, scale)
        self.scaler.scale(loss / self.cfg.accumulate).backward()
        self.micro += 1
        if self.micro % self.cfg.accumulate == 0:
            lr = cosine_lr(self.optimizer_step, self.cfg.lr, self.warmup_steps(), self.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.model.clamp_logit_scale_()
            self.optimizer_step += 1
        return float(loss.detach())

    def warmup_steps(self) -> int:
        return self.cfg.lr_warmup_steps if self.cfg.lr_warmup_steps is not None else max(1, self.total_steps // 20)

    def run_step(self, manifest: dict[str, Any], batch: Batch) -> dict[str, Any]:
        phase = manifest["phase"]
        self.report_unreadable(manifest, batch)
        record: dict[str, Any] = {"phase": phase, "epoch": manifest["epoch"], "manifest_step": manifest["step"]}
        rows = sum(int(n) for n in gather_objects(len(batch)))
        record["rows"] = rows
        self.summary.rows[phase] += rows
        started = time.perf_counter()
        if rows == 0 and phase != "subset":
            pass  # every image was unreadable and reported: the service holds no row of this manifest any more
        elif phase == "warmup":
            self.model.eval()
            img, txt, _ = self.encode_nograd(batch)
            self.post(manifest, curation_features(img, txt), batch)
            self.model.train()
            record["select_s"] = time.perf_counter() - started
        elif phase == "curation":
            record.update(self.curation_step(manifest, batch))
        else:
            if rows >= 2:  # a single pair has no negatives (and no rank has a row when every image was unreadable)
                self.model.train()
                img, txt, scale = self.encode(batch)
                record["loss"] = self.optimise(img, txt, scale)
                record["train_s"] = time.perf_counter() - started
                self.summary.trained_rows += rows
            if self.acks is not None:
                self.acks.submit(manifest["manifest_id"])
        self.summary.manifests[phase] += 1
        return record

    def curation_step(self, manifest: dict[str, Any], batch: Batch) -> dict[str, Any]:
        record: dict[str, Any] = {}
        started = time.perf_counter()
        self.model.train()
        if self.cfg.select_mode == "nograd":
            img, txt, scale = self.encode_nograd(batch)
        else:
            img, txt, scale = self.encode(batch)
        answer = self.post(manifest, curation_features(img, txt), batch)
        record["select_s"] = time.perf_counter() - started
        if answer is None:  # the lease went to another trainer: this batch is theirs now
            self.summary.lease_expired += 1
            self.optimizer.zero_grad(set_to_none=True)
            return record
        keep = self.local_keep(answer, batch)
        trained = time.perf_counter()
        rows, kept = len(answer["keep"]), int(answer["kept"])
        if self.cfg.select_mode == "nograd" and kept < 2:
            pass  # every rank sees the same answer: none forwards a batch that cannot make a loss
        elif self.cfg.select_mode == "nograd":
            kept_batch = Batch(
                sample_ids=[s for s, k in zip(batch.sample_ids, keep.tolist(), strict=True) if k],
                pixel_values=batch.pixel_values[keep],
                input_ids=batch.input_ids[keep],
                attention_mask=batch.attention_mask[keep],
            )
            img, txt, scale = self.encode(kept_batch)
            record["loss"] = self.optimise(img, txt, scale)
        else:
            record["loss"] = self.optimise(img[keep], txt[keep], scale)
        record["train_s"] = time.perf_counter() - trained
        record.update(kept=kept, prototype_version=answer["new_prototype_version"])
        self.summary.kept += kept
        if kept >= 2:
            self.summary.trained_rows += kept
        self.summary.curation_compute_grad_mode += 3 * rows
        self.summary.curation_compute += rows + 3 * kept if self.cfg.select_mode == "nograd" else 3 * rows
        return record

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self) -> Summary:
        cfg = self.cfg
        log = MetricsLog(cfg.metrics, cfg.tensorboard) if self.world.is_main else MetricsLog(None, None)
        feed = None
        if self.world.is_main:
            assert self.client is not None
            feed = ManifestFeed(
                self.client, cfg.run_id, lambda: (self.model_id(), self.optimizer_step), depth=max(1, cfg.prefetch - 1)
            )
            self.acks = BackgroundAcks(self.client, cfg.run_id, feed.nudge)
        prefetcher = Prefetcher(feed, self.world, self.load, depth=cfg.prefetch)
        bar = _progress(cfg.progress and self.world.is_main)
        try:
            while cfg.max_steps is None or self.step < cfg.max_steps:
                waited = time.perf_counter()
                got = prefetcher.next()
                wait_s = time.perf_counter() - waited
                if got is None:
                    self.summary.finished = True
                    break
                manifest, batch = got
                if self.epoch_seen != (manifest["phase"], manifest["epoch"]):
                    self.epoch_seen = (manifest["phase"], manifest["epoch"])
                    if self.world.is_main:
                        self.update_horizon(manifest["phase"])
                    self.total_steps = int(broadcast_object(self.total_steps))
                    bar.set_description(f"{manifest['phase']} epoch {manifest['epoch']}")
                record = self.run_step(manifest, batch)
                if feed is not None:
                    feed.nudge()  # this manifest is done: at an epoch's end the next epoch's rows may be free now
                self.step += 1
                self.summary.steps += 1
                self.summary.seconds["wait"] += wait_s
                self.summary.seconds["select"] += record.get("select_s", 0.0)
                self.summary.seconds["train"] += record.get("train_s", 0.0)
                if record.get("loss") is not None and not math.isnan(record["loss"]):
                    self.summary.final_loss = record["loss"]
                record.update(step=self.step, wait_s=wait_s, lr=self.optimizer.param_groups[0]["lr"])
                record["logit_scale"] = float(self.model.scale().detach())
                log.write(record)
                bar.update(record["rows"])
                bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", kept=record.get("kept", "-"))
                if self.step % cfg.checkpoint_every == 0:
                    self.checkpoint()
            if self.acks is not None:
                self.acks.collect(block=True)  # the run's last acknowledgements land before the process ends
            self.checkpoint()
        finally:
            if self.acks is not None:
                self.acks.shutdown()
                self.summary.lease_expired += self.acks.lost
            prefetcher.close()
            log.close()
            bar.close()
            self.images.shutdown(wait=False, cancel_futures=True)
        self.summary.optimizer_steps = self.optimizer_step
        return self.summary


def _progress(enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled, unit="pairs", dynamic_ncols=True)


@contextlib.contextmanager
def _session(config: TrainConfig) -> Iterator[tuple[World, ServiceClient | None]]:
    world = init_distributed(config.device or "cpu")
    client = ServiceClient(config.api, config.token, retry_for=config.retry_for) if world.is_main else None
    try:
        yield world, client
        barrier()  # no rank tears its group down while another's last collective is still in flight
    finally:
        if client is not None:
            client.close()
        cleanup()


def train(config: TrainConfig, model: ClipModel | None = None, image_cache: ImageCache | None = None) -> Summary:
    """Train on a run until the service says it is done (or ``max_steps``); resumable from ``out/latest.pt``.

    ``model``: an already built model instead of ``config.model``'s preset (a benchmark shares one text cache);
    ``image_cache``: decoded images shared with other trainings (a benchmark's arms read the same files)."""
    with _session(config) as (world, client):
        trainer = Trainer(config, world, client, model, image_cache)
        if config.resume:
            trainer.restore()
        return trainer.fit()
