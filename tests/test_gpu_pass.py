"""The GPU pass's CPU path end to end at small sizes (``bench/gpu_pass.py --device cpu --scale small``): every part
that does not need CUDA runs, each CUDA-only part is skipped by name with its reason, and the docs stay untouched.
The figures are not judged (a device run measures them); the parity, the k-means quality and the wait's place in the
step are."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench.gpu_pass import main, paper_scale, render, write_docs
from bench.report import BENCHMARKS

CUDA_SKIPS = {"parity.pytest", "kmeans.faiss_gpu", "trainer.fp16", "trainer.paper_scale", "docs"}


@pytest.fixture(scope="module")
def cpu_pass(tmp_path_factory):
    docs_before = BENCHMARKS.read_text()
    out = tmp_path_factory.mktemp("gpu-pass")
    returned = main(["--device", "cpu", "--scale", "small", "--out", str(out)])
    result = json.loads((out / "gpu_pass.json").read_text())
    assert result == json.loads(json.dumps(returned, default=float))
    assert BENCHMARKS.read_text() == docs_before, "a CPU run must not write the GPU section"
    return result


def test_cpu_pass_names_every_cuda_only_part_it_skips(cpu_pass) -> None:
    assert cpu_pass["device"]["type"] == "cpu"
    assert set(cpu_pass["skipped"]) == CUDA_SKIPS
    for part, reason in cpu_pass["skipped"].items():
        assert "CUDA" in reason, (part, reason)
    assert all(cpu_pass["sections"][name]["status"] == "ran" for name in ("parity", "speed", "kmeans", "trainer"))


def test_torch_backend_on_the_cpu_agrees_with_the_cpu_engine_on_every_row(cpu_pass) -> None:
    parity = cpu_pass["sections"]["parity"]
    assert parity["candidate"] == "TorchBackend(cpu)" and len(parity["sizes"]) == 2
    for size in parity["sizes"]:
        assert size["rows"] == size["batch"] * size["batches"] > 0
        assert size["prototype_agreement"] == size["band_agreement"] == size["keep_agreement"] == 1.0
        assert size["rows_disagreeing"] == 0 and size["max_distance_gap_disagreeing"] is None
        assert 0 <= size["max_distance_gap"] < 1e-5 and size["max_update_gap"] < 1e-5


def test_speed_times_both_engines_and_the_loop_on_the_device(cpu_pass) -> None:
    for row in cpu_pass["sections"]["speed"]["rows"]:
        for key in ("engine_ms", "engine_cpu_ms", "loop_ms", "engine_update_ms", "engine_cpu_update_ms"):
            assert row[key] > 0, key
        assert row["ratio"] == pytest.approx(row["engine_ms"] / row["loop_ms"])
        assert row["agreement"] == 1.0


def test_torch_kmeans_fits_the_data_as_well_as_faiss(cpu_pass) -> None:
    kmeans = cpu_pass["sections"]["kmeans"]
    assert kmeans["method"] == "torch k-means on cpu"
    for result in kmeans["results"]:
        assert result["device_s"] > 0 and result["host_faiss_s"] > 0
        assert result["recorded_cpu_s"] is None  # P4's figure is for 200,000 x 1024 only
        assert abs(result["mean_cos_device"] - result["mean_cos_faiss"]) < 0.02


def test_trainer_steps_carry_the_curated_batch_wait_on_their_critical_path(cpu_pass) -> None:
    trainer = cpu_pass["sections"]["trainer"]
    step, wait = trainer["step_ms"], trainer["wait_ms"]
    assert trainer["model"] == "tiny" and trainer["amp"] == "bf16" and math.isfinite(trainer["final_loss"])
    assert trainer["posts"] == 2 * (trainer["warmup_steps"] + trainer["steps"])  # both curation modes post
    assert wait > 0 and step["curation"] > wait  # the stand-in sleeps that long inside every curation step
    assert trainer["wait_share"] == pytest.approx(wait / step["curation"])


def test_the_gpu_section_takes_cuda_figures_only(cpu_pass) -> None:
    assert "TorchBackend(cpu)" in render(cpu_pass)  # the renderer reads every part a run writes
    with pytest.raises(ValueError, match="CUDA run"):
        write_docs(cpu_pass)


def test_paper_scale_by_hand() -> None:
    est = paper_scale(curation_ms=300.0, subset_ms=200.0, wait_ms=90.0, keep_ratio=0.227)
    # 1,235,004 / 640 -> 1,930 steps an epoch; the 22.7 % subset -> 439 steps in each of the 19 later epochs
    assert (est["curation_steps"], est["subset_steps"]) == (1930, 19 * 439)
    run_s, wait_s = 1930 * 0.3 + 8341 * 0.2, 1930 * 0.09
    assert est["run_hours"] == pytest.approx(run_s / 3600)
    assert est["service_share"] == pytest.approx(wait_s / run_s)
    assert est["time_fraction"] == pytest.approx(run_s / (20 * 1930 * 0.2))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cpu", "--parts", "parity,bogus"], "unknown part"),
        (["--device", "cpu", "--keep-ratio", "0"], "keep-ratio"),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible"),
        ),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(argv, message, capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "gpu_pass.json").exists()


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path) -> None:
    missing = tmp_path / "no-tokenizer"
    result = main(["--device", "cpu", "--parts", "kmeans,trainer", "--tokenizer", str(missing), "--out", str(tmp_path)])
    assert result["failed"] == ["trainer"] and str(missing) in result["sections"]["trainer"]["error"]
    assert result["sections"]["kmeans"]["status"] == "ran"
    assert result["sections"]["parity"] == {"status": "skipped", "reason": "not in --parts"}
    assert "**trainer: FAILED**" in render(result)
    assert json.loads((tmp_path / "gpu_pass.json").read_text())["failed"] == ["trainer"]
