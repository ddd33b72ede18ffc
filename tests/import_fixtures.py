"""Sets in their published layouts for the importer tests: the real Open-i, PadChest and NIH files of the shared
data (images created at the paths they name), and MIMIC-CXR / CheXpert Plus fixtures with their published column
names (no public sample exists)."""

from __future__ import annotations

import csv
import gzip
import re
import shutil
from pathlib import Path

from PIL import Image

from tests.conftest import SHARED_DATA

FORMATS_DIR = Path(SHARED_DATA) / "formats"
CHEXPERT_14 = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
]  # fmt: skip


def image(path: Path, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8), 7).save(path)


def openi_root(root: Path) -> list[str]:
    """The real ecgen-radiology reports and a PNG per image they link; returns the image ids."""
    shutil.copytree(FORMATS_DIR / "openi" / "ecgen-radiology", root / "ecgen-radiology")
    ids = []
    for xml in sorted((root / "ecgen-radiology").glob("*.xml")):
        ids += re.findall(r'parentImage id="([^"]+)"', xml.read_text())
    for name in ids:
        image(root / f"{name}.png")
    return ids


def padchest_root(root: Path) -> list[dict[str, str]]:
    """The real 2,000-row PadChest table and a 16-bit PNG at each ``ImageDir/ImageID``; returns its rows."""
    source = FORMATS_DIR / "padchest" / "PADCHEST_chest_x_ray_images_labels_sample2000.csv.gz"
    shutil.copy(source, root / source.name)
    with gzip.open(source, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        image(root / row["ImageDir"] / row["ImageID"], "I;16")
    return rows


def nih_root(root: Path) -> list[dict[str, str]]:
    """The real 2,000-row NIH table, images in ``images/``, and a split list for the first 100 images."""
    source = FORMATS_DIR / "nih" / "Data_Entry_2017_v2020_sample2000.csv"
    shutil.copy(source, root / source.name)
    with source.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        image(root / "images" / row["Image Index"])
    (root / "test_list.txt").write_text("".join(r["Image Index"] + "\n" for r in rows[:100]))
    return rows


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="") as fh:  # type: ignore[operator]
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


MIMIC_METADATA = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip

#: (dicom_id, subject, study, ViewPosition)
MIMIC_IMAGES = [
    ("d1-pa", "10000032", "50414267", "PA"),
    ("d1-lat", "10000032", "50414267", "LATERAL"),
    ("d2-ap", "10000032", "53189527", "AP"),
    ("d3-pa", "10000764", "57375967", "PA"),  # its report is a placeholder
    ("d4-ap", "10000898", "50771383", "AP"),  # its image is missing
    ("d5-pa", "10000935", "51178377", "PA"),  # findings only: no impression
]
MIMIC_REPORTS = {
    "50414267": "FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  Cough.\n\n FINDINGS:  There is "
    "no focal consolidation, pleural effusion or pneumothorax.\n\n IMPRESSION:  No acute cardiopulmonary process.\n",
    "53189527": "FINAL REPORT\n FINDINGS:  Mild pulmonary edema, right pleural effusion.\n\n IMPRESSION:  Edema.\n",
    "57375967": "FINAL REPORT\n FINDINGS:  ___\n\n IMPRESSION:  ___\n",
    "50771383": "FINAL REPORT\n IMPRESSION:  Stable cardiomegaly.\n",
    "51178377": "FINAL REPORT\n FINDINGS:  Left lower lobe atelectasis.\n",
}


def mimic_root(root: Path, sectioned: bool = False) -> None:
    """MIMIC-CXR-JPG's files (gzip tables as published) and reports as ``.txt`` (or a sectioned CSV)."""
    write_csv(
        root / "mimic-cxr-2.0.0-metadata.csv.gz",
        MIMIC_METADATA,
        [[d, s, st, "CHEST (PA AND LAT)", v, 3056, 2544, 21800506, 213014.531, "CHEST (PA AND LAT)", "", ""]
         for d, s, st, v in MIMIC_IMAGES],
    )  # fmt: skip
    write_csv(
        root / "mimic-cxr-2.0.0-split.csv.gz",
        ["dicom_id", "study_id", "subject_id", "split"],
        [[d, st, s, "test" if d == "d2-ap" else "train"] for d, s, st, _ in MIMIC_IMAGES],
    )
    labels = {"50414267": {"No Finding": "1.0"}, "53189527": {"Edema": "1.0", "Pleural Effusion": "-1.0",
              "Cardiomegaly": "0.0"}, "51178377": {"Atelectasis": "1.0"}}  # fmt: skip
    write_csv(
        root / "mimic-cxr-2.0.0-chexpert.csv.gz",
        ["subject_id", "study_id", *CHEXPERT_14],
        [[s, st, *(labels.get(st, {}).get(n, "") for n in CHEXPERT_14)] for _, s, st, _ in MIMIC_IMAGES[::-1]],
    )
    for dicom, subject, study, _ in MIMIC_IMAGES:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        folder.mkdir(parents=True, exist_ok=True)
        if dicom != "d4-ap":
            image(folder / f"s{study}" / f"{dicom}.jpg", "L")
        if not sectioned:
            (folder / f"s{study}.txt").write_text(MIMIC_REPORTS[study])
    if sectioned:
        from service.ingest.formats.common import report_sections

        write_csv(
            root / "mimic_cxr_sectioned.csv",
            ["study", "impression", "findings", "last_paragraph", "comparison"],
            [[f"s{st}", *report_sections(text)[::-1], "", ""] for st, text in MIMIC_REPORTS.items()],
        )


CHEXPERT_PLUS = [
    "path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id", "patient_report_date_order",
    "report", "section_narrative", "section_clinical_history", "section_history", "section_comparison",
    "section_technique", "section_procedure_comments", "section_findings", "section_impression",
    "section_end_of_impression", "section_summary", "section_accession_number", "age", "sex", "race",
    "ethnicity", "interpreter_needed", "insurance_type", "recent_bmi", "deceased", "split",
]  # fmt: skip


def chexpert_plus_root(root: Path) -> None:
    """``df_chexpert_plus_240401.csv`` with its published columns, the images, and a CheXpert labels table."""
    rows = [
        ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "Clear lungs.", "No acute findings.", "train"),
        ("train/patient00001/study1/view2_lateral.jpg", "Lateral", "Clear lungs.", "No acute findings.", "train"),
        ("train/patient00002/study1/view1_frontal.jpg", "Frontal", "", "Small left effusion.", "train"),
        ("train/patient00003/study2/view1_frontal.jpg", "Frontal", "", "", "train"),  # no report
        ("valid/patient64541/study1/view1_frontal.jpg", "Frontal", "Cardiomegaly.\nEdema.", "CHF.", "valid"),
    ]
    table = []
    for path, view, findings, impression, split in rows:
        patient = path.split("/")[1]
        cells = {"path_to_image": path, "path_to_dcm": path.replace(".jpg", ".dcm"), "frontal_lateral": view,
                 "ap_pa": "AP" if view == "Frontal" else "", "deid_patient_id": f"pid-{patient}",
                 "patient_report_date_order": 1, "section_findings": findings, "section_impression": impression,
                 "report": f"FINDINGS: {findings} IMPRESSION: {impression}", "age": 61, "sex": "Female",
                 "split": split}  # fmt: skip
        table.append([cells.get(c, "") for c in CHEXPERT_PLUS])
        image(root / path)
    write_csv(root / "df_chexpert_plus_240401.csv", CHEXPERT_PLUS, table)
    labels = {rows[0][0]: {"No Finding": "1.0"}, rows[2][0]: {"Pleural Effusion": "1.0", "Edema": "-1.0"},
              rows[4][0]: {"Cardiomegaly": "1.0", "Edema": "1.0"}}  # fmt: skip
    write_csv(
        root / "chexpert_labels.csv",
        ["Path", *CHEXPERT_14],
        [[f"CheXpert-v1.0/{p}", *(labels.get(p, {}).get(n, "") for n in CHEXPERT_14)] for p, *_ in rows],
    )
