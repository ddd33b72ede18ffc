"""Pure unit tests of the ingest building blocks: row parsing, report hygiene, path safety."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from service.ingest.images import read_image
from service.ingest.paths import PathRejected, check_root, relative_uri, resolve_inside
from service.ingest.reports import NORMAL_TEMPLATE, rejection_reason, resolve_report, synthesize_report
from service.ingest.rows import (
    MalformedBody,
    RowRejected,
    body_format,
    decoded_lines,
    iter_csv,
    iter_jsonl,
    parse_labels,
    row_input,
)

from .conftest import SHARED_DATA

PNG = Path(SHARED_DATA) / "covid19_radiography" / "COVID" / "COVID-1.png"


# --- rows ---------------------------------------------------------------------------------------------


def test_decoded_lines_rejoin_chunks_split_mid_character_and_drop_bom() -> None:
    body = "\ufeffexternal_id,report\na,Pneumonia in the right lower lobe\nb,ünïcode\n".encode()
    chunks = [body[i : i + 3] for i in range(0, len(body), 3)]  # splits multi-byte characters
    assert list(decoded_lines(chunks)) == [
        "external_id,report\n",
        "a,Pneumonia in the right lower lobe\n",
        "b,ünïcode\n",
    ]
    assert list(decoded_lines([b"no newline at end"])) == ["no newline at end"]


def test_decoded_lines_names_the_line_with_invalid_utf8() -> None:
    with pytest.raises(MalformedBody) as err:
        list(decoded_lines([b"ok\n", b"still ok\nbad \xff byte\n"]))
    assert err.value.line == 3


def test_csv_rows_keep_their_start_line_with_quoted_newlines_and_split_labels() -> None:
    lines = [
        "external_id,image,report,labels,site\n",
        'a,a.png,"Line one\n',
        'line two",Effusion| Cardiomegaly |Effusion,X\n',
        "\n",
        "b,b.png,Clear lungs,,\n",
    ]
    rows = list(iter_csv(lines))
    assert [r.line for r in rows] == [2, 5]
    first = row_input(rows[0])
    assert first.report == "Line one\nline two"
    assert first.labels == ["Effusion", "Cardiomegaly"]  # stripped, de-duplicated, order kept
    assert first.meta == {"site": "X"}
    second = row_input(rows[1])
    assert second.labels is None and second.meta == {}  # empty cells are absent, not empty strings


def test_csv_header_without_external_id_is_a_malformed_body() -> None:
    with pytest.raises(MalformedBody, match="no external_id column") as err:
        list(iter_csv(["id,image,report\n", "a,a.png,x\n"]))
    assert err.value.line == 1
    with pytest.raises(MalformedBody, match="no header"):
        list(iter_csv([]))
    with pytest.raises(MalformedBody, match="repeated"):
        list(iter_csv(["external_id,report,report\n"]))


def test_csv_row_with_wrong_field_count_is_refused_alone() -> None:
    rows = list(iter_csv(["external_id,report\n", "a,x,extra\n", "b,y\n"]))
    with pytest.raises(RowRejected, match="3 fields but the header has 2"):
        row_input(rows[0])
    assert row_input(rows[1]).external_id == "b"


def test_jsonl_lines_objects_and_errors() -> None:
    rows = list(
        iter_jsonl(['{"external_id": 7, "labels": [], "meta": {"a": 1}, "b": 2}\n', "\n", '{"external_id": "x"}'])
    )
    assert [r.line for r in rows] == [1, 3]
    first = row_input(rows[0])
    assert first.external_id == "7" and first.labels == [] and first.meta == {"a": 1, "b": 2}
    with pytest.raises(MalformedBody, match="invalid JSON") as err:
        list(iter_jsonl(['{"external_id": "a"}\n', "{not json\n"]))
    assert err.value.line == 2
    with pytest.raises(MalformedBody, match="expected a JSON object"):
        list(iter_jsonl(["[1, 2]\n"]))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"report": "x"}, "missing external_id"),
        ({"external_id": "  "}, "missing external_id"),
        ({"external_id": True}, "external_id must be a string"),
        ({"external_id": "a" * 501}, "longer than 500"),
        ({"external_id": "a", "labels": "A|B"}, "labels must be a list of strings"),
        ({"external_id": "a", "labels": [1]}, "labels must be a list of strings"),
        ({"external_id": "a", "report": 3.5}, "report must be a string"),
        ({"external_id": "a", "report": "bad\x00byte"}, "NUL"),
        ({"external_id": "a", "meta": {"k": "\x00"}}, "NUL"),
    ],
)
def test_row_field_rejections(fields: dict, reason: str) -> None:
    from service.ingest.rows import RawRow

    with pytest.raises(RowRejected, match=reason):
        row_input(RawRow(1, fields))


def test_parse_labels() -> None:
    assert parse_labels(None) is None
    assert parse_labels([" A ", "", "B", "A"]) == ["A", "B"]


def test_body_format() -> None:
    assert body_format("text/csv; charset=utf-8") == "csv"
    assert body_format("application/x-ndjson") == "jsonl"
    assert body_format("Application/JSONL") == "jsonl"
    for bad in (None, "application/json", "text/csv; charset=latin-1"):
        with pytest.raises(ValueError):
            body_format(bad)


# --- reports ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t",
        "___",
        "N/A",
        "n/a.",
        "None",
        "-",
        "...",
        "_ _ __",
        "See prior report.",
        "FINDINGS: ___ IMPRESSION: N/A",
    ],
)
def test_filler_reports_are_rejected(text: str) -> None:
    from service.ingest.reports import clean_report

    assert rejection_reason(clean_report(text)) is not None
    with pytest.raises(RowRejected):
        resolve_report(text, None, synthesize=False)


@pytest.mark.parametrize("text", ["Normal.", "No acute cardiopulmonary process.", "Findings: small left effusion."])
def test_real_reports_pass_with_whitespace_collapsed(text: str) -> None:
    assert resolve_report(f"  {text}\n\n  ", None, synthesize=True) == (text, False)


def test_reasons_name_the_problem() -> None:
    assert rejection_reason("") == "empty report"
    assert rejection_reason("N/A") == "placeholder-only report: 'N/A'"


def test_template_reports() -> None:
    assert synthesize_report(["Cardiomegaly"]) == (
        "Findings: Cardiomegaly. Impression: Findings consistent with Cardiomegaly."
    )
    assert synthesize_report(["Effusion", "Pleural_Thickening", "Mass"]).startswith(
        "Findings: Effusion, Pleural Thickening and Mass."
    )
    for normal in ([], ["No Finding"], ["Normal"], ["normal", " "]):
        assert synthesize_report(normal) == NORMAL_TEMPLATE
    assert synthesize_report(["No Finding", "Mass"]).startswith("Findings: Mass.")  # the finding wins


def test_resolve_report_synthesis_rules() -> None:
    assert resolve_report("", ["COVID"], synthesize=True) == (synthesize_report(["COVID"]), True)
    assert resolve_report("N/A", ["COVID"], synthesize=True)[1] is True  # filler counts as empty
    assert resolve_report("", [], synthesize=True) == (NORMAL_TEMPLATE, True)  # explicit "no labels"
    with pytest.raises(RowRejected, match="no labels to synthesize"):
        resolve_report("", None, synthesize=True)
    with pytest.raises(RowRejected, match="^empty report$"):
        resolve_report("", ["COVID"], synthesize=False)


# --- paths --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        ("", "missing"),
        ("../x.png", "'..' not allowed in image path"),
        ("a/../../x.png", "'..' not allowed"),
        ("a/../b.png", "'..' not allowed"),  # refused even when it would land inside: '..' is never needed
        ("/etc/passwd", "absolute"),
        ("C:/data/x.png", "absolute"),
        ("a\\b.png", "backslash"),
        ("a\x00.png", "NUL"),
    ],
)
def test_relative_uri_refuses_unsafe_paths(rel: str, reason: str) -> None:
    with pytest.raises(PathRejected, match=reason):
        relative_uri(rel)


def test_relative_uri_normalises() -> None:
    assert relative_uri("./a//b/./c.png") == "a/b/c.png"


def test_resolve_inside_follows_symlinks_and_checks_containment(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "img").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(PNG, root / "img" / "a.png")
    shutil.copy(PNG, outside / "secret.png")
    os.symlink(root / "img" / "a.png", root / "inner-link.png")
    os.symlink(outside / "secret.png", root / "escape.png")
    os.symlink(outside, root / "escape-dir")

    assert resolve_inside(root, "inner-link.png") == ("inner-link.png", (root / "img" / "a.png").resolve())
    for rel in ("escape.png", "escape-dir/secret.png", "escape-dir/missing.png"):
        with pytest.raises(PathRejected, match="symlink escape"):
            resolve_inside(root, rel)
    with pytest.raises(PathRejected, match="file not found: img/missing.png"):
        resolve_inside(root, "img/missing.png")


def test_read_image_hashes_and_checks_the_file(tmp_path: Path) -> None:
    shutil.copy(PNG, tmp_path / "a.png")
    image = read_image(tmp_path, "a.png")
    assert image.sha256 == hashlib.sha256(PNG.read_bytes()).hexdigest()
    data = PNG.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "dir.png").mkdir()
    for rel, reason in (("cut.png", "unreadable image"), ("text.png", "unreadable image"), ("dir.png", "not a file")):
        with pytest.raises(PathRejected, match=reason):
            read_image(tmp_path, rel)


def test_check_root(tmp_path: Path) -> None:
    assert check_root(str(tmp_path) + "/") == str(tmp_path)
    (tmp_path / "f").write_text("x")
    for bad, reason in (("relative/dir", "absolute"), (str(tmp_path / "nope"), "not an existing directory")):
        with pytest.raises(PathRejected, match=reason):
            check_root(bad)
    with pytest.raises(PathRejected, match="not an existing directory"):
        check_root(str(tmp_path / "f"))
