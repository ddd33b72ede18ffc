"""The optimisation step of the trainer without a service: gradient accumulation, the cosine schedule, bf16 autocast
on CPU, the fp16 guard, the no-grad selection's compute accounting and the metrics log."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from trainer.data import Batch, tokenize
from trainer.distributed import World
from trainer.schedule import cosine_lr
from trainer.train import MetricsLog, Summary, TrainConfig, Trainer


def trainer(tmp_path, **overrides) -> Trainer:
    config = TrainConfig(api="http://unused", run_id=1, model="tiny", device="cpu", out=tmp_path, **overrides)
    return Trainer(config, World(), client=None)


def batch(t: Trainer, n: int = 6, seed: int = 0) -> Batch:
    size = t.model.config.image_size
    generator = torch.Generator().manual_seed(seed)
    reports = [f"Finding number {i}: {'effusion' if i % 2 else 'no acute process'}." for i in range(n)]
    input_ids, attention_mask = tokenize(t.model.tokenizer, reports, t.model.config.max_tokens)
    return Batch(list(range(n)), torch.randn((n, 3, size, size), generator=generator), input_ids, attention_mask)


def params(t: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.model.parameters() if p.requires_grad]


def changed(before: list[torch.Tensor], t: Trainer) -> bool:
    return any(
        not torch.equal(a, p.detach())
        for a, p in zip(before, (p for p in t.model.parameters() if p.requires_grad), strict=True)
    )


def test_accumulation_steps_the_optimiser_every_n_manifests_with_the_cosine_lr(tmp_path) -> None:
    t = trainer(tmp_path, accumulate=2, lr=1e-3, lr_warmup_steps=2, total_steps=10)
    start = params(t)
    loss = t.optimise(*t.encode(batch(t, seed=0)))
    assert torch.isfinite(torch.tensor(loss)) and t.optimizer_step == 0
    assert not changed(start, t), "an accumulation micro-step must not move the weights"
    assert any(p.grad is not None for p in t.model.parameters())
    t.optimise(*t.encode(batch(t, seed=1)))
    assert t.optimizer_step == 1 and changed(start, t)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(cosine_lr(0, 1e-3, 2, 10))
    assert all(p.grad is None for p in t.model.parameters()), "gradients are cleared after the step"
    assert float(t.model.logit_scale.detach()) <= torch.log(torch.tensor(100.0)).item() + 1e-6


def test_bf16_autocast_trains_on_cpu(tmp_path) -> None:
    t = trainer(tmp_path, amp="bf16")
    start = params(t)
    img, txt, scale = t.encode(batch(t))
    assert img.dtype == torch.bfloat16  # the projections ran under autocast
    loss = t.optimise(img, txt, scale)
    assert torch.isfinite(torch.tensor(loss)) and t.optimizer_step == 1 and changed(start, t)
    assert all(p.dtype == torch.float32 for p in t.model.parameters()), "master weights stay float32"


def test_fp16_amp_needs_cuda(tmp_path) -> None:
    with pytest.raises(ValueError, match="fp16 AMP needs a CUDA device"):
        trainer(tmp_path, amp="fp16")


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"amp": "fp8"}, "amp must be"),
        ({"accumulate": 0}, "accumulate"),
        ({"select_mode": "maybe"}, "select_mode"),
        ({"expected_subset_ratio": 0}, "subset_ratio"),
        ({"image_cache_mb": -1}, "image_cache_mb"),
    ],
)
def test_bad_knobs_are_refused_by_name(knobs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(api="http://unused", run_id=1, **knobs)


def test_a_single_pair_has_no_negatives_and_is_not_a_step(tmp_path) -> None:
    t = trainer(tmp_path)
    start = params(t)
    assert torch.isnan(torch.tensor(t.optimise(*t.encode(batch(t, n=1)))))
    assert t.optimizer_step == 0 and not changed(start, t)


def test_nograd_selection_saving_is_one_minus_b_plus_3k_over_3b() -> None:
    summary = Summary(run_id=1, curation_compute=640 + 3 * 128, curation_compute_grad_mode=3 * 640)
    assert summary.select_compute_saved == pytest.approx(1 - (640 + 3 * 128) / (3 * 640))
    assert Summary(run_id=1).select_compute_saved == 0.0
    assert summary.to_dict()["select_compute_saved"] == round(summary.select_compute_saved, 4)


def test_metrics_log_writes_one_json_object_per_step(tmp_path) -> None:
    log = MetricsLog(tmp_path / "deep" / "metrics.jsonl", None)
    log.write({"phase": "subset", "step": 1, "loss": 1.5})
    log.write({"phase": "subset", "step": 2, "loss": 1.25})
    log.close()
    lines = (tmp_path / "deep" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_without_the_package_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="pip install tensorboard"):
        MetricsLog(None, tmp_path / "tb")
