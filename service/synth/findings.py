"""The finding catalogue of the synthetic CXR set: names, prevalence, report keywords.

Prevalence is per patient (every study of a patient shows the same findings), drawn independently per
finding, so findings co-occur at the product of their rates and "no finding" comes out at ~42 %. The
rates fall from 25 % (support devices) to 0.2 % (pneumoperitoneum): the long tail the curation is meant to
protect. Label names follow CheXpert's spelling where it has one, so prompts read naturally.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding: its label (as written in the ``labels`` column) and how reports talk about it.

    ``keywords`` are lower-case stems: every positive or negated statement about the finding contains at
    least one, and no statement about another finding does, so a reader (or a test) can find it in text.
    """

    key: str  # identifier used in code (drawing, templates)
    label: str  # the label string in the CSV ``labels`` column
    prevalence: float  # probability that a patient has it
    keywords: tuple[str, ...]
    sign: str  # the visual sign drawn on the image, for findings.json and the docs


CATALOGUE: tuple[Finding, ...] = (
    Finding("devices", "Support Devices", 0.25, ("tube", "catheter", "lead", "device"),
            "radiopaque lines and tubes: endotracheal tube, central venous catheter, enteric tube, ECG leads"),
    Finding("effusion", "Pleural Effusion", 0.15, ("effusion",),
            "basal meniscus with a blunted costophrenic angle"),
    Finding("cardiomegaly", "Cardiomegaly", 0.12, ("cardiomegaly", "heart", "cardiac"),
            "enlarged heart shadow (cardiothoracic ratio > 0.55)"),
    Finding("atelectasis", "Atelectasis", 0.09, ("atelecta",),
            "plate-like band of opacity in a lower zone"),
    Finding("consolidation", "Consolidation", 0.06, ("consolidat", "airspace"),
            "patchy airspace opacity in one zone"),
    Finding("edema", "Edema", 0.045, ("edema",),
            "bilateral hazy perihilar (bat-wing) opacity"),
    Finding("nodule", "Nodule", 0.03, ("nodul",),
            "one to three small round opacities"),
    Finding("hilar", "Hilar Enlargement", 0.02, ("hilar", "hila", "hilum"),
            "enlarged, dense hilar shadow(s)"),
    Finding("pneumothorax", "Pneumothorax", 0.015, ("pneumothorax",),
            "apical pleural rim with absent lung markings beyond it"),
    Finding("emphysema", "Emphysema", 0.01, ("emphysema", "hyperinflat", "hyperlucen"),
            "hyperlucent lungs with sparse markings and flattened diaphragms"),
    Finding("mass", "Mass", 0.007, ("mass",),
            "large lobulated opacity"),
    Finding("granuloma", "Calcified Granuloma", 0.005, ("granuloma",),
            "tiny very dense (calcified) dot"),
    Finding("fracture", "Rib Fracture", 0.004, ("fracture",),
            "a rib with a gap and a step, with a little callus"),
    Finding("scoliosis", "Scoliosis", 0.003, ("scolio", "spin"),
            "laterally curved spine"),
    Finding("pneumoperitoneum", "Pneumoperitoneum", 0.002, ("free air", "pneumoperitoneum", "free intraperitoneal"),
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
    """Expected share of patients with no finding at all (findings are independent)."""
    rate = 1.0
    for f in CATALOGUE:
        rate *= 1.0 - f.prevalence
    return rate
