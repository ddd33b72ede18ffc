"""The explorer (/ui) in a real browser: Debian's chromium driven by Playwright against a real ``chexcurate serve``
on the test database, over a run curated offline while the run page watches. Screenshots of every page go to
.pytest_cache/ui-screenshots."""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from service.demo.admin_client import AdminApi
from service.launcher import api_server
from tests.explorer_helpers import synthetic_run

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)
SHOTS = Path(__file__).resolve().parent.parent / ".pytest_cache" / "ui-screenshots"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium; .ci/run installs it)"
)


@pytest.fixture(scope="module")
def served(pg_url, make_token, tmp_path_factory):
    """A real ``chexcurate serve`` with one run whose embeddings are stored but not curated yet."""
    cache = tmp_path_factory.mktemp("explorer-cache")
    env = {
        "CHEX_DATABASE_URL": pg_url,
        "CHEX_EXPLORER_CACHE_DIR": str(cache / "explorer"),
        "CHEX_NEIGHBOUR_INDEX_DIR": str(cache / "neighbours"),
    }
    token = make_token("admin")["Authorization"][len("Bearer ") :]
    with api_server(env) as url, AdminApi(url, token) as api:
        dataset_id, run_id, ids = synthetic_run(api, tmp_path_factory.mktemp("explorer-set"))
        yield {"url": url, "token": token, "api": api, "run": run_id, "ids": ids, "make_token": make_token}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page(browser, served):
    """One signed-in tab for the module's page checks, in order."""
    # Playwright's own waits evaluate strings, which the pages' CSP (scripts from the service only) forbids
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    tab.goto(served["url"] + "/ui/runs")
    assert "/ui/login" in tab.url  # not signed in yet
    tab.fill("input[name=token]", served["token"])
    tab.click("button[type=submit]")
    tab.wait_for_url(re.compile(r"/ui/runs$"))
    yield tab
    context.close()


def thumbnails_shown(tab, selector: str) -> int:
    """Once every image of ``selector`` has settled: each one the service serves (200) is drawn, each one it refuses
    (an image that does not decode: the synthetic set has a few) is not; returns how many are drawn."""
    tab.wait_for_function(f"[...document.querySelectorAll('{selector}')].every(i => i.complete)")
    drawn = 0
    for src, width in tab.locator(selector).evaluate_all("els => els.map(e => [e.src, e.naturalWidth])"):
        assert (tab.request.get(src).status == 200) == (width > 0), src
        drawn += width > 0
    return drawn


def shot(tab, name: str) -> None:
    tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_every_page_refuses_a_browser_without_a_session(browser, served) -> None:
    url, run = served["url"], served["run"]
    sample = served["ids"][0]
    context = browser.new_context()
    tab = context.new_page()
    for path in (
        "/ui/runs",
        f"/ui/runs/{run}",
        f"/ui/runs/{run}/gallery",
        f"/ui/runs/{run}/samples/{sample}",
        f"/ui/runs/{run}/map",
    ):
        tab.goto(url + path)
        assert "/ui/login" in tab.url and f"next={path}" in tab.url, path
        assert tab.locator("input[name=token]").count() == 1
    for path in (f"/ui/runs/{run}/live.json", f"/ui/runs/{run}/map.json", f"/ui/thumbs/{sample}"):
        assert httpx.get(url + path).status_code == 401, path
    tab.fill("input[name=token]", "chx_not-a-token")
    tab.click("button[type=submit]")
    assert "unknown or revoked token" in tab.locator("#problem").inner_text()
    trainer = served["make_token"]("trainer", [run])["Authorization"][len("Bearer ") :]
    tab.fill("input[name=token]", trainer)
    tab.click("button[type=submit]")
    assert "needs an admin token" in tab.locator("#problem").inner_text()
    shot(tab, "login-refused")
    assert not [c for c in context.cookies() if c["name"] == "chexui"]
    context.close()


def test_session_cookie_is_httponly_strict_and_forms_need_csrf(page, served) -> None:
    cookie = next(c for c in page.context.cookies() if c["name"] == "chexui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # out of scripts' reach
    answer = page.request.post(served["url"] + f"/ui/runs/{served['run']}/map", form={"csrf": "forged"})
    assert answer.status == 403 and answer.json()["error"] == "csrf"
    csp = page.request.get(served["url"] + "/ui/runs").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp


def test_runs_list(page, served) -> None:
    page.goto(served["url"] + "/ui/runs")
    row = page.locator(f"tr[data-run='{served['run']}']")
    assert row.locator(".phase").inner_text().strip() == "warmup"
    assert "explorer-" in row.inner_text() and "0.0 %" in row.locator(".ratio").inner_text()
    shot(page, "runs")


def test_run_page_updates_live_while_the_run_is_curated(page, served) -> None:
    run = served["run"]
    page.goto(served["url"] + f"/ui/runs/{run}")
    page.wait_for_function("document.body.dataset.updated !== undefined")
    assert page.locator("#phase").inner_text() == "warmup"
    curation = threading.Thread(target=served["api"].offline, args=(run,))
    curation.start()
    curation.join(timeout=120)
    assert not curation.is_alive()
    # no reload: the page's poll brings the new phase, the bands and the subset ratio
    page.wait_for_function("document.getElementById('phase').textContent === 'done'", timeout=30_000)
    page.wait_for_function("document.querySelectorAll('#timeline path').length === 5")
    kept = int(page.locator("#subset-size").inner_text())
    total = int(page.locator("#samples-total").inner_text())
    assert 0 < kept < total
    counts = {b: int(page.locator(f"#band-counts td[data-band={b}]").inner_text()) for b in ("outlier", "support")}
    assert all(n > 0 for n in counts.values()), counts
    assert page.locator("#prototypes tbody tr").count() == 4
    assert page.locator("#labels .row").count() > 3 and page.locator("#labels .rare").count() >= 1
    assert page.locator("#flags tr[data-flag=near_duplicates]").count() == 1
    shot(page, "run")


def test_gallery_pages_on_the_server_and_filters_by_label(page, served) -> None:
    run = served["run"]
    page.goto(served["url"] + f"/ui/runs/{run}/gallery?limit=10")
    first = page.locator("#gallery li").evaluate_all("els => els.map(e => +e.dataset.sample)")
    assert len(first) == 10
    page.click("#next-page")
    page.wait_for_url(re.compile("after="))
    second = page.locator("#gallery li").evaluate_all("els => els.map(e => +e.dataset.sample)")
    assert len(second) == 10 and not set(first) & set(second)
    assert thumbnails_shown(page, "#gallery img") >= 1
    shot(page, "gallery")
    page.select_option("select[name=band]", "central_dropped")
    page.click("#filters button")
    page.wait_for_url(re.compile("band=central_dropped"))
    assert set(page.locator("#gallery .band").all_inner_texts()) == {"central dropped"}
    label = next(t for t in page.locator("#gallery .labels").all_inner_texts() if t).split(", ")[0]
    page.fill("input[name=label]", label)
    page.click("#filters button")
    page.wait_for_url(re.compile("label="))
    tiles = page.locator("#gallery li")
    assert tiles.count() > 0
    assert all(label in text.split(", ") for text in tiles.locator(".labels").all_inner_texts())
    assert set(tiles.locator(".band").all_inner_texts()) == {"central dropped"}
    shot(page, "gallery-filtered")


def test_sample_page_shows_its_decision_and_neighbours(page, served) -> None:
    page.locator("#gallery li a").first.click()
    page.wait_for_url(re.compile(r"/samples/\d+$"))
    assert page.locator("#decisions tbody tr").count() == 1
    assert "central dropped" in page.locator("#decisions").inner_text()
    assert page.locator("#report").inner_text().strip()
    neighbours = page.locator("#neighbours li")
    assert neighbours.count() == 12
    bands = neighbours.evaluate_all("els => els.map(e => e.className)")
    assert all(b.startswith("band-") for b in bands), bands
    assert thumbnails_shown(page, "#neighbours img") >= 1
    shot(page, "sample")


def test_embedding_map_is_made_on_request_and_drawn(page, served) -> None:
    page.goto(served["url"] + f"/ui/runs/{served['run']}/map")
    page.wait_for_selector("#make-map:not([hidden])")
    page.click("#make-map button")  # a form with the session's CSRF token
    page.wait_for_function("document.getElementById('map').dataset.points !== undefined")
    canvas = page.locator("#map")
    assert int(canvas.get_attribute("data-points")) == len(served["ids"])
    assert int(canvas.get_attribute("data-prototypes")) == 4
    page.select_option("#colour-by", "label")
    assert page.locator("#map-legend span").count() > 1
    shot(page, "map")


def test_sign_out_ends_the_session(page, served) -> None:
    page.goto(served["url"] + "/ui/runs")
    page.click("form.logout button")
    page.wait_for_url(re.compile("/ui/login"))
    page.goto(served["url"] + "/ui/runs")
    assert "/ui/login" in page.url
