"""The explorer's server side on the real Postgres: sessions and CSRF, keyset gallery pages (every decision once,
read off the gallery index), escaping, thumbnails (PNG, DICOM windowing, path safety, ETag), the embedding map
(cached, sampled) and its background task on a real worker."""

from __future__ import annotations

import io
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import event, select, text, update

from service.api.ui.session import COOKIE
from service.curation import BAND_LABELS
from service.explorer import embedding_map
from service.explorer.gallery import Cursor, GalleryQuery, gallery_page
from service.explorer.thumbnails import render
from service.jobs.offline import run_offline_curation
from service.models import Dataset, Decision, Run, Sample, Token, UiSession
from service.synth.dicom import dicom_bytes
from tests.runs_helpers import encode, npz
from tests.servers import celery_worker, uvicorn_server

OCTET = {"Content-Type": "application/octet-stream"}
ROWS = 600
HOSTILE = "<script>alert('x')</script><b>bold</b> & more"


def sign_in(client: TestClient, token: str) -> str:
    """Log ``client`` in through the form; returns the session's CSRF token (from a page's logout form)."""
    form = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    answer = client.post("/ui/login", data={"token": token, "csrf": csrf}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/runs").text).group(1)


def bearer(headers: dict[str, str]) -> str:
    return headers["Authorization"][len("Bearer ") :]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("explorer-images")
    rng = np.random.default_rng(0)
    for i in range(ROWS):
        shape = (200, 150) if i == 1 else (40, 30)  # one large enough to be scaled down
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def curated(app, client, admin, images):
    """A dataset of ``ROWS`` PNG samples (one with a hostile report), a run over it, curated offline."""
    with app.state.sessions() as session:
        dataset = Dataset(name=f"explorer-{time.time_ns()}", root=str(images))
        session.add(dataset)
        session.flush()
        labels = ["Edema", "Nodule", "Cardiomegaly"]
        samples = [
            Sample(
                dataset_id=dataset.id,
                external_id=f"s{i}",
                image_uri=f"{i}.png",
                report=HOSTILE if i == 0 else f"report {i}",
                labels=[labels[i % 3]] + (["Effusion"] if i % 7 == 0 else []),
                meta={"near_duplicate": "true" if i % 5 == 0 else "false", "noise": "swap" if i % 50 == 0 else "none"},
                content_hash="",
                status="accepted",
            )
            for i in range(ROWS)
        ]
        session.add_all(samples)
        session.commit()
        dataset_id, ids = dataset.id, np.array([s.id for s in samples], dtype=np.int64)
    config = {"k": 4, "warmup_samples": 200, "batch_size": 100, "max_central": 3, "epochs": 4, "curation_epochs": 1}
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}, headers=admin).json()["id"]
    stored = client.post(
        f"/v1/runs/{run_id}/embeddings", content=npz(sample_id=ids, embedding=encode(ids.tolist())), headers=admin
    )
    assert stored.status_code == 200, stored.text
    run_offline_curation(app.state.sessions, run_id)
    return run_id, ids


@pytest.fixture(scope="module")
def ui(app, admin):
    with TestClient(app) as browser:
        csrf = sign_in(browser, bearer(admin))
        yield browser, csrf


def test_pages_and_feeds_refuse_without_a_session(app, curated) -> None:
    run_id, ids = curated
    with TestClient(app) as anonymous:
        for path in ("/ui/runs", f"/ui/runs/{run_id}", f"/ui/runs/{run_id}/gallery", f"/ui/runs/{run_id}/map"):
            answer = anonymous.get(path, follow_redirects=False)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login?next="), path
        for path in (f"/ui/runs/{run_id}/live.json", f"/ui/runs/{run_id}/map.json", f"/ui/thumbs/{ids[0]}"):
            assert anonymous.get(path).status_code == 401, path
        anonymous.cookies.set(COOKIE, "forged", path="/ui")
        assert anonymous.get(f"/ui/runs/{run_id}/live.json").status_code == 401


def test_login_needs_its_csrf_cookie_and_a_live_admin_token(app, make_token) -> None:
    admin_token = bearer(make_token("admin"))
    with TestClient(app) as browser:
        # a cross-site form post carries no login cookie (SameSite=Strict): refused, nothing written
        answer = browser.post("/ui/login", data={"token": admin_token, "csrf": "guess"}, follow_redirects=False)
        assert answer.status_code == 403 and COOKIE not in answer.cookies
        form = browser.get("/ui/login?next=https://evil.example/")
        assert 'value="/ui/runs"' in form.text  # no open redirect
        csrf = sign_in(browser, admin_token)
        assert browser.get("/ui/runs").status_code == 200
        # state-changing forms need the session's CSRF token
        assert browser.post("/ui/logout", data={"csrf": "nope"}).status_code == 403
        assert browser.get("/ui/runs", follow_redirects=False).status_code == 200
        assert browser.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
        assert browser.get("/ui/runs", follow_redirects=False).status_code == 303


def test_a_revoked_token_or_an_expired_session_signs_the_browser_out(app, make_token) -> None:
    token = bearer(make_token("admin"))
    with TestClient(app) as browser, app.state.sessions() as session:
        sign_in(browser, token)
        row = session.scalars(select(UiSession).order_by(UiSession.created_at.desc())).first()
        session.execute(update(UiSession).where(UiSession.id == row.id).values(expires_at=datetime.now(UTC)))
        session.commit()
        assert browser.get("/ui/runs", follow_redirects=False).status_code == 303
        sign_in(browser, token)
        session.execute(update(Token).where(Token.id == row.token_id).values(revoked=True))
        session.commit()
        assert browser.get("/ui/runs", follow_redirects=False).status_code == 303
        expired_id = row.id
        session.expire_all()
        assert session.get(UiSession, expired_id) is None  # purged by the later sign-in


def _all_decisions(db, run_id: int, epoch: int, band: int | None = None, prototype: int | None = None) -> list:
    where = [Decision.run_id == run_id, Decision.epoch == epoch]
    if band is not None:
        where.append(Decision.band == band)
    if prototype is not None:
        where.append(Decision.prototype == prototype)
    rows = db.execute(
        select(Decision.sample_id).where(*where).order_by(Decision.band, Decision.prototype, Decision.sample_id)
    )
    return [r[0] for r in rows]


@pytest.mark.parametrize(("band", "prototype"), [(None, None), ("central_dropped", None), ("support", 2)])
def test_gallery_pages_cover_every_decision_once_in_order(db, curated, band, prototype) -> None:
    run_id, _ = curated
    run = db.get(Run, run_id)
    code = None if band is None else BAND_LABELS.index(band)
    seen, after, pages = [], None, 0
    while True:
        items, after = gallery_page(db, run, GalleryQuery(1, code, prototype, None, after, limit=37))
        seen += [item["sample_id"] for item in items]
        pages += 1
        assert all(band is None or item["band"] == band for item in items)
        if after is None:
            break
    expected = _all_decisions(db, run_id, 1, code, prototype)
    assert seen == expected and len(expected) > 0
    assert pages == max(1, -(-len(expected) // 37))


def test_gallery_label_filter_and_next_link(ui, curated, db) -> None:
    browser, _ = ui
    run_id, _ = curated
    page = browser.get(f"/ui/runs/{run_id}/gallery", params={"label": "Effusion", "limit": 5, "prototype": ""})
    assert page.status_code == 200
    shown = [int(s) for s in re.findall(r'data-sample="(\d+)"', page.text)]
    assert len(shown) == 5
    labels = dict(db.execute(select(Sample.id, Sample.labels).where(Sample.id.in_(shown))).all())
    assert all("Effusion" in labels[s] for s in shown)
    following = re.search(r'id="next-page" href="([^"]+)"', page.text).group(1).replace("&amp;", "&")
    second = browser.get(f"/ui/runs/{run_id}/gallery{following}")
    more = [int(s) for s in re.findall(r'data-sample="(\d+)"', second.text)]
    assert more and not set(more) & set(shown)
    bad = browser.get(f"/ui/runs/{run_id}/gallery", params={"after": "x.y"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_cursor"
    assert browser.get(f"/ui/runs/{run_id}/gallery", params={"band": "nope"}).json()["error"] == "unknown_band"


def test_gallery_query_is_a_range_of_the_gallery_index(db, curated) -> None:
    """The shape the planner must serve from ``ix_decisions_gallery`` without sorting (seq scans off, so the small
    test table does not hide it)."""
    run_id, _ = curated
    db.execute(text("SET LOCAL enable_seqscan = off"))
    run = db.get(Run, run_id)
    captured: list[str] = []
    query = GalleryQuery(1, 3, 1, None, Cursor(3, 1, 10), limit=20)

    def grab(conn, cursor, statement, parameters, context, executemany):
        if "FROM decisions JOIN samples" in statement:
            captured.append(statement % {k: repr(v) for k, v in parameters.items()})

    engine = db.get_bind()
    event.listen(engine, "before_cursor_execute", grab)
    try:
        gallery_page(db, run, query)
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    plan = "\n".join(r[0] for r in db.execute(text("EXPLAIN " + captured[0])))
    assert "ix_decisions_gallery" in plan and "Sort" not in plan, plan
    db.rollback()


def test_pages_escape_report_text_and_send_security_headers(ui, curated) -> None:
    browser, _ = ui
    run_id, ids = curated
    sample = browser.get(f"/ui/runs/{run_id}/samples/{ids[0]}")
    assert sample.status_code == 200
    assert "<script>alert" not in sample.text and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in sample.text
    assert "<b>bold</b>" not in sample.text
    assert "script-src 'self'" in sample.headers["content-security-policy"]
    # its decision in the curation epoch and twelve neighbours with their bands
    assert len(re.findall(r"<tr><td>1</td>", sample.text)) == 1
    assert len(re.findall(r'<li class="band-', sample.text)) == 12
    assert browser.get(f"/ui/runs/{run_id}/samples/999999999").status_code == 404


def test_live_figures(ui, curated) -> None:
    browser, _ = ui
    run_id, _ = curated
    figures = browser.get(f"/ui/runs/{run_id}/live.json").json()
    assert figures["phase"] == "done" and 0 < figures["subset_ratio"] < 1
    assert sum(figures["band_counts"].values()) == ROWS
    assert sum(sum(p[b] for b in BAND_LABELS) for p in figures["timeline"]) == ROWS
    assert figures["timeline"][-1]["subset_ratio"] == pytest.approx(figures["subset_ratio"])
    assert [p["id"] for p in figures["prototypes"]] == [0, 1, 2, 3]
    rare = {label["name"] for label in figures["labels"] if label["rare"]}
    assert rare == set()  # every label here holds over 5 % of the pool
    assert figures["flags"]["near_duplicates"]["dataset_share"] == pytest.approx(0.2)
    assert figures["flags"]["flagged_reports"]["dataset_share"] == pytest.approx(12 / ROWS)


def test_thumbnails_are_cached_with_an_etag_and_stay_inside_the_root(app, ui, curated, images, db) -> None:
    browser, _ = ui
    run_id, ids = curated
    first = browser.get(f"/ui/thumbs/{ids[1]}", params={"side": 96})
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.headers["cache-control"].startswith("private, max-age=") and first.headers["etag"]
    assert Image.open(io.BytesIO(first.content)).size == (72, 96)  # 150 x 200 scaled to fit 96
    again = browser.get(f"/ui/thumbs/{ids[1]}", params={"side": 96}, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    cached = list((app.state.settings.explorer_cache_dir / "thumbs").rglob("*.png"))
    assert cached
    assert browser.get(f"/ui/thumbs/{ids[1]}", params={"side": 97}).status_code == 422
    # a stored path that leaves the root through a symlink is refused, and nothing outside is read
    outside = images.parent / "outside.png"
    Image.new("L", (8, 8)).save(outside)
    os.symlink(outside, images / "escape.png")
    db.execute(update(Sample).where(Sample.id == int(ids[2])).values(image_uri="escape.png"))
    db.commit()
    refused = browser.get(f"/ui/thumbs/{ids[2]}")
    assert refused.status_code == 404 and "outside the dataset root" in refused.json()["detail"]


def test_dicom_thumbnails_use_the_window_and_invert_monochrome1() -> None:
    from pydicom import dcmread

    gradient = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    data = dicom_bytes(gradient, seed=0, patient=1, study=0, patient_id="p1", external_id="e1")
    ds = dcmread(io.BytesIO(data))
    ds.WindowCenter, ds.WindowWidth = 2048, 1024  # a narrow window: the outer quarters clip
    windowed = io.BytesIO()
    ds.save_as(windowed)
    row = np.asarray(Image.open(io.BytesIO(render(windowed.getvalue(), 96))))[32]
    assert row[:12].max() == 0 and row[-12:].min() == 255 and 0 < row[32] < 255
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = io.BytesIO()
    ds.save_as(inverted)
    flipped = np.asarray(Image.open(io.BytesIO(render(inverted.getvalue(), 96))))[32]
    np.testing.assert_array_equal(flipped, 255 - row)


def test_embedding_map_is_cached_and_sampled_when_large(app, curated, monkeypatch, tmp_path) -> None:
    run_id, ids = curated
    made = embedding_map.make_map(app.state.sessions, run_id, tmp_path)
    assert made["rows"] == ROWS == made["shown"] and not made["sampled"]
    assert len(made["prototypes"]) == 4 and {p["band"] for p in made["points"]} == set(BAND_LABELS)
    files = list((tmp_path / "maps").glob("*.map.json"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    assert embedding_map.make_map(app.state.sessions, run_id, tmp_path) == made
    assert files[0].stat().st_mtime_ns == stamp  # read back, not made again
    monkeypatch.setattr(embedding_map, "MAP_POINTS", 100)
    small = embedding_map.make_map(app.state.sessions, run_id, tmp_path / "other")
    assert small["shown"] == 100 and small["sampled"] and small["rows"] == ROWS
    assert {p["id"] for p in small["points"]} <= set(ids.tolist())


def test_embedding_map_is_made_by_a_worker(stack_env, admin, curated, tmp_path) -> None:
    run_id, _ = curated
    env = {**stack_env, "CHEX_EXPLORER_CACHE_DIR": str(tmp_path)}
    with (
        uvicorn_server(env) as url,
        celery_worker(env, queues="refresh"),
        httpx.Client(base_url=url, timeout=60) as browser,
    ):
        form = browser.get("/ui/login")
        login = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        browser.post("/ui/login", data={"token": bearer(admin), "csrf": login})
        csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/ui/runs").text).group(1)
        assert browser.get(f"/ui/runs/{run_id}/map.json").status_code == 202
        queued = browser.post(f"/ui/runs/{run_id}/map", data={"csrf": csrf})
        assert queued.status_code == 303 and queued.headers["location"] == f"/ui/runs/{run_id}/map"
        deadline = time.monotonic() + 60
        while (answer := browser.get(f"/ui/runs/{run_id}/map.json")).status_code == 202:
            assert time.monotonic() < deadline, "the worker did not make the map"
            time.sleep(0.5)
        assert answer.status_code == 200 and answer.json()["rows"] == ROWS
