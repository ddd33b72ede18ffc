"""Smoke check of the curation-value benchmark's every path (``python -m bench.curation_value --quick``).

Tiny sizes, one seed: each arm trains for real through the embedded service; the figures are not checked for
quality (docs/CURATION.md holds the measured ones), only that the arms are comparable and the report is whole.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.curation_value import COVID, main


def test_quick_bench_runs_every_arm_and_writes_the_report(tmp_path: Path, capsys) -> None:
    args = ["--quick", "--work", str(tmp_path), "--no-progress"]
    covid = (COVID / "labels.csv").exists()
    main(args if covid else [*args, "--no-covid"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["wall_s"] > 0

    report = json.loads((tmp_path / "results.json").read_text())
    results = {(r["data"], r["arm"]): r for r in report["results"]}
    synth = {arm: results[("synthetic", arm)] for arm in ("full", "online", "random", "offline", "offline_trained")}
    assert synth["full"]["compute_fraction"] == 1.0
    assert 0 < synth["online"]["subset_size"] < synth["full"]["pairs"]
    assert synth["random"]["subset_size"] == synth["online"]["subset_size"]  # (c) matches (b)'s size
    assert synth["online"]["compute_fraction"] < 1 and synth["offline"]["compute_fraction"] < 1
    assert synth["offline_trained"]["compute_fraction"] > 1  # its encoder cost a full-data training
    for result in synth.values():
        assert result["summary"]["finished"]
        assert result["evaluation"]["macro_auc"] is not None and result["evaluation"]["r5"] is not None
    online = synth["online"]
    assert online["service_stats"]["subset_size"] == online["subset_size"]
    assert {"near_duplicates", "noisy_pairs", "labels"} <= set(online["composition"])
    assert abs(online["band_rates"]["all"]["kept"] - online["subset_size"] / online["pairs"]) < 1e-9
    if covid:
        assert {("covid19_radiography", arm) for arm in ("full", "online", "random")} <= set(results)
        assert results[("covid19_radiography", "online")]["evaluation"]["report_prompt_auc"] is not None
    for table in report["tables"].values():
        assert table.startswith("| arm |")
    for name in ("curation_value_auc.png", "curation_value_enrichment.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
