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
    arms = ("full", "online", "online_density", "random", "full_equal", "offline")
    synth = {arm: results[("synthetic", arm)] for arm in arms}
    assert synth["full"]["compute_fraction"] == 1.0
    assert 0 < synth["online"]["subset_size"] < synth["full"]["pairs"]
    assert 0 < synth["online_density"]["subset_size"] < synth["full"]["pairs"]
    assert synth["random"]["subset_size"] == synth["online"]["subset_size"]  # (c) matches (b)'s size
    for arm in ("online", "online_density", "offline"):
        assert synth[arm]["compute_fraction"] < 1
    # (e) trains every pair for (b)'s pair-passes: equal compute within one manifest
    batch = report["settings"]["batch_size"]
    assert abs(synth["full_equal"]["pair_passes"] - synth["online"]["pair_passes"]) <= 3 * batch
    assert synth["full_equal"]["subset_size"] is None and synth["full_equal"]["pairs"] == synth["full"]["pairs"]
    # (d) embedded each report once with the pretrained text tower and curated offline
    assert synth["offline"]["pair_passes"] - 3 * synth["offline"]["summary"]["rows"]["subset"] > 0
    assert synth["offline"]["service_stats"]["subset_size"] == synth["offline"]["subset_size"]
    for result in synth.values():
        evaluation = result["evaluation"]
        assert evaluation["macro_auc"] is not None and evaluation["r5"] is not None
        assert evaluation["generic_macro_auc"] is not None  # beside the report-phrased ensembles
    online = synth["online"]
    assert online["service_stats"]["subset_size"] == online["subset_size"]
    assert {"near_duplicates", "noisy_pairs", "labels", "rare_enrichment"} <= set(online["composition"])
    assert abs(online["band_rates"]["all"]["kept"] - online["subset_size"] / online["pairs"]) < 1e-9
    if covid:
        assert ("covid19_radiography", "online") in set(results)
        assert results[("covid19_radiography", "online")]["evaluation"]["report_prompt_auc"] is not None
    for table in report["tables"].values():
        assert table.startswith("| arm |")
    assert "(b) CheXficient online" in report["paired"]["synthetic"]
    names = [t["target"] for t in report["targets"]["synthetic"]]
    assert len(names) == 6 and all(isinstance(t["met"], bool) for t in report["targets"]["synthetic"])
    for name in ("curation_value_auc.png", "curation_value_enrichment.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
