"""The synthetic set's calibration: the embedded tables are what the real PadChest label lists say, and the
generator reproduces the real prevalences, the no-finding share and MIMIC-CXR's studies per patient."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from service.synth import SynthConfig
from service.synth.calibration import (
    FINDING_SETS,
    PADCHEST_LABELS,
    PADCHEST_NORMAL,
    PADCHEST_SAMPLE,
    PADCHEST_STUDIES,
    STUDIES_PER_PATIENT,
    finding_sets_from_padchest,
    no_finding_share,
    prevalence,
)
from service.synth.findings import CATALOGUE
from service.synth.generate import patient, plan

ROOT = Path(__file__).resolve().parent.parent


def test_embedded_finding_sets_are_the_real_padchest_label_lists() -> None:
    path = ROOT / PADCHEST_SAMPLE
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    sets, stats = finding_sets_from_padchest(path)
    assert stats == {"studies": PADCHEST_STUDIES, "normal": PADCHEST_NORMAL, "unparsable": 3}
    assert Counter(sets) == Counter(dict(FINDING_SETS))
    assert set(PADCHEST_LABELS) == {f.key for f in CATALOGUE}


def test_catalogue_prevalence_is_the_real_one() -> None:
    real = prevalence()
    assert {f.key: f.prevalence for f in CATALOGUE} == real
    assert real["effusion"] == pytest.approx(180 / 1997) and real["pneumoperitoneum"] == pytest.approx(1 / 1997)
    assert 0.31 < PADCHEST_NORMAL / PADCHEST_STUDIES < 0.32 < no_finding_share() < 0.59


def test_generator_draws_the_real_joint_distribution() -> None:
    n = 6000
    drawn = [tuple(sorted(patient(5, i).findings)) for i in range(n)]
    counts = Counter(k for keys in drawn for k in keys)
    for key, share in prevalence().items():
        assert abs(counts[key] / n - share) < 4.5 * (share * (1 - share) / n) ** 0.5 + 5e-4, key
    assert abs(sum(not keys for keys in drawn) / n - no_finding_share()) < 0.025
    real_pairs = Counter(tuple(keys) for keys, count in FINDING_SETS for _ in range(count) if len(keys) >= 2)
    assert sum(len(keys) >= 2 for keys in drawn) / n == pytest.approx(sum(real_pairs.values()) / 1997, abs=0.02)


def test_studies_per_patient_match_mimic_cxr() -> None:
    studies = plan(SynthConfig(n_train=20000, n_test=0, seed=1))
    per_patient = len(studies) / len({s.patient for s in studies})
    assert per_patient == pytest.approx(STUDIES_PER_PATIENT, rel=0.05)
