"""The finding catalogue of the synthetic CXR set: names, prevalence, report keywords.

Prevalence is per patient (every study of a patient shows the same findings). A patient's findings are the
catalogue findings of one real PadChest label list drawn at random (``calibration``), so prevalences,
co-occurrences and the share without any catalogued finding are PadChest's: from 9 % (pleural effusion) down to
0.05 % (pneumoperitoneum), the long tail of a real corpus. Label names follow CheXpert's spelling where it has
one, so prompts read naturally.
"""

from __future__ import annotations

from dataclasses import dataclass

from .calibration import no_finding_share, prevalence

#: the real share of studies showing each finding (PadChest), by catalogue key
_REAL = prevalence()


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding: its label (as written in the ``labels`` column) and how reports talk about it.

    ``keywords`` are lower-case stems: every positive or negated statement about the finding contains at
    least one, and no statement about another finding does, so a reader (or a test) can find it in text.
    """

    key: str  # identifier used in code (drawing, templates)
    label: str  # the label string in the CSV ``labels`` column
    prevalence: float  # share of real studies that show it: the probability that a patient has it
    keywords: tuple[str, ...]
    sign: str  # the visual sign drawn on the image, for findings.json and the docs


CATALOGUE: tuple[Finding, ...] = (
    Finding("devices", "Support Devices", _REAL["devices"], ("tube", "catheter", "lead", "device"),
            "radiopaque lines and tubes: endotracheal tube, central venous catheter, enteric tube, ECG leads"),
    Finding("effusion", "Pleural Effusion", _REAL["effusion"], ("effusion",),
            "basal meniscus with a blunted costophrenic angle"),
    Finding("cardiomegaly", "Cardiomegaly", _REAL["cardiomegaly"], ("cardiomegaly", "heart", "cardiac"),
            "enlarged heart shadow (cardiothoracic ratio > 0.55)"),
    Finding("atelectasis", "Atelectasis", _REAL["atelectasis"], ("atelecta",),
            "plate-like band of opacity in a lower zone"),
    Finding("consolidation", "Consolidation", _REAL["consolidation"], ("consolidat", "airspace"),
            "patchy airspace opacity in one zone"),
    Finding("edema", "Edema", _REAL["edema"], ("edema",),
            "bilateral hazy perihilar (bat-wing) opacity"),
    Finding("nodule", "Nodule", _REAL["nodule"], ("nodul",),
            "one to three small round opacities"),
    Finding("hilar", "Hilar Enlargement", _REAL["hilar"], ("hilar", "hila", "hilum"),
            "enlarged, dense hilar shadow(s)"),
    Finding("pneumothorax", "Pneumothorax", _REAL["pneumothorax"], ("pneumothorax",),
            "apical pleural rim with absent lung markings beyond it"),
    Finding("emphysema", "Emphysema", _REAL["emphysema"], ("emphysema", "hyperinflat", "hyperlucen"),
            "hyperlucent lungs with sparse markings and flattened diaphragms"),
    Finding("mass", "Mass", _REAL["mass"], ("mass",),
            "large lobulated opacity"),
    Finding("granuloma", "Calcified Granuloma", _REAL["granuloma"], ("granuloma",),
            "tiny very dense (calcified) dot"),
    Finding("fracture", "Rib Fracture", _REAL["fracture"], ("fracture",),
            "a rib with a gap and a step, with a little callus"),
    Finding("scoliosis", "Scoliosis", _REAL["scoliosis"], ("scolio", "spin"),
            "laterally curved spine"),
    Finding("pneumoperitoneum", "Pneumoperitoneum", _REAL["pneumoperitoneum"],
            ("free air", "pneumoperitoneum", "free intraperitoneal"),
            "lucent crescent of free air under the right hemidiaphragm"),
)  # fmt: skip

KEYS: tuple[str, ...] = tuple(f.key for f in CATALOGUE)
BY_KEY: dict[str, Finding] = {f.key: f for f in CATALOGUE}
BY_LABEL: dict[str, Finding] = {f.label: f for f in CATALOGUE}
#: what the ``labels`` column holds for a study without findings (the service stores it as ``[]``)
NO_FINDING_LABEL = ""
LABEL_SEPARATOR = "|"


def labels_cell(keys: tuple[str, ...] | list[str]) -> str:
    """The ``labels`` CSV cell for a set of finding keys, in catalogue order (stable across studies)."""
    present = set(keys)
    return LABEL_SEPARATOR.join(f.label for f in CATALOGUE if f.key in present)


def catalogue_json() -> list[dict[str, object]]:
    """The catalogue as written to ``findings.json``."""
    return [
        {"key": f.key, "label": f.label, "prevalence": f.prevalence, "keywords": list(f.keywords), "sign": f.sign}
        for f in CATALOGUE
    ]


def no_finding_rate() -> float:
    """Expected share of patients without a catalogued finding (PadChest's)."""
    return no_finding_share()
