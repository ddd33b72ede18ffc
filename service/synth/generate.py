"""The dataset writer: plan patients and studies, render and write them, write the CSVs and catalogue.

Layout of ``out_dir``::

    images/train/p000012_s00.png   (or dicom/train/p000012_s00.dcm with image_format="dicom")
    images/test/...
    train.csv, test.csv            external_id,image,report,labels,patient_id,study,near_duplicate,noise
    train_reports.csv, ...         DICOM only: the sidecar the service's DICOM scan reads (sop_uid, study_uid)
    findings.json                  the catalogue with its prevalence, observed shares and the noise kinds
    prompts.json                   per finding, positive and negative prompts in the reports' phrasing
    synth.json                     the configuration and the counts (what ``generate`` returns)

Determinism: the plan (patients, follow-ups, noise) comes from one seeded stream; every patient and every
study then has its own stream keyed by ``(seed, purpose, patient[, study])``. A sample's bytes therefore do
not depend on which process renders it or in what order, and the work can be spread over processes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from .calibration import FOLLOWUP_RATE, MAX_FOLLOWUPS, draw_finding_sets
from .findings import CATALOGUE, catalogue_json, labels_cell, no_finding_rate
from .images import Anatomy, FindingParams, draw_anatomy, draw_finding_params, draw_jitter, render, to_uint8
from .reports import Phrasing, prompt_sets, write_report

ImageFormat = Literal["png", "dicom"]


class SynthFormat(StrEnum):
    """The image file format (the CLI's ``--format``)."""

    png = "png"
    dicom = "dicom"


CSV_COLUMNS = ("external_id", "image", "report", "labels", "patient_id", "study", "near_duplicate", "noise")
SIDECAR_COLUMNS = ("sop_uid", "study_uid", "report", "labels")
MARKER = "synth.json"
#: zero-shot prompt ensembles in the reports' own phrasing (``chexcurate-train eval --prompts``)
PROMPTS = "prompts.json"

#: noise kinds (training rows only) and what they are; see ``survives_ingest`` for the service's verdict
NOISE_KINDS: dict[str, str] = {
    "mismatched_report": "the report of another patient; the labels still describe the image",
    "blank_image": "a constant image (a valid file) with the study's own report",
    "truncated_image": "the image file cut in half",
    "undecodable_image": "PNG: chunk structure and CRCs intact, pixel stream garbage; DICOM: pixel data cut short",
}


def survives_ingest(kind: str, image_format: ImageFormat) -> bool:
    """Whether the service's ingest keeps a row with this noise (``"none"``: a clean row, kept).

    Ingest checks a PNG's structure (Pillow ``verify``: chunks and CRCs) without decoding it, so an
    undecodable PNG is kept and fails later, in the trainer's unreadable-image path; a DICOM file is decoded
    at ingest, so there it is rejected. A truncated file is rejected either way.
    """
    if kind == "truncated_image":
        return False
    if kind == "undecodable_image":
        return image_format == "png"
    return True


CLEAN_NOISE = "none"
# Purposes of the per-entity random streams; never reorder (the bytes would change).
_PLAN, _PATIENT, _STUDY, _STYLE = 1, 2, 3, 4


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Rates are shares of training studies; the test split is always clean."""

    n_train: int = 2000
    n_test: int = 500
    seed: int = 0
    image_size: int = 128
    noise_rate: float = 0.03  # mismatched reports (2/3) and blank images (1/3): both survive ingest
    corrupt_rate: float = 0.01  # truncated (rejected at ingest) and undecodable (trainer) images, half each
    followup_rate: float = FOLLOWUP_RATE  # share of training patients with follow-up studies
    max_followups: int = MAX_FOLLOWUPS  # follow-ups per such patient: uniform in 1..max
    image_format: ImageFormat = "png"
    reshuffle: float = 0.25  # how often a follow-up report re-draws a phrasing choice

    def check(self) -> None:
        if self.n_train < 1 or self.n_test < 0:
            raise ValueError("need n_train >= 1 and n_test >= 0")
        if not 16 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be in 16..4096, got {self.image_size}")
        for name in ("noise_rate", "corrupt_rate", "followup_rate", "reshuffle"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.noise_rate + self.corrupt_rate > 1:
            raise ValueError("noise_rate + corrupt_rate must be <= 1")
        if self.max_followups < 1:
            raise ValueError("max_followups must be >= 1")
        if self.image_format not in ("png", "dicom"):
            raise ValueError(f"image_format must be png or dicom, got {self.image_format!r}")


@dataclass(frozen=True, slots=True)
class Study:
    """One planned sample."""

    split: str
    patient: int
    study: int  # 0 for the first study, 1.. for follow-ups
    noise: str = CLEAN_NOISE
    donor: int = -1  # the patient whose report a mismatched_report row carries

    @property
    def external_id(self) -> str:
        return f"p{self.patient:06d}-s{self.study:02d}"

    @property
    def patient_id(self) -> str:
        return f"p{self.patient:06d}"

    def image_path(self, fmt: ImageFormat) -> str:
        folder, ext = ("images", "png") if fmt == "png" else ("dicom", "dcm")
        return f"{folder}/{self.split}/p{self.patient:06d}_s{self.study:02d}.{ext}"


@dataclass
class SynthSummary:
    """What ``generate`` wrote (also saved as ``synth.json``)."""

    out_dir: str
    config: dict[str, object]
    n_train: int
    n_test: int
    patients_train: int
    patients_test: int
    near_duplicates: int  # training follow-up studies
    noise: dict[str, int]  # kind -> training rows
    prevalence: dict[str, float]  # label -> share of training studies ("" = no finding)
    test_prevalence: dict[str, float]
    expected_ingest: dict[str, dict[str, int]]  # split -> accepted / rejected by the service's CSV ingest
    seconds: float = 0.0
    pairs_per_s: float = 0.0
    files: list[str] = field(default_factory=list)


# --- planning -----------------------------------------------------------------------------------------


def plan(config: SynthConfig) -> list[Study]:
    """All studies in output order: training patients (with follow-ups and noise), then test patients."""
    rng = np.random.default_rng([config.seed, _PLAN])
    studies: list[Study] = []
    patient = 0
    while len(studies) < config.n_train:
        extra = int(rng.integers(1, config.max_followups + 1)) if rng.random() < config.followup_rate else 0
        count = min(1 + extra, config.n_train - len(studies))
        studies += [Study("train", patient, s) for s in range(count)]
        patient += 1
    n_patients = patient
    # Noise on training rows only: the test split is for evaluation and must be trustworthy.
    draw = rng.random(len(studies))
    kind_draw = rng.random(len(studies))
    donors = rng.integers(1, max(n_patients, 2), len(studies))
    corrupt, noisy = config.corrupt_rate, config.corrupt_rate + config.noise_rate
    for i, study in enumerate(studies):
        if draw[i] < corrupt:
            kind = "truncated_image" if kind_draw[i] < 0.5 else "undecodable_image"
            studies[i] = Study("train", study.patient, study.study, kind)
        elif draw[i] < noisy:
            if kind_draw[i] < 2 / 3 and n_patients > 1:
                donor = (study.patient + int(donors[i])) % n_patients  # never the patient itself
                studies[i] = Study("train", study.patient, study.study, "mismatched_report", donor)
            else:
                studies[i] = Study("train", study.patient, study.study, "blank_image")
    # Test patients: one study each, numbered after the training ones, so the splits share no patient.
    studies += [Study("test", n_patients + j, 0) for j in range(config.n_test)]
    return studies


@dataclass(frozen=True)
class Patient:
    anatomy: Anatomy
    findings: dict[str, FindingParams]


@lru_cache(maxsize=64)
def patient(seed: int, index: int) -> Patient:
    """A patient's anatomy and findings (those of one real label list, drawn at random)."""
    rng = np.random.default_rng([seed, _PATIENT, index])
    anatomy = draw_anatomy(rng)
    present = set(draw_finding_sets(rng, 1)[0])
    findings = {f.key: draw_finding_params(f.key, rng) for f in CATALOGUE if f.key in present}
    return Patient(anatomy, findings)


# --- one sample ---------------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG", compress_level=6)
    return out.getvalue()


def undecodable_png(data: bytes) -> bytes:
    """The PNG with its pixel stream replaced by garbage and the chunk CRCs recomputed.

    Pillow's ``verify`` (the service's ingest check) walks chunks and CRCs only, so this passes ingest;
    decoding the pixels then fails on the zlib header. That is the trainer's "unreadable at load" path.
    """
    out, pos = bytearray(data[:8]), 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            body = b"\xff" * length  # 0xFF 0xFF is not a valid zlib header
        out += struct.pack(">I", length) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        pos += 12 + length
    return bytes(out)


def render_study(config: SynthConfig, study: Study) -> tuple[np.ndarray, str, str]:
    """``(image in [0, 1], report, labels cell)`` of one study, noise included."""
    seed = config.seed
    pat = patient(seed, study.patient)
    rng = np.random.default_rng([seed, _STUDY, study.patient, study.study])
    # A first study sits where the patient does; follow-ups are re-positioned and re-exposed slightly.
    jitter = draw_jitter(rng) if study.study > 0 else None
    size = (config.image_size, config.image_size)
    image = render(pat.anatomy, pat.findings, size, jitter, rng)
    style = np.random.default_rng([seed, _STYLE, study.patient])
    if study.noise == "mismatched_report":
        donor = patient(seed, study.donor)
        style = np.random.default_rng([seed, _STYLE, study.donor])
        report = write_report(donor.findings, Phrasing(style, rng, config.reshuffle)).text
    else:
        report = write_report(pat.findings, Phrasing(style, rng, config.reshuffle), follow_up=study.study > 0).text
    if study.noise == "blank_image":
        image = np.full(size, float(rng.choice((0.0, 0.5, 1.0))), dtype=np.float32)
    return image, report, labels_cell(list(pat.findings))


def write_study(config: SynthConfig, out_dir: Path, study: Study) -> dict[str, str]:
    """Render one study, write its image file, return its CSV row (plus ``_sop_uid`` / ``_study_uid``)."""
    image, report, labels = render_study(config, study)
    rel = study.image_path(config.image_format)
    row = {
        "external_id": study.external_id,
        "image": rel,
        "report": report,
        "labels": labels,
        "patient_id": study.patient_id,
        "study": str(study.study),
        "near_duplicate": "true" if study.study > 0 else "false",
        "noise": study.noise,
    }
    if config.image_format == "dicom":
        from .dicom import dicom_bytes, study_uids

        data = dicom_bytes(
            image,
            seed=config.seed,
            patient=study.patient,
            study=study.study,
            patient_id=study.patient_id,
            external_id=study.external_id,
        )
        study_uid, _, sop_uid = study_uids(config.seed, study.patient, study.study)
        row |= {"_sop_uid": str(sop_uid), "_study_uid": str(study_uid)}
        if study.noise == "undecodable_image":  # pixel data shorter than Rows x Columns says
            data = data[: len(data) - len(data) // 4]
    else:
        data = png_bytes(to_uint8(image))
        if study.noise == "undecodable_image":
            data = undecodable_png(data)
    if study.noise == "truncated_image":
        data = data[: len(data) // 2]
    (out_dir / rel).write_bytes(data)
    return row


def _write_chunk(args: tuple[SynthConfig, str, list[Study]]) -> list[dict[str, str]]:
    config, out_dir, studies = args
    return [write_study(config, Path(out_dir), s) for s in studies]


def _chunks(studies: list[Study], size: int) -> Iterator[list[Study]]:
    """Runs of about ``size`` studies that never split a patient (its cache then serves all its studies)."""
    start = 0
    while start < len(studies):
        end = min(start + size, len(studies))
        while end < len(studies) and studies[end].patient == studies[end - 1].patient:
            end += 1
        yield studies[start:end]
        start = end


# --- the whole set ------------------------------------------------------------------------------------


def _prepare(out_dir: Path) -> None:
    """Create ``out_dir``; clear a previous synth output there, refuse to write into anything else."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise FileExistsError(f"{out_dir} is not empty and holds no {MARKER}: refusing to write into it")
    for sub in ("images", "dicom"):  # a DICOM scan reads whole folders: stale files would join the set
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    for split in ("train", "test"):
        (out_dir / f"{split}_reports.csv").unlink(missing_ok=True)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _shares(rows: list[dict[str, str]]) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for row in rows:
        counts.update(row["labels"].split("|") if row["labels"] else [""])
    n = max(len(rows), 1)
    return {f.label: counts[f.label] / n for f in CATALOGUE} | {"": counts[""] / n}


def generate(
    out_dir: Path | str,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
    image_size: int = 128,
    noise_rate: float = 0.03,
    corrupt_rate: float = 0.01,
    followup_rate: float = FOLLOWUP_RATE,
    max_followups: int = MAX_FOLLOWUPS,
    dicom: bool = False,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> SynthSummary:
    """Write a synthetic long-tailed CXR image-report set to ``out_dir`` and return its summary.

    ``workers`` > 1 renders in that many processes (0: one per CPU); the output is byte-identical either
    way. ``progress(n)`` is called with the number of studies just written.
    """
    config = SynthConfig(
        n_train=n_train,
        n_test=n_test,
        seed=seed,
        image_size=image_size,
        noise_rate=noise_rate,
        corrupt_rate=corrupt_rate,
        followup_rate=followup_rate,
        max_followups=max_followups,
        image_format="dicom" if dicom else "png",
    )
    config.check()
    out = Path(out_dir)
    started = time.perf_counter()
    _prepare(out)
    for split in ("train", "test"):
        folder = "images" if config.image_format == "png" else "dicom"
        (out / folder / split).mkdir(parents=True, exist_ok=True)
    studies = plan(config)
    workers = workers or os.cpu_count() or 1
    rows: list[dict[str, str]] = []
    jobs = [(config, str(out), chunk) for chunk in _chunks(studies, 64)]
    if workers == 1:
        results: Iterator[list[dict[str, str]]] = map(_write_chunk, jobs)
        for chunk_rows in results:
            rows += chunk_rows
            if progress:
                progress(len(chunk_rows))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for chunk_rows in pool.map(_write_chunk, jobs):
                rows += chunk_rows
                if progress:
                    progress(len(chunk_rows))
    train = [r for r, s in zip(rows, studies, strict=True) if s.split == "train"]
    test = [r for r, s in zip(rows, studies, strict=True) if s.split == "test"]
    files = ["train.csv", "test.csv", "findings.json", PROMPTS, MARKER]
    _write_csv(out / "train.csv", CSV_COLUMNS, train)
    _write_csv(out / "test.csv", CSV_COLUMNS, test)
    if config.image_format == "dicom":
        for name, split_rows in (("train_reports.csv", train), ("test_reports.csv", test)):
            sidecar = [r | {"sop_uid": r["_sop_uid"], "study_uid": r["_study_uid"]} for r in split_rows]
            _write_csv(out / name, SIDECAR_COLUMNS, sidecar)
            files.append(name)

    noise = Counter(s.noise for s in studies if s.split == "train" and s.noise != CLEAN_NOISE)
    rejected = sum(n for kind, n in noise.items() if not survives_ingest(kind, config.image_format))
    elapsed = time.perf_counter() - started
    summary = SynthSummary(
        out_dir=str(out),
        config=asdict(config),
        n_train=len(train),
        n_test=len(test),
        patients_train=len({s.patient for s in studies if s.split == "train"}),
        patients_test=len({s.patient for s in studies if s.split == "test"}),
        near_duplicates=sum(1 for s in studies if s.split == "train" and s.study > 0),
        noise={kind: noise.get(kind, 0) for kind in NOISE_KINDS},
        prevalence=_shares(train),
        test_prevalence=_shares(test),
        expected_ingest={
            "train": {"accepted": len(train) - rejected, "rejected": rejected},
            "test": {"accepted": len(test), "rejected": 0},
        },
        seconds=round(elapsed, 3),
        pairs_per_s=round(len(rows) / elapsed, 1) if elapsed > 0 else 0.0,
        files=files,
    )
    catalogue = [
        entry
        | {
            "train_share": summary.prevalence[str(entry["label"])],
            "test_share": summary.test_prevalence[str(entry["label"])],
        }
        for entry in catalogue_json()
    ]
    findings_doc = {
        "label_separator": "|",
        "no_finding_label": "",
        "expected_no_finding_share": round(no_finding_rate(), 4),
        "observed_no_finding_share": {"train": summary.prevalence[""], "test": summary.test_prevalence[""]},
        "findings": catalogue,
        "noise_kinds": {
            kind: {"description": text, "survives_ingest": survives_ingest(kind, config.image_format)}
            for kind, text in NOISE_KINDS.items()
        },
    }
    (out / "findings.json").write_text(json.dumps(findings_doc, indent=2) + "\n")
    (out / PROMPTS).write_text(json.dumps(prompt_sets(), indent=2) + "\n")
    # synth.json leaves out the timing and the location, so that it too is identical for the same seed.
    stable = asdict(summary) | {"out_dir": None, "seconds": None, "pairs_per_s": None}
    (out / MARKER).write_text(json.dumps(stable, indent=2) + "\n")
    return summary
