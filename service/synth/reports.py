"""Template radiology reports: FINDINGS and IMPRESSION sections with positives, negations and paraphrase.

Every statement about a finding names it with one of its catalogue keywords (as a word start), and no
statement names another finding's keyword, so the labels can be read back from the text; a statement
about an absent finding always carries a negation cue (no / not / without / normal / clear), and a
positive statement never does. Several templates per finding, side words and shuffled order keep reports
from being copies of each other.

Follow-up studies reuse their patient's phrasing choices most of the time (a ``Phrasing`` with a patient
"style" stream and a per-study stream), so they are light paraphrases of each other, as real serial
reports written from the same template are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .findings import BY_KEY, CATALOGUE
from .images import FindingParams

#: a statement with one of these words is a negation; positive statements never use them
NEGATION_CUES = re.compile(r"\b(no|not|without|normal|negative|clear|unremarkable)\b", re.IGNORECASE)

SIDE_WORDS = {-1.0: "right", 1.0: "left", 0.0: "bilateral"}

POSITIVE: dict[str, tuple[str, ...]] = {
    "devices": (),  # built from the devices present, see _devices
    "effusion": (
        "{Side} pleural effusion.",
        "Small to moderate {side} pleural effusion with blunting of the costophrenic angle.",
        "Blunting of the {side} costophrenic angle, consistent with a pleural effusion.",
        "{Side} basilar meniscus compatible with effusion.",
        "There is a {side} pleural effusion.",
    ),
    "cardiomegaly": (
        "The heart is enlarged.",
        "Cardiomegaly.",
        "Enlarged cardiac silhouette.",
        "Moderate cardiomegaly.",
        "The cardiac silhouette is enlarged, cardiothoracic ratio above 0.55.",
    ),
    "atelectasis": (
        "Plate-like atelectasis at the {side} base.",
        "Linear opacity in the {side} lower zone, likely subsegmental atelectasis.",
        "{Side} basilar atelectasis.",
        "Band of discoid atelectasis in the {side} lower lung.",
    ),
    "consolidation": (
        "Patchy airspace opacity in the {side} {zone} zone.",
        "Focal consolidation in the {side} {zone} lung.",
        "{Side} {zone} zone consolidation, which may represent pneumonia in the appropriate clinical setting.",
        "Airspace disease in the {side} {zone} zone.",
    ),
    "edema": (
        "Perihilar haziness consistent with pulmonary edema.",
        "Mild interstitial pulmonary edema.",
        "Bilateral hazy perihilar opacities, likely edema.",
        "Findings suggest pulmonary edema.",
    ),
    "nodule": (
        "{Count} {side} pulmonary nodule{s}.",
        "{Count} small rounded {side} lung nodule{s}.",
        "{Count} nodular opacit{ies} in the {side} lung, CT recommended.",
    ),
    "hilar": (
        "{Side} hilar enlargement.",
        "Prominent {side} hilar contour, possibly adenopathy.",
        "The {side} hilum is enlarged.",
        "Enlarged {side} hilar shadow.",
    ),
    "pneumothorax": (
        "{Side} apical pneumothorax.",
        "There is a {side} pneumothorax with a visible pleural edge at the apex.",
        "Small {side} pneumothorax.",
        "{Side} pneumothorax, apical, with absent lung markings peripherally.",
    ),
    "emphysema": (
        "Hyperinflated lungs with flattened hemidiaphragms, consistent with emphysema.",
        "Emphysema.",
        "Hyperlucent, hyperinflated lungs.",
        "Changes of emphysema with flattening of the diaphragms.",
    ),
    "mass": (
        "{Side} lung mass.",
        "Large lobulated {side} mass, further evaluation with CT recommended.",
        "There is a {side} pulmonary mass.",
        "Lobulated mass in the {side} lung.",
    ),
    "granuloma": (
        "Calcified granuloma in the {side} lung.",
        "Tiny dense calcification in the {side} lung, likely a calcified granuloma.",
        "{Side} calcified granuloma.",
    ),
    "fracture": (
        "{Side} rib fracture.",
        "Displaced fracture of a {side} posterior rib.",
        "There is a {side} rib fracture with callus formation.",
        "Fracture of the {side} {ordinal} rib.",
    ),
    "scoliosis": (
        "Scoliosis of the thoracic spine.",
        "Thoracic scoliosis, convex to the {side}.",
        "Scoliosis, convex to the {side}.",
        "Curvature of the thoracic spine (scoliosis).",
    ),
    "pneumoperitoneum": (
        "Free air under the right hemidiaphragm.",
        "Pneumoperitoneum.",
        "Lucency beneath the right hemidiaphragm, concerning for free intraperitoneal air.",
        "Free air below the diaphragm, consistent with pneumoperitoneum.",
    ),
}

IMPRESSION: dict[str, tuple[str, ...]] = {
    "devices": ("Support devices in place.", "Lines and tubes as described.", "Tubes and catheters as above."),
    "effusion": ("{Side} pleural effusion.", "Pleural effusion ({side})."),
    "cardiomegaly": ("Cardiomegaly.", "Enlarged heart."),
    "atelectasis": ("{Side} basilar atelectasis.", "Atelectasis."),
    "consolidation": ("{Side} consolidation, possibly pneumonia.", "Focal consolidation."),
    "edema": ("Pulmonary edema.", "Mild pulmonary edema."),
    "nodule": ("Pulmonary nodule{s}.", "{Side} lung nodule{s}, follow-up CT suggested."),
    "hilar": ("{Side} hilar enlargement.", "Hilar enlargement, consider CT."),
    "pneumothorax": ("{Side} pneumothorax.", "Small {side} pneumothorax."),
    "emphysema": ("Emphysema.", "Hyperinflation, consistent with emphysema."),
    "mass": ("{Side} lung mass, CT recommended.", "Pulmonary mass."),
    "granuloma": ("Calcified granuloma.", "Old calcified granuloma."),
    "fracture": ("{Side} rib fracture.", "Rib fracture."),
    "scoliosis": ("Scoliosis.", "Thoracic scoliosis."),
    "pneumoperitoneum": ("Pneumoperitoneum, surgical consultation advised.", "Free intraperitoneal air."),
}

#: negations: (findings they deny, variants); used only when every one of those findings is absent
NEGATIONS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("effusion", "pneumothorax"), ("No pleural effusion or pneumothorax.", "No effusion or pneumothorax.")),
    (("pneumothorax",), ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax.")),
    (("effusion",), ("No pleural effusion.", "No effusion.", "Costophrenic angles are sharp, without effusion.")),
    (("cardiomegaly",), ("Heart size is normal.", "The heart is not enlarged.", "Normal cardiac silhouette.")),
    (("consolidation",), ("No focal consolidation.", "No airspace consolidation.", "No consolidation.")),
    (("edema",), ("No pulmonary edema.", "No edema.")),
    (("nodule", "mass"), ("No suspicious nodule or mass.", "No pulmonary nodules or masses.")),
    (("fracture",), ("No displaced rib fracture.", "No acute fracture.")),
    (("pneumoperitoneum",), ("No free air under the diaphragm.", "No pneumoperitoneum.")),
    (("devices",), ("No lines or tubes.", "No support devices.")),
    (("atelectasis",), ("No atelectasis.",)),
)

#: general statements without any finding keyword
NORMAL_LUNGS = ("The lungs are clear.", "Lungs are clear bilaterally.", "Clear lungs.")
NORMAL_MEDIASTINUM = (
    "The cardiomediastinal silhouette is within normal limits.",
    "Normal mediastinal contours.",
    "Mediastinal contours are unremarkable.",
)
NORMAL_IMPRESSION = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "No acute intrathoracic findings.",
)
FOLLOW_UP = ("Compared with the prior study.", "Comparison is made with the prior radiograph.", "Prior study reviewed.")
STABLE = ("Appearance is stable.", "Similar to the prior examination.", "Little interval change.")
#: findings that change lung parenchyma: "the lungs are clear" would contradict them
PARENCHYMAL = frozenset({"effusion", "atelectasis", "consolidation", "edema", "nodule", "mass", "pneumothorax"})
ZONES = ("upper", "mid", "lower")
ORDINALS = ("fourth", "fifth", "sixth", "seventh", "eighth")
COUNTS = {1: "A", 2: "Two", 3: "Three"}


class Phrasing:
    """Picks among variants: usually as the patient's "style" stream says, sometimes afresh per study."""

    def __init__(self, style: np.random.Generator, study: np.random.Generator, reshuffle: float) -> None:
        self.style, self.study, self.reshuffle = style, study, reshuffle

    def pick(self, options: Sequence[str]) -> str:
        # Draw from both streams every time, so the style stream stays aligned across a patient's studies.
        i, j, fresh = self.style.integers(len(options)), self.study.integers(len(options)), self.study.random()
        return options[int(j if fresh < self.reshuffle else i)]

    def chance(self, p: float) -> bool:
        a, b, fresh = self.style.random(), self.study.random(), self.study.random()
        return bool((b if fresh < self.reshuffle else a) < p)


def _fill(template: str, params: FindingParams) -> str:
    side = SIDE_WORDS.get(params.get("side", 0.0), "bilateral")
    if "amp" in params:  # scoliosis: convex to the side the spine bows towards
        side = "left" if params["amp"] > 0 else "right"
    count = int(params.get("count", 1))
    if "count" in params:  # nodules: one side each; several on both sides are "bilateral"
        sides = {params[f"side{i}"] for i in range(count)}
        side = SIDE_WORDS[sides.pop()] if len(sides) == 1 else "bilateral"
    zone = ZONES[int(params.get("zone", 2))]
    ordinal = ORDINALS[int(params.get("rib", 3)) - 3]
    text = template.format(
        side=side,
        Side=side.capitalize(),
        zone=zone,
        Count=COUNTS.get(count, "Several"),
        s="s" if count > 1 else "",
        ies="ies" if count > 1 else "y",
        ordinal=ordinal,
    )
    # Optional words may leave double spaces: collapse them.
    return re.sub(r"\s+", " ", text).strip()


def _devices(params: FindingParams, say: Phrasing) -> list[str]:
    out = []
    if params["ett"]:
        out.append(say.pick(("Endotracheal tube in place.", "ET tube tip above the carina.", "Endotracheal tube.")))
    if params["cvc"]:
        side = SIDE_WORDS[params["cvc_side"]]
        out.append(
            say.pick(
                (
                    f"{side.capitalize()} internal jugular central venous catheter, tip in the SVC.",
                    f"{side.capitalize()} IJ catheter terminates in the superior vena cava.",
                    f"Central venous catheter from the {side}, tip at the cavoatrial region.",
                )
            )
        )
    if params["ng"]:
        out.append(say.pick(("Enteric tube courses below the diaphragm.", "Nasogastric tube into the stomach.")))
    if params["ecg"]:
        out.append(say.pick(("ECG leads overlie the chest.", "Monitoring leads project over the thorax.")))
    return out


@dataclass(frozen=True, slots=True)
class Report:
    text: str
    positives: tuple[str, ...]  # finding keys stated as present
    negated: tuple[str, ...]  # finding keys explicitly denied


def write_report(findings: Mapping[str, FindingParams], say: Phrasing, follow_up: bool = False) -> Report:
    """A report for a study with ``findings`` (catalogue keys -> their parameters)."""
    present = [f.key for f in CATALOGUE if f.key in findings]
    statements: list[str] = []
    for key in present:
        if key == "devices":
            statements += _devices(findings[key], say)
        else:
            statements.append(_fill(say.pick(POSITIVE[key]), findings[key]))
    # Negations: a few of the applicable ones, as radiologists mention the pertinent negatives only.
    applicable = [(keys, variants) for keys, variants in NEGATIONS if not any(k in findings for k in keys)]
    negated: list[str] = []
    wanted = 2 + int(say.chance(0.5)) + int(say.chance(0.3))
    for keys, variants in applicable:
        if len(negated) >= wanted or any(k in negated for k in keys):
            say.pick(variants), say.chance(0.5)  # keep both streams aligned
            continue
        text = say.pick(variants)
        if say.chance(0.7):
            statements.append(text)
            negated += keys
    if not PARENCHYMAL & set(present) and say.chance(0.8):
        statements.append(say.pick(NORMAL_LUNGS))
    if "cardiomegaly" not in findings and "hilar" not in findings and say.chance(0.5):
        statements.append(say.pick(NORMAL_MEDIASTINUM))
    order = say.study.permutation(len(statements)) if say.chance(0.4) else np.arange(len(statements))
    body = " ".join(statements[i] for i in order)

    findings_impressions = [k for k in present if k != "devices"] or present
    if findings_impressions:
        # Acute and rare findings first, as an impression leads with what matters.
        ranked = sorted(findings_impressions, key=lambda k: BY_KEY[k].prevalence)[:3]
        impression = " ".join(_fill(say.pick(IMPRESSION[k]), findings[k]) for k in ranked)
        if present == ["devices"]:  # "normal radiograph" would contradict the devices
            impression += " " + say.pick([text for text in NORMAL_IMPRESSION if "Normal" not in text])
    else:
        impression = say.pick(NORMAL_IMPRESSION)
    header = ""
    if follow_up:
        header = say.pick(FOLLOW_UP) + " "
        if present:
            impression += " " + say.pick(STABLE)
    text = f"FINDINGS: {header}{body}\nIMPRESSION: {impression}"
    return Report(text=text, positives=tuple(present), negated=tuple(dict.fromkeys(negated)))


def mentions(text: str) -> tuple[set[str], set[str]]:
    """``(asserted, denied)`` finding keys read back from a report by keyword and negation cue.

    A sentence naming a finding's keyword counts as denying it when it carries a negation cue and as
    asserting it otherwise. Used by the tests; also handy for checking real reports against labels.
    """
    asserted: set[str] = set()
    denied: set[str] = set()
    for sentence in re.split(r"(?<=[.])\s+|\n", text):
        lower = sentence.lower()
        negative = NEGATION_CUES.search(lower) is not None
        for finding in CATALOGUE:
            if any(re.search(r"\b" + re.escape(kw), lower) for kw in finding.keywords):
                (denied if negative else asserted).add(finding.key)
    return asserted, denied


def prompt_sets() -> dict[str, dict[str, list[str]]]:
    """Zero-shot prompts per finding label in the phrasing of these reports: ``positive`` every way a report states
    the finding (each side filled in), ``negative`` every way it denies it plus the normal impressions."""
    out: dict[str, dict[str, list[str]]] = {}
    sides = [{"side": side, "amp": side or 1.0, "zone": 2.0, "rib": 4.0} for side in (-1.0, 1.0, 0.0)]
    devices = {"ett": 1.0, "cvc": 1.0, "ng": 1.0, "ecg": 1.0}
    for finding in CATALOGUE:
        if finding.key == "devices":
            positive = [
                text for side in (-1.0, 1.0) for text in _devices(devices | {"cvc_side": side}, _AllVariants())
            ] + list(IMPRESSION["devices"])
        else:
            templates = POSITIVE[finding.key] + IMPRESSION[finding.key]
            extra = (lambda p: {"count": 1.0, "side0": p["side"]}) if finding.key == "nodule" else (lambda p: {})
            positive = [_fill(t, params | extra(params)) for t in templates for params in sides]
        negative = [text for keys, variants in NEGATIONS if finding.key in keys for text in variants]
        out[finding.label] = {
            "positive": list(dict.fromkeys(positive)),
            "negative": list(dict.fromkeys(negative + list(NORMAL_IMPRESSION))),
        }
    return out


class _AllVariants(Phrasing):
    """A phrasing that yields every variant in turn (for listing what a template can say)."""

    def __init__(self) -> None:
        self.calls = 0

    def pick(self, options: Sequence[str]) -> str:
        self.calls += 1
        return options[self.calls % len(options)]
