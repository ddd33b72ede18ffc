"""GPU pass: the engine's CUDA backend against the CPU one, its speed, k-means and the trainer's real-size step.

On a CUDA device every part runs at the paper's sizes: ``bash bench/gpu_pass.sh`` on the device machine (its header
and the GPU section of docs/BENCHMARKS.md give the exact call), then, back here,
``.venv/bin/python -m bench.gpu_pass --docs-from <folder>/gpu_pass.json`` writes that section from the measured JSON.
On the CPU, ``.venv/bin/python -m bench.gpu_pass --device cpu --scale small`` runs every part that does not need
CUDA, scaled down (the CPU engine against the torch backend on the CPU, the timing code, k-means, a trainer step of
the tiny preset); each CUDA-only part is marked skipped with its reason. Parts (``--parts``):

1. parity: ``pytest -m gpu`` and the torch backend's bands and keep masks against the CPU engine's;
2. speed: engine selection and prototype update against the authors'-style loop (``bench/baseline.py``), same device;
3. kmeans: ``init_prototypes``' FAISS k-means (on the GPU where the FAISS build has one, else torch k-means on the
   device) against FAISS on the host CPU and the CPU figure of docs/BENCHMARKS.md (P4);
4. trainer: :class:`trainer.train.Trainer` steps at real size (DINOv2 ViT-B/14 + BERT-base from configs, random
   weights), bf16 autocast, the curated-batch wait simulated by the P2 round trip, and the paper-scale estimate;
5. docs: the GPU section of docs/BENCHMARKS.md, from a CUDA run's JSON only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from bench.engine import SIZES, measure
from bench.report import recorded, write_section
from trainer.client import ServiceClient
from trainer.data import Batch
from trainer.distributed import World
from trainer.model import MINILM, PRESETS, ClipConfig, ClipModel, build_model
from trainer.schedule import estimate_total_steps
from trainer.train import TrainConfig, Trainer
from workers.curation import CpuBackend, CurationConfig, TorchBackend, init_prototypes, select_batch, update_prototypes
from workers.curation.kmeans import faiss_gpu_available
from workers.synthetic import long_tailed_embeddings

PARTS = ("parity", "speed", "kmeans", "trainer", "docs")
WARMUP_ROWS = 4096  # k-means rows for the prototypes, as bench/engine.py
#: the paper's run: 8 GPUs x 80 pairs, 1,235,004 pairs, 20 epochs of which 1 curates
PAPER = {"gpus": 8, "per_gpu": 80, "pairs": 1_235_004, "epochs": 20, "curation_epochs": 1}
#: kept share of a curated super-batch in the paper (~22.7 % subset); the stand-in service keeps this share
PAPER_KEEP_RATIO = 0.227

#: The default pairing's architectures as their hub configs give them (facebook/dinov2-base,
#: emilyalsentzer/Bio_ClinicalBERT), built with random weights. The vocabulary is the MiniLM tokenizer's (uncased
#: BERT, 30,522 tokens) instead of Bio_ClinicalBERT's 28,996: the tokenizer has to be available offline.
BASE_VISION = {
    "model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4,
    "patch_size": 14, "image_size": 518, "layerscale_value": 1.0, "use_swiglu_ffn": False,
}  # fmt: skip
BASE_TEXT = {
    "model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
}  # fmt: skip

SCALES: dict[str, dict[str, Any]] = {
    "real": {
        "sizes": SIZES, "batches": 200, "pool_rows": 65_536, "timing_batches": 10, "repeats": 30,
        "kmeans_rows": 200_000, "kmeans_dim": 1024, "kmeans_k": (6, 64), "kmeans_repeats": 3,
        "model": "base", "batch_size": PAPER["per_gpu"], "steps": 10, "warmup_steps": 2,
    },
    "small": {
        "sizes": ((64, 32, 3), (160, 32, 8)), "batches": 20, "pool_rows": 1024, "timing_batches": 2, "repeats": 5,
        "kmeans_rows": 4000, "kmeans_dim": 32, "kmeans_k": (6,), "kmeans_repeats": 1,
        "model": "tiny", "batch_size": 8, "steps": 3, "warmup_steps": 1,
    },
}  # fmt: skip


def skipped(reason: str) -> dict[str, str]:
    return {"status": "skipped", "reason": reason}


def cuda(device: str) -> bool:
    return device.startswith("cuda")


def sync(device: str) -> None:
    if cuda(device):
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------- 1. parity


def parity(args: argparse.Namespace) -> dict[str, Any]:
    """The torch backend on ``device`` against the CPU engine on the same super-batches, row by row."""
    out: dict[str, Any] = {"status": "ran", "pytest": gpu_tests(args), "reference": "CpuBackend"}
    out["candidate"] = f"TorchBackend({args.device})"
    out["sizes"] = []
    for batch, dim, k in args.sizes:
        feats = long_tailed_embeddings(WARMUP_ROWS + args.pool_rows, dim, seed=2).features
        config = CurationConfig(k=k, warmup_samples=WARMUP_ROWS)
        protos = init_prototypes(feats[:WARMUP_ROWS], k, seed=0)
        pool, rng = feats[WARMUP_ROWS:], np.random.default_rng(3)
        counts = {"prototype": 0, "band": 0, "keep": 0, "any": 0}
        gap, gap_disagreeing, update_gap = 0.0, None, 0.0
        for b in range(args.batches):
            f = np.ascontiguousarray(pool[rng.choice(len(pool), batch, replace=False)])
            cpu = select_batch(f, protos, config, (0, b), CpuBackend())
            dev = select_batch(f, protos, config, (0, b), TorchBackend(args.device))
            differ = {name: getattr(cpu, name) != getattr(dev, name) for name in ("prototype", "band", "keep")}
            differ["any"] = differ["prototype"] | differ["band"] | differ["keep"]
            for name, rows in differ.items():
                counts[name] += int(rows.sum())
            distance_gap = np.abs(cpu.distance - dev.distance)
            gap = max(gap, float(distance_gap.max()))
            if differ["any"].any():
                gap_disagreeing = max(gap_disagreeing or 0.0, float(distance_gap[differ["any"]].max()))
            new_cpu, _ = update_prototypes(protos, f[cpu.keep], config, CpuBackend())
            new_dev, _ = update_prototypes(protos, f[cpu.keep], config, TorchBackend(args.device))
            update_gap = max(update_gap, float(np.abs(new_cpu - new_dev).max()))
        rows = batch * args.batches
        out["sizes"].append(
            {
                "batch": batch, "dim": dim, "k": k, "batches": args.batches, "rows": rows,
                **{f"{name}_agreement": 1 - n / rows for name, n in counts.items() if name != "any"},
                "rows_disagreeing": counts["any"], "max_distance_gap": gap,
                "max_distance_gap_disagreeing": gap_disagreeing, "max_update_gap": update_gap,
            }
        )  # fmt: skip
        print(f"parity B={batch} K={k}: {out['sizes'][-1]}", flush=True)
    return out


def gpu_tests(args: argparse.Namespace) -> dict[str, Any]:
    """``pytest -m gpu`` on the backend tests, in a child process (only that file: the others need the stack)."""
    if not cuda(args.device):
        return skipped("no CUDA device: the gpu-marked tests select only CUDA cases, which skip here")
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_backends.py", "-q", "-p", "no:cacheprovider"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail[0])}
    ok = done.returncode == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped")
    print(f"pytest -m gpu: {tail[0]}", flush=True)
    return {
        "status": "passed" if ok else "FAILED", "command": " ".join(cmd[2:]), "returncode": done.returncode,
        "summary": tail[0], "counts": counts, "seconds": time.perf_counter() - started,
        "output_tail": (done.stdout + done.stderr)[-4000:] if not ok else "",
    }  # fmt: skip


# -------------------------------------------------------------------------------------------------- 2. speed


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """P1's measurement on ``device``: the torch backend and the CPU engine against the loop on that device."""
    engines = {"engine": TorchBackend(args.device), "engine_cpu": CpuBackend()}
    rows = []
    for batch, dim, k in args.sizes:
        r = measure(batch, dim, k, args.timing_batches, args.repeats, device=args.device, engines=engines)
        rows.append(
            {"batch": batch, "dim": dim, "k": k, **r, "ratio": r["engine_ms"] / r["loop_ms"],
             "update_ratio": r["engine_update_ms"] / r["loop_update_ms"]}
        )  # fmt: skip
        print(f"speed B={batch} K={k}: {rows[-1]}", flush=True)
    return {"status": "ran", "batches": args.timing_batches, "repeats": args.repeats, "rows": rows}


# ------------------------------------------------------------------------------------------------- 3. k-means


def torch_kmeans(x: np.ndarray, k: int, seed: int, iterations: int, device: str) -> np.ndarray:
    """Lloyd's k-means in torch from ``k`` distinct seeded rows; centroids L2-normalised as by init_prototypes."""
    data = torch.from_numpy(x).to(device)
    centroids = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:k].to(device)]
    for _ in range(iterations):
        assign = torch.argmax(data @ centroids.T - 0.5 * (centroids * centroids).sum(1), dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, data)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # an empty cluster stays put
    return F.normalize(centroids, dim=1).cpu().numpy()


def kmeans(args: argparse.Namespace) -> dict[str, Any]:
    x = long_tailed_embeddings(args.kmeans_rows, args.kmeans_dim, seed=4).features
    gpu_faiss = cuda(args.device) and faiss_gpu_available()
    method = "faiss GPU (init_prototypes)" if gpu_faiss else f"torch k-means on {args.device}"
    out: dict[str, Any] = {"status": "ran", "rows": len(x), "dim": x.shape[1], "iterations": 20, "method": method}
    if not gpu_faiss:
        out["faiss_gpu"] = skipped("the FAISS build here has no GPU support" if cuda(args.device) else "no CUDA device")
    out["results"] = []
    for k in args.kmeans_k:

        def device_run(k: int = k) -> np.ndarray:
            if gpu_faiss:
                return init_prototypes(x, k, seed=0, use_gpu=True)
            return torch_kmeans(x, k, 0, 20, args.device)

        host_s, host = timed(lambda k=k: init_prototypes(x, k, seed=0, use_gpu=False), args.kmeans_repeats)
        device_s, dev = timed(device_run, args.kmeans_repeats)
        p4 = recorded("P4", rf"^\| {k} \| ([\d.]+) \(") if (len(x), x.shape[1]) == (200_000, 1024) else None
        out["results"].append(
            {
                "k": k, "device_s": device_s, "host_faiss_s": host_s, "recorded_cpu_s": p4,
                "speedup_vs_recorded": p4 / device_s if p4 else None,
                # quality of either: mean cosine of each row to its nearest prototype
                "mean_cos_device": float((x @ dev.T).max(1).mean()),
                "mean_cos_faiss": float((x @ host.T).max(1).mean()),
            }
        )  # fmt: skip
        print(f"kmeans k={k}: {out['results'][-1]}", flush=True)
    return out


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls after one untimed call, and the last result."""
    result, times = fn(), []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times)), result


# ------------------------------------------------------------------------------------------------- 4. trainer


class CuratedBatchStandIn:
    """The service's side of a curation step, for timing the trainer alone: each post of embeddings takes
    ``wait_s`` (the measured round trip, selection included) and keeps a seeded ``keep_ratio`` of the rows."""

    def __init__(self, wait_s: float, keep_ratio: float) -> None:
        self.wait_s, self.keep_ratio, self.rng = wait_s, keep_ratio, np.random.default_rng(0)
        self.posts = 0

    def post_embeddings(self, run_id: int, manifest_id: str, array: np.ndarray) -> dict[str, Any]:
        self.posts += 1
        time.sleep(self.wait_s)
        keep = np.zeros(len(array), dtype=bool)
        keep[self.rng.choice(len(array), max(2, round(self.keep_ratio * len(array))), replace=False)] = True
        return {"keep": keep.tolist(), "kept": int(keep.sum()), "new_prototype_version": 1}

    def report_unreadable(self, run_id: int, sample_id: int, reason: str, manifest_id: str | None = None) -> None:
        raise AssertionError(f"synthetic batches have no unreadable rows ({sample_id}: {reason})")


def model_config(name: str, tokenizer: str) -> ClipConfig:
    """``base``: the default architecture from configs with random weights; ``tiny``: the tiny preset."""
    if name == "tiny":
        return dataclasses.replace(PRESETS["tiny"], tokenizer=tokenizer)
    return dataclasses.replace(
        PRESETS["default"], vision="dinov2-base (random init)", text="bert-base (random init)", tokenizer=tokenizer,
        vision_config=BASE_VISION, text_config=BASE_TEXT,
    )  # fmt: skip


def synthetic_batch(cfg: ClipConfig, vocab: int, n: int, device: str) -> Batch:
    """``n`` random images at the configured size and reports of ``max_tokens`` random tokens (the longest case)."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn((n, 3, cfg.image_size, cfg.image_size), generator=g)
    ids = torch.randint(1000, vocab, (n, cfg.max_tokens), generator=g)
    batch = Batch(list(range(n)), pixels, ids, torch.ones_like(ids), indices=list(range(n)))
    return batch.to(device)


def trainer(args: argparse.Namespace) -> dict[str, Any]:
    """Steps of the product's :class:`Trainer` on one device, interleaved: subset, curation without the service's
    wait (the step's own compute) and curation with it."""
    cfg = model_config(args.model, args.tokenizer)
    torch.manual_seed(0)
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    batch = synthetic_batch(cfg, len(model.tokenizer), args.batch_size, args.device)
    service = CuratedBatchStandIn(args.wait_ms / 1e3, args.keep_ratio)
    out: dict[str, Any] = {
        "status": "ran", "model": args.model, "vision": cfg.vision_config, "text": cfg.text_config,
        "parameters": params, "image_size": cfg.image_size, "tokens": cfg.max_tokens, "batch_size": args.batch_size,
        "amp": args.amp, "wait_ms": args.wait_ms, "keep_ratio": args.keep_ratio, "steps": args.steps,
        "warmup_steps": args.warmup_steps,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            api="http://unused", run_id=0, model=f"gpu-pass-{args.model}", device=args.device, amp=args.amp,
            out=Path(tmp), progress=False, total_steps=1000, lr_warmup_steps=10,
        )  # fmt: skip
        run = Trainer(config, World(), cast(ServiceClient, service), model=model)
        modes = {"subset": ("subset", 0.0), "curation_compute": ("curation", 0.0), "curation": ("curation", None)}
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        losses = []
        if cuda(args.device):
            torch.cuda.reset_peak_memory_stats(args.device)
        for round_ in range(args.warmup_steps + args.steps):
            for mode, (phase, wait) in modes.items():
                service.wait_s = args.wait_ms / 1e3 if wait is None else wait
                manifest = {"manifest_id": f"m{round_}", "phase": phase, "epoch": 1, "step": round_}
                sync(args.device)
                started = time.perf_counter()
                record = run.run_step(manifest, batch)
                sync(args.device)
                if round_ >= args.warmup_steps:
                    times[mode].append(time.perf_counter() - started)
                losses.append(record["loss"])
        run.images.shutdown()
        out["fp16"] = fp16_check(args, model, batch, Path(tmp))
    if not all(math.isfinite(loss) for loss in losses):
        raise RuntimeError(f"non-finite loss in the trainer's steps: {losses}")
    step = {mode: 1e3 * float(np.median(t)) for mode, t in times.items()}
    out["step_ms"] = step
    out["wait_share"] = args.wait_ms / step["curation"]
    out["measured_wait_share"] = (step["curation"] - step["curation_compute"]) / step["curation"]
    out["final_loss"], out["posts"] = losses[-1], service.posts
    out["peak_memory_gb"] = torch.cuda.max_memory_allocated(args.device) / 2**30 if cuda(args.device) else None
    real = cuda(args.device) and args.model == "base" and args.batch_size == PAPER["per_gpu"]
    out["paper_scale"] = (
        paper_scale(step["curation"], step["subset"], args.wait_ms, args.keep_ratio)
        if real
        else skipped("needs the real-size step (base model, per-GPU batch 80) measured on CUDA")
    )
    print(f"trainer: {json.dumps({k: v for k, v in out.items() if k not in ('vision', 'text')})}", flush=True)
    return out


def fp16_check(args: argparse.Namespace, model: ClipModel, batch: Batch, tmp: Path) -> dict[str, Any]:
    """Two subset steps with fp16 autocast and the gradient scaler (the trainer refuses fp16 off CUDA)."""
    if not cuda(args.device):
        return skipped("fp16 autocast needs CUDA: the trainer refuses it on the CPU")
    config = TrainConfig(api="http://unused", run_id=0, device=args.device, amp="fp16", out=tmp, progress=False)
    run = Trainer(config, World(), None, model=model)
    losses = [
        run.run_step({"manifest_id": "f", "phase": "subset", "epoch": 1, "step": i}, batch)["loss"] for i in (0, 1)
    ]
    run.images.shutdown()
    ok = all(math.isfinite(loss) for loss in losses) and run.optimizer_step == 2
    return {"status": "passed" if ok else "FAILED", "losses": losses, "scale": float(run.scaler.get_scale())}


def paper_scale(curation_ms: float, subset_ms: float, wait_ms: float, keep_ratio: float) -> dict[str, Any]:
    """On paper: the run of :data:`PAPER` with one device's step times standing for each DDP step.

    Leaves out the gradient all-reduce and the feature gather over 8 GPUs, image loading (prefetched) and the
    subset acknowledgements (posted from a background thread): only the curated-batch wait blocks a step.
    """
    global_batch = PAPER["gpus"] * PAPER["per_gpu"]
    curation_steps = PAPER["curation_epochs"] * math.ceil(PAPER["pairs"] / global_batch)
    steps = estimate_total_steps(PAPER["pairs"], global_batch, PAPER["epochs"], PAPER["curation_epochs"], keep_ratio)
    subset_steps = steps - curation_steps
    run_s = (curation_steps * curation_ms + subset_steps * subset_ms) / 1e3
    wait_s = curation_steps * wait_ms / 1e3
    full_s = PAPER["epochs"] * math.ceil(PAPER["pairs"] / global_batch) * subset_ms / 1e3
    return {
        **PAPER, "keep_ratio": keep_ratio, "curation_steps": curation_steps, "subset_steps": subset_steps,
        "run_hours": run_s / 3600, "wait_hours": wait_s / 3600, "service_share": wait_s / run_s,
        "full_data_hours": full_s / 3600, "time_fraction": run_s / full_s,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------- 5. docs


def render(result: dict[str, Any]) -> str:
    """The GPU section of docs/BENCHMARKS.md from a run's JSON."""
    dev, s = result["device"], result["sections"]
    lines = [
        "## GPU pass: CUDA parity, engine speed, k-means and the trainer's real-size step",
        "",
        f"Device: **{dev['name']}**; torch {dev['torch']}, CUDA {dev['cuda']}, Python {dev['python']}, numpy "
        f"{dev['numpy']}, faiss {dev['faiss']}, transformers {dev['transformers']}. Load average at the start "
        f"{result['load_avg'][0]:.1f}. Command: `{result['command']}` (`bench/gpu_pass.sh`).",
    ]
    if s["parity"].get("status") == "ran":
        p = s["parity"]
        tests = p["pytest"]
        lines += [
            "",
            f"**1. Parity.** `{tests.get('command', 'pytest -m gpu')}`: {tests.get('summary') or tests.get('reason')}. "
            f"{p['candidate']} against the CPU engine on the same long-tailed synthetic super-batches (random draws "
            "from one pool, seeded; prototypes from k-means on 4,096 warm-up rows):",
            "",
            "| size | batches | prototype / band / keep agreement | rows disagreeing | max distance gap (all rows / "
            "disagreeing rows) | max prototype-update gap |",
            "|---|---|---|---|---|---|",
        ]
        for r in p["sizes"]:
            at = "-" if r["max_distance_gap_disagreeing"] is None else f"{r['max_distance_gap_disagreeing']:.2e}"
            lines.append(
                f"| B={r['batch']}, D={r['dim']}, K={r['k']} | {r['batches']} | {r['prototype_agreement']:.4%} / "
                f"{r['band_agreement']:.4%} / **{r['keep_agreement']:.4%}** | {r['rows_disagreeing']} | "
                f"{r['max_distance_gap']:.2e} / {at} | {r['max_update_gap']:.2e} |"
            )
    if s["speed"].get("status") == "ran":
        lines += [
            "",
            f"**2. Engine speed** (P1's measurement on the device; medians of {s['speed']['batches']} super-batches "
            f"x {s['speed']['repeats']} interleaved calls). Torch backend on the device and the CPU engine on the "
            "host, both taking and giving host arrays (copies timed), against the authors'-style loop with its "
            "tensors already on the device:",
            "",
            "| size | engine (device) select ms | CPU engine select ms | loop (device) select ms | ratio | "
            "update ms device / CPU / loop | keep-mask agreement |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in s["speed"]["rows"]:
            lines.append(
                f"| B={r['batch']}, D={r['dim']}, K={r['k']} | {r['engine_ms']:.2f} | {r['engine_cpu_ms']:.2f} | "
                f"{r['loop_ms']:.2f} | **{r['ratio']:.3f}** | {r['engine_update_ms']:.3f} / "
                f"{r['engine_cpu_update_ms']:.3f} / {r['loop_update_ms']:.3f} | {r['agreement']:.4%} |"
            )
    if s["kmeans"].get("status") == "ran":
        km = s["kmeans"]
        lines += [
            "",
            f"**3. k-means** on {km['rows']:,} x {km['dim']} long-tailed synthetic rows, {km['iterations']} "
            f"iterations, every row a training point: {km['method']} against `init_prototypes`' FAISS on the "
            "device machine's CPU and the 2-core box's figure recorded in P4 (bare `faiss.Kmeans`). Medians.",
            "",
            "| k | device s | host FAISS s | P4 recorded s | speed-up vs P4 | mean cos to nearest (device / FAISS) |",
            "|---|---|---|---|---|---|",
        ]
        for r in km["results"]:
            recorded_s = "-" if r["recorded_cpu_s"] is None else f"{r['recorded_cpu_s']:.2f}"
            speedup = "-" if r["speedup_vs_recorded"] is None else f"{r['speedup_vs_recorded']:.1f}x"
            lines.append(
                f"| {r['k']} | {r['device_s']:.3f} | {r['host_faiss_s']:.3f} | {recorded_s} | {speedup} | "
                f"{r['mean_cos_device']:.4f} / {r['mean_cos_faiss']:.4f} |"
            )
    if s["trainer"].get("status") == "ran":
        t = s["trainer"]
        st = t["step_ms"]
        lines += [
            "",
            f"**4. Trainer at real size**: `trainer.train.Trainer` steps, {t['model']} model "
            f"({t['parameters'] / 1e6:.0f} M parameters, random weights from configs), {t['image_size']} px, "
            f"{t['tokens']} tokens, per-GPU batch {t['batch_size']} on synthetic images, {t['amp']} autocast; the "
            f"curated-batch wait simulated by the P2 round trip ({t['wait_ms']:.1f} ms), {t['keep_ratio']:.1%} of "
            f"the rows kept. Medians of {t['steps']} interleaved steps each.",
            "",
            "| step | ms |",
            "|---|---|",
            f"| subset (forward + backward + AdamW on {t['batch_size']} rows) | {st['subset']:.1f} |",
            f"| curation, the step's own compute (no wait) | {st['curation_compute']:.1f} |",
            f"| curation with the curated-batch wait | {st['curation']:.1f} |",
            "",
            f"The wait is **{t['wait_share']:.1%}** of a curation step (measured difference: "
            f"{t['measured_wait_share']:.1%}). fp16 check: {t['fp16'].get('status')}. Peak GPU memory "
            f"{t['peak_memory_gb'] or 0:.1f} GiB.",
        ]
        ps = t["paper_scale"]
        if ps.get("status") != "skipped":
            lines += [
                "",
                f"On paper, the paper's run ({ps['gpus']} GPUs x {ps['per_gpu']}, {ps['pairs']:,} pairs, "
                f"{ps['epochs']} epochs of which {ps['curation_epochs']} curates, {ps['keep_ratio']:.1%} kept): "
                f"{ps['curation_steps']:,} curation and {ps['subset_steps']:,} subset steps take "
                f"{ps['run_hours']:.2f} h, of which the service's waits {ps['wait_hours']:.2f} h: "
                f"**{ps['service_share']:.1%} of the run**. Full-data training would take "
                f"{ps['full_data_hours']:.2f} h ({ps['time_fraction']:.1%} for the curated run). Leaves out the "
                "all-reduce and feature gather over 8 GPUs, and image loading (prefetched).",
            ]
    for name in ("parity", "speed", "kmeans", "trainer"):
        if s[name].get("status") != "ran":
            lines += ["", f"**{name}: {s[name]['status']}** ({s[name].get('reason') or 'see gpu_pass.log'})."]
    lines += ["", "Reproduce: see `bench/gpu_pass.sh`; the figures come from its `gpu_pass.json`."]
    return "\n".join(lines)


def write_docs(result: dict[str, Any]) -> None:
    """Write the GPU section of docs/BENCHMARKS.md; only figures measured on a CUDA device go there."""
    if not cuda(result["device"]["type"]):
        raise ValueError(f"the GPU section takes a CUDA run's figures, not a {result['device']['type']} run's")
    write_section("GPU", render(result))


# ------------------------------------------------------------------------------------------------------- main


def device_info(device: str) -> dict[str, Any]:
    import faiss
    import transformers

    name = torch.cuda.get_device_name(device) if cuda(device) else platform.processor() or platform.machine()
    return {
        "type": device, "name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "numpy": np.__version__, "faiss": faiss.__version__,
        "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
    }  # fmt: skip


def skips(tree: Any, path: str = "") -> dict[str, str]:
    """Every part marked skipped in ``tree``, by its dotted path, with the reason."""
    if not isinstance(tree, dict):
        return {}
    if tree.get("status") == "skipped":
        return {path: tree["reason"]}
    return {k: v for key, sub in tree.items() for k, v in skips(sub, f"{path}.{key}".strip(".")).items()}


def failures(tree: Any, path: str = "") -> list[str]:
    """Every part or check of ``tree`` whose status says it failed, by its dotted path."""
    if not isinstance(tree, dict):
        return []
    own = [path] if tree.get("status") == "FAILED" else []
    return own + [f for key, sub in tree.items() for f in failures(sub, f"{path}.{key}".strip("."))]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", choices=sorted(SCALES), help="sizes: real (default on cuda) or small (cpu)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=Path(".bench/gpu-pass"), help="folder for gpu_pass.json")
    parser.add_argument("--batches", type=int, help="parity super-batches per size")
    parser.add_argument("--steps", type=int, help="timed trainer steps per mode")
    parser.add_argument("--wait-ms", type=float, help="curated-batch wait; default: P2's p50 in docs/BENCHMARKS.md")
    parser.add_argument("--keep-ratio", type=float, default=PAPER_KEEP_RATIO)
    parser.add_argument("--amp", choices=["bf16", "fp16", "off"], default="bf16")
    parser.add_argument("--tokenizer", default=MINILM, help="MiniLM package name or a folder of its tokenizer files")
    parser.add_argument("--docs-from", type=Path, help="only write the GPU section of the docs from this JSON")
    args = parser.parse_args(argv)
    if args.docs_from is not None:
        return args
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here (use --device cpu --scale small)")
    parts = [p for p in args.parts.split(",") if p]
    if unknown := sorted(set(parts) - set(PARTS)):
        parser.error(f"--parts: unknown part(s) {unknown}; choose from {list(PARTS)}")
    args.parts = parts
    scale = SCALES[args.scale or ("real" if args.device == "cuda" else "small")]
    for key, value in scale.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.wait_ms is None:
        args.wait_ms = recorded("P2", r"^\| round trip p50 \| ([\d.]+) \|")
        if args.wait_ms is None:
            parser.error("--wait-ms: docs/BENCHMARKS.md has no P2 round trip p50 to take it from")
    if not 0 < args.keep_ratio <= 1:
        parser.error(f"--keep-ratio must be in (0, 1], got {args.keep_ratio}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.docs_from is not None:
        write_docs(json.loads(args.docs_from.read_text()))
        print(f"GPU section of docs/BENCHMARKS.md written from {args.docs_from}")
        return {}
    result: dict[str, Any] = {
        "command": "python -m bench.gpu_pass " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device_info(args.device),
        "load_avg": list(os.getloadavg()),
        "sections": {},
    }
    started = time.perf_counter()
    for name, run in (("parity", parity), ("speed", speed), ("kmeans", kmeans), ("trainer", trainer)):
        if name not in args.parts:
            result["sections"][name] = skipped("not in --parts")
            continue
        try:
            result["sections"][name] = run(args)
        except Exception:  # one broken part must not cost a device run the other parts' figures
            result["sections"][name] = {"status": "FAILED", "error": traceback.format_exc()[-4000:]}
            print(f"{name} FAILED:\n{result['sections'][name]['error']}", flush=True)
    if "docs" not in args.parts:
        result["sections"]["docs"] = skipped("not in --parts")
    elif cuda(args.device):
        write_docs(result)
        result["sections"]["docs"] = {"status": "ran", "path": "docs/BENCHMARKS.md"}
    else:
        result["sections"]["docs"] = skipped("not a CUDA run: the GPU section takes figures measured on CUDA only")
    result["load_avg_end"] = list(os.getloadavg())
    result["seconds"] = time.perf_counter() - started
    result["skipped"] = skips(result["sections"])
    result["failed"] = failures(result["sections"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_pass.json").write_text(json.dumps(result, indent=1, default=float))
    print(f"gpu pass: {result['seconds']:.0f} s; skipped: {json.dumps(result['skipped'], indent=1)}", flush=True)
    print(f"failed: {result['failed'] or 'none'}", flush=True)
    return result


if __name__ == "__main__":
    sys.exit(1 if main().get("failed") else 0)
