"""DICOM output: a 12-bit CR image with the tags a chest-radiograph pipeline looks at.

UIDs are derived from the seed and the study (pydicom's ``generate_uid`` with entropy sources is a hash),
so the same seed writes byte-identical files and two seeds never share a UID.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's registered root, for generated UIDs
BITS_STORED = 12


def study_uids(seed: int, patient: int, study: int) -> tuple[UID, UID, UID]:
    """``(study, series, SOP instance)`` UIDs of one study (one series with one image)."""

    def uid(kind: str) -> UID:
        return generate_uid(UID_PREFIX, entropy_srcs=["chexcurate-synth", kind, str(seed), str(patient), str(study)])

    return uid("study"), uid("series"), uid("sop")


def dicom_bytes(
    image: NDArray[np.float32], *, seed: int, patient: int, study: int, patient_id: str, external_id: str
) -> bytes:
    """A DICOM Part 10 file (explicit VR little endian, uncompressed) of ``image`` in [0, 1]."""
    study_uid, series_uid, sop_uid = study_uids(seed, patient, study)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    # Dates are synthetic and fixed per study (follow-ups a month apart), never the clock: files must repeat.
    ds.StudyDate = f"2020{1 + study % 12:02d}15"
    ds.StudyTime = "120000"
    ds.AccessionNumber = external_id[:16]
    ds.StudyID = str(study)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientID = patient_id
    ds.PatientName = f"SYNTH^{patient_id}"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Manufacturer = "chexcurate synth"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.PixelSpacing = [round(350.0 / image.shape[0], 4), round(350.0 / image.shape[1], 4)]  # a 35 cm detector
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PixelData = np.rint(image * (2**BITS_STORED - 1)).astype("<u2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
