"""Real corpus statistics the synthetic set is calibrated to; docs/SYNTH.md gives the source of every number.

- Which findings a patient has, and together with what: drawn from the 2,000 real PadChest label lists of
  ``../shared/data/formats/padchest/`` (each list mapped onto the catalogue with :data:`PADCHEST_LABELS`), so the
  prevalences, the co-occurrences and the share of studies without a catalogued finding are the real ones. The
  lists are embedded below as counts of finding sets (:data:`FINDING_SETS`); ``tests/test_synth_calibration.py``
  recomputes them from the file.
- Studies per patient: MIMIC-CXR v2 holds 227,835 studies of 65,379 patients, 3.48 studies per patient.
- Mismatched report–image pairs: an assumed 2 % (no public figure was found; see docs/SYNTH.md).
"""

from __future__ import annotations

import ast
import csv
import gzip
from collections import Counter
from pathlib import Path

import numpy as np

#: the catalogue key → the PadChest labels (its ``Labels`` column) that show that finding on a radiograph
PADCHEST_LABELS: dict[str, tuple[str, ...]] = {
    "devices": (
        "NSG tube", "endotracheal tube", "tracheostomy tube", "chest drain tube", "catheter",
        "central venous catheter", "central venous catheter via jugular vein",
        "central venous catheter via subclavian vein", "central venous catheter via umbilical vein",
        "reservoir central venous catheter", "pacemaker", "dual chamber device", "single chamber device",
    ),
    "effusion": ("pleural effusion", "loculated pleural effusion", "costophrenic angle blunting"),
    "cardiomegaly": ("cardiomegaly",),
    "atelectasis": ("atelectasis", "laminar atelectasis", "lobar atelectasis", "segmental atelectasis"),
    "consolidation": ("consolidation", "pneumonia", "atypical pneumonia", "alveolar pattern"),
    "edema": ("pulmonary edema", "kerley lines"),
    "nodule": ("nodule", "multiple nodules"),
    "hilar": ("hilar enlargement", "vascular hilar enlargement", "adenopathy", "hilar congestion"),
    "pneumothorax": ("pneumothorax", "hydropneumothorax"),
    "emphysema": ("emphysema", "bullas"),
    "mass": ("mass", "pulmonary mass", "mediastinal mass", "soft tissue mass"),
    "granuloma": ("calcified granuloma", "granuloma"),
    "fracture": ("rib fracture", "callus rib fracture"),
    "scoliosis": ("scoliosis",),
    "pneumoperitoneum": ("pneumoperitoneo", "pneumoperitoneum"),
}  # fmt: skip

#: where the label lists come from, relative to the repository root (for the test and the docs; never read at run)
PADCHEST_SAMPLE = Path("../shared/data/formats/padchest/PADCHEST_chest_x_ray_images_labels_sample2000.csv.gz")

#: MIMIC-CXR v2.0.0 (Johnson et al., Scientific Data 2019): 227,835 studies of 65,379 patients
MIMIC_STUDIES, MIMIC_PATIENTS = 227_835, 65_379
STUDIES_PER_PATIENT = MIMIC_STUDIES / MIMIC_PATIENTS

#: a patient has follow-up studies with this probability, 1..MAX_FOLLOWUPS of them (uniform): 1 + 0.62 · 4 = 3.48
#: studies per patient on average, MIMIC-CXR's figure
FOLLOWUP_RATE, MAX_FOLLOWUPS = 0.62, 7

#: share of training pairs whose report belongs to another patient (an assumption, see docs/SYNTH.md); the
#: generator's noise rate is 1.5 times this, a third of its noise being blank images
MISMATCHED_SHARE = 0.02


def finding_sets_from_padchest(path: Path) -> tuple[list[tuple[str, ...]], dict[str, int]]:
    """Every parsable label list of the PadChest file as a sorted tuple of catalogue keys, and counts of what was
    read: ``studies`` (parsable lists), ``normal`` (labelled exactly ``normal``), ``unparsable``."""
    to_key = {label: key for key, labels in PADCHEST_LABELS.items() for label in labels}
    sets: list[tuple[str, ...]] = []
    stats = {"studies": 0, "normal": 0, "unparsable": 0}
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                labels = [str(label).strip() for label in ast.literal_eval(row["Labels"])]
            except (ValueError, SyntaxError):
                stats["unparsable"] += 1
                continue
            stats["studies"] += 1
            stats["normal"] += [label for label in labels if label] == ["normal"]
            sets.append(tuple(sorted({to_key[label] for label in labels if label in to_key})))
    return sets, stats


#: counts of (catalogue finding set) over the 1,997 parsable PadChest label lists; () = no catalogued finding
FINDING_SETS: tuple[tuple[tuple[str, ...], int], ...] = (  # fmt: skip
    ((), 1156),
    (("scoliosis",), 82),
    (("cardiomegaly",), 78),
    (("effusion",), 72),
    (("devices",), 69),
    (("consolidation",), 66),
    (("atelectasis",), 53),
    (("fracture",), 33),
    (("hilar",), 33),
    (("nodule",), 31),
    (("granuloma",), 28),
    (("emphysema",), 20),
    (("atelectasis", "effusion"), 17),
    (("cardiomegaly", "hilar"), 14),
    (("consolidation", "effusion"), 14),
    (("atelectasis", "devices"), 13),
    (("consolidation", "devices"), 12),
    (("cardiomegaly", "effusion"), 11),
    (("cardiomegaly", "devices"), 10),
    (("devices", "effusion"), 8),
    (("atelectasis", "cardiomegaly"), 7),
    (("cardiomegaly", "effusion", "hilar"), 7),
    (("cardiomegaly", "scoliosis"), 7),
    (("effusion", "hilar"), 7),
    (("mass",), 6),
    (("devices", "pneumothorax"), 5),
    (("atelectasis", "consolidation"), 4),
    (("atelectasis", "devices", "effusion"), 4),
    (("hilar", "nodule"), 4),
    (("hilar", "scoliosis"), 4),
    (("cardiomegaly", "fracture"), 3),
    (("cardiomegaly", "granuloma"), 3),
    (("cardiomegaly", "nodule"), 3),
    (("consolidation", "devices", "edema"), 3),
    (("consolidation", "devices", "effusion"), 3),
    (("consolidation", "nodule"), 3),
    (("devices", "granuloma"), 3),
    (("devices", "nodule"), 3),
    (("effusion", "fracture"), 3),
    (("effusion", "nodule"), 3),
    (("atelectasis", "cardiomegaly", "effusion"), 2),
    (("atelectasis", "cardiomegaly", "hilar"), 2),
    (("atelectasis", "consolidation", "devices"), 2),
    (("atelectasis", "consolidation", "effusion"), 2),
    (("cardiomegaly", "consolidation", "devices"), 2),
    (("cardiomegaly", "devices", "scoliosis"), 2),
    (("cardiomegaly", "hilar", "scoliosis"), 2),
    (("edema",), 2),
    (("effusion", "granuloma"), 2),
    (("effusion", "scoliosis"), 2),
    (("emphysema", "granuloma"), 2),
    (("fracture", "pneumothorax"), 2),
    (("granuloma", "scoliosis"), 2),
    (("pneumothorax",), 2),
    (("atelectasis", "cardiomegaly", "devices", "effusion"), 1),
    (("atelectasis", "cardiomegaly", "devices", "effusion", "hilar"), 1),
    (("atelectasis", "cardiomegaly", "fracture", "hilar"), 1),
    (("atelectasis", "cardiomegaly", "nodule", "scoliosis"), 1),
    (("atelectasis", "devices", "effusion", "emphysema", "fracture"), 1),
    (("atelectasis", "devices", "effusion", "fracture", "pneumothorax"), 1),
    (("atelectasis", "devices", "pneumothorax"), 1),
    (("atelectasis", "effusion", "fracture"), 1),
    (("atelectasis", "effusion", "scoliosis"), 1),
    (("atelectasis", "fracture", "scoliosis"), 1),
    (("atelectasis", "granuloma"), 1),
    (("atelectasis", "scoliosis"), 1),
    (("cardiomegaly", "consolidation"), 1),
    (("cardiomegaly", "consolidation", "devices", "edema", "hilar"), 1),
    (("cardiomegaly", "consolidation", "edema"), 1),
    (("cardiomegaly", "consolidation", "edema", "effusion"), 1),
    (("cardiomegaly", "consolidation", "effusion"), 1),
    (("cardiomegaly", "consolidation", "hilar"), 1),
    (("cardiomegaly", "devices", "effusion"), 1),
    (("cardiomegaly", "devices", "fracture"), 1),
    (("cardiomegaly", "devices", "granuloma"), 1),
    (("cardiomegaly", "devices", "hilar"), 1),
    (("cardiomegaly", "devices", "pneumoperitoneum"), 1),
    (("cardiomegaly", "edema"), 1),
    (("cardiomegaly", "edema", "hilar"), 1),
    (("cardiomegaly", "effusion", "fracture"), 1),
    (("cardiomegaly", "effusion", "nodule"), 1),
    (("cardiomegaly", "fracture", "scoliosis"), 1),
    (("consolidation", "edema", "effusion"), 1),
    (("consolidation", "edema", "effusion", "hilar"), 1),
    (("consolidation", "effusion", "fracture"), 1),
    (("consolidation", "emphysema"), 1),
    (("consolidation", "fracture"), 1),
    (("consolidation", "hilar"), 1),
    (("consolidation", "hilar", "mass"), 1),
    (("consolidation", "hilar", "nodule"), 1),
    (("consolidation", "mass"), 1),
    (("consolidation", "mass", "nodule"), 1),
    (("consolidation", "scoliosis"), 1),
    (("devices", "edema"), 1),
    (("devices", "edema", "effusion", "hilar"), 1),
    (("devices", "effusion", "fracture", "hilar"), 1),
    (("devices", "effusion", "nodule"), 1),
    (("devices", "emphysema"), 1),
    (("devices", "fracture"), 1),
    (("devices", "hilar"), 1),
    (("devices", "nodule", "pneumothorax"), 1),
    (("edema", "effusion"), 1),
    (("effusion", "emphysema"), 1),
    (("effusion", "emphysema", "fracture"), 1),
    (("effusion", "emphysema", "granuloma"), 1),
    (("effusion", "granuloma", "hilar", "nodule"), 1),
    (("effusion", "pneumothorax"), 1),
    (("emphysema", "nodule"), 1),
    (("fracture", "granuloma"), 1),
    (("fracture", "hilar"), 1),
    (("fracture", "mass"), 1),
    (("fracture", "nodule"), 1),
    (("fracture", "scoliosis"), 1),
    (("granuloma", "hilar"), 1),
    (("granuloma", "mass"), 1),
    (("hilar", "mass"), 1),
    (("mass", "scoliosis"), 1),
    (("nodule", "scoliosis"), 1),
)

#: the PadChest lists labelled exactly "normal" (of the 1,997 parsable ones)
PADCHEST_NORMAL, PADCHEST_STUDIES = 623, 1997


def draw_finding_sets(rng: np.random.Generator, n: int) -> list[tuple[str, ...]]:
    """``n`` finding sets drawn with replacement from the real ones (their joint distribution, co-occurrence
    included)."""
    counts = np.array([count for _, count in FINDING_SETS], dtype=np.float64)
    picks = rng.choice(len(FINDING_SETS), size=n, p=counts / counts.sum())
    return [FINDING_SETS[int(i)][0] for i in picks]


def prevalence() -> dict[str, float]:
    """Share of the real studies showing each catalogue finding."""
    total = sum(n for _, n in FINDING_SETS)
    counts: Counter[str] = Counter()
    for keys, n in FINDING_SETS:
        for key in keys:
            counts[key] += n
    return {key: counts[key] / total for key in PADCHEST_LABELS}


def no_finding_share() -> float:
    """Share of the real studies with no catalogued finding."""
    total = sum(n for _, n in FINDING_SETS)
    return sum(n for keys, n in FINDING_SETS if not keys) / total
