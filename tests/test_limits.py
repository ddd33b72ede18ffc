"""The input bounds one by one: settings, allowed dataset roots, the body limit on a real server, a trainer's
unreadable report and an admin's dataset-wide exclusion (the catalogue test covers the refusals route by route)."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.auth import create_token
from service.config import Settings
from service.ingest.paths import PathRejected, RootNotAllowed, check_root
from service.ingest.rows import MalformedBody, decoded_lines, iter_jsonl, json_too_deep, unstorable_text
from service.limits import PathLimits, TextLimits
from service.main import create_app
from service.migrate import upgrade
from service.models import EpochItem, Run, RunExclusion, Sample
from tests.runs_helpers import encode, make_dataset, npy
from tests.servers import uvicorn_server

CONFIG = {"k": 2, "warmup_samples": 8, "batch_size": 4, "epochs": 2, "curation_epochs": 1}
OCTET = {"Content-Type": "application/octet-stream"}


def test_allowed_roots_read_as_a_json_list_or_a_path_list(monkeypatch) -> None:
    monkeypatch.setenv("CHEX_ALLOWED_ROOTS", '["/data", "/mnt/x"]')
    assert Settings(_env_file=None).allowed_roots == [Path("/data"), Path("/mnt/x")]  # type: ignore[call-arg]
    monkeypatch.setenv("CHEX_ALLOWED_ROOTS", "/data:/mnt/x")
    assert Settings(_env_file=None).allowed_roots == [Path("/data"), Path("/mnt/x")]  # type: ignore[call-arg]
    monkeypatch.setenv("CHEX_ALLOWED_ROOTS", "data")
    with pytest.raises(ValueError, match="must be absolute"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_only_the_embedded_default_allows_any_root_when_none_are_configured() -> None:
    embedded = Settings(database_url="sqlite:///x.db", broker_url=None, allowed_roots=[])
    assert embedded.embedded and embedded.allowed_root_dirs() is None
    for other in (
        Settings(database_url="postgresql://h/db", broker_url=None, allowed_roots=[]),
        Settings(database_url="sqlite:///x.db", broker_url="redis://h:6379/0", allowed_roots=[]),
    ):
        assert not other.embedded and other.allowed_root_dirs() == []
    configured = Settings(database_url="postgresql://h/db", allowed_roots=[Path("/data")])
    assert configured.allowed_root_dirs() == [Path("/data")]


def test_check_root_refuses_outside_the_allowed_roots_without_looking(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "ds").mkdir(parents=True)
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    assert check_root(str(allowed / "ds"), [allowed]) == str(allowed / "ds")
    for root in (str(outside), str(allowed / "escape"), "/", str(allowed / ".." / "outside")):
        with pytest.raises(RootNotAllowed) as refused:
            check_root(root, [allowed])
        assert str(tmp_path) not in refused.value.reason
    with pytest.raises(RootNotAllowed, match="no allowed dataset roots are configured"):
        check_root(str(allowed / "ds"), [])
    # a root that does not exist outside the allowed ones is refused the same way as one that does
    with pytest.raises(RootNotAllowed):
        check_root(str(outside / "missing"), [allowed])
    with pytest.raises(PathRejected, match="component of 300 bytes"):
        check_root(str(allowed / ("d" * 300)), [allowed], PathLimits())
    assert check_root(str(outside), None) == str(outside)  # the embedded default: anywhere


def test_an_unconfigured_deployment_registers_no_dataset_but_the_embedded_default_does(
    pg_url: str, tmp_path: Path
) -> None:
    sqlite = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(sqlite)
    for url, status in ((pg_url, 422), (sqlite, 201)):
        app = create_app(Settings(database_url=url, allowed_roots=[]))
        with TestClient(app) as client, app.state.sessions() as session:
            admin = {"Authorization": "Bearer " + create_token(session, "a", "admin")}
            made = client.post(
                "/v1/datasets", json={"name": f"d-{uuid.uuid4().hex[:6]}", "root": str(tmp_path)}, headers=admin
            )
            assert made.status_code == status, made.text
            if status == 422:
                assert made.json()["error"] == "root_not_allowed" and "CHEX_ALLOWED_ROOTS" in made.json()["detail"]
        app.state.engine.dispose()


def test_jsonl_bounds_depth_digits_and_constants_per_row() -> None:
    lines = [
        '{"external_id": "a", "meta": ' + "[" * 9 + "]" * 9 + "}\n",
        '{"external_id": "b", "n": ' + "7" * 31 + "}\n",
        '{"external_id": "c", "n": -' + "7" * 30 + "}\n",
        '{"external_id": "d", "x": Infinity}\n',
        '{"external_id": "e", "x": "[[[[[[[[[[ in a string"}\n',
    ]
    rows = list(iter_jsonl(lines, TextLimits(json_depth=8, json_int_digits=30)))
    assert [r.error for r in rows] == [
        "JSON nested deeper than 8 levels",
        "an integer has more than 30 digits",
        None,
        "Infinity is not a JSON number",
        None,
    ]
    assert not json_too_deep('{"a": "}}}}{{{{{{{{{{\\"[[[["}', 2)


def test_lines_over_the_limit_and_encoded_surrogates() -> None:
    with pytest.raises(MalformedBody, match="line longer than 1024 bytes") as long:
        list(decoded_lines([b"a\n", b"b" * 600, b"c" * 600, b"\n"], line_bytes=1024))
    assert long.value.line == 2
    (text,) = decoded_lines(["bad \ud800 report".encode("utf-8", "surrogatepass")])
    assert unstorable_text({"report": text}) == "a lone surrogate (U+D800)"
    assert unstorable_text(["fine", {"k": ["a\x00"]}]) == "a NUL character"
    with pytest.raises(MalformedBody, match="not valid UTF-8"):
        list(decoded_lines([b"\xff\n"]))


def test_a_declared_300_mib_json_body_is_refused_before_it_is_read(pg_url: str) -> None:
    """On a real server: the headers alone get the 413; the body is never read (the socket is closed after it)."""
    with uvicorn_server({"CHEX_DATABASE_URL": pg_url}) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            started = time.monotonic()
            head = (
                f"POST /v1/runs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {300 << 20}\r\nAuthorization: Bearer x\r\n\r\n"
            )
            conn.sendall(head.encode() + b"{" * (1 << 16))
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
            elapsed = time.monotonic() - started
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 413"), answer[:300]
        assert b'"error":"body_too_large"' in rest and b'"limit":1048576' in rest
        assert elapsed < 5


@pytest.fixture
def run_with_lease(client, db, admin, make_token):
    dataset_id, ids = make_dataset(db, 24)
    run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG}, headers=admin).json()["id"]
    other = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG}, headers=admin).json()["id"]
    trainer = make_token("trainer", [run_id])
    lease = client.post(f"/v1/runs/{run_id}/manifests", headers=trainer).json()
    return dataset_id, run_id, other, trainer, lease


def test_a_trainer_leaves_out_only_a_sample_it_holds_and_only_of_its_run(client, db, admin, run_with_lease) -> None:
    dataset_id, run_id, other, trainer, lease = run_with_lease
    held = [i["sample_id"] for i in lease["items"]]
    url = f"/v1/runs/{run_id}/samples/{held[1]}/unreadable"
    body = {"reason": "truncated PNG", "manifest_id": lease["manifest_id"]}
    assert client.post(url, json=body, headers=trainer).status_code == 204
    assert client.post(url, json=body, headers=trainer).status_code == 204  # a retried report is a no-op
    db.expire_all()
    assert db.get(Sample, held[1]).status == "accepted"  # the dataset is untouched
    assert db.get(RunExclusion, (run_id, held[1])).source == "trainer"
    assert db.get(RunExclusion, (other, held[1])) is None
    rest = [i for i in held if i != held[1]]
    posted = client.post(
        f"/v1/runs/{run_id}/manifests/{lease['manifest_id']}/embeddings",
        content=npy(encode(rest)),
        headers={**trainer, **OCTET},
    )
    assert posted.status_code == 200 and posted.json()["stored"] == len(rest)
    # now it holds no lease on the next sample it names: refused, and nothing changes
    answer = client.post(f"/v1/runs/{run_id}/samples/{held[2]}/unreadable", json={}, headers=trainer)
    assert answer.status_code == 409 and answer.json()["error"] == "not_leased"
    db.expire_all()
    assert db.get(RunExclusion, (run_id, held[2])) is None
    # the rest of the warm-up, then the run's curation epoch leaves the sample out
    second = client.post(f"/v1/runs/{run_id}/manifests", headers=trainer).json()
    ids = [i["sample_id"] for i in second["items"]]
    url = f"/v1/runs/{run_id}/manifests/{second['manifest_id']}/embeddings"
    assert client.post(url, content=npy(encode(ids)), headers={**trainer, **OCTET}).status_code == 200
    db.expire_all()
    assert db.get(Run, run_id).phase == "curation"
    curation = set(db.scalars(select(EpochItem.sample_id).where(EpochItem.run_id == run_id, EpochItem.epoch == 1)))
    assert len(curation) == 23 and held[1] not in curation
    # another run on the dataset still has it
    stats = client.get(f"/v1/runs/{other}/stats", headers=admin).json()
    assert (
        stats["samples_total"] == 24
        and client.get(f"/v1/runs/{run_id}/stats", headers=admin).json()["samples_total"] == 23
    )


def test_an_admin_excludes_samples_from_the_dataset(client, db, admin, run_with_lease) -> None:
    dataset_id, run_id, other, trainer, lease = run_with_lease
    pending = db.scalars(
        select(EpochItem.sample_id).where(EpochItem.run_id == other, EpochItem.state == "pending")
    ).first()
    answer = client.post(
        f"/v1/datasets/{dataset_id}/exclusions", json={"sample_ids": [pending], "reason": "corrupt"}, headers=admin
    )
    assert answer.status_code == 200 and answer.json() == {"excluded": 1, "runs": sorted([run_id, other])}
    db.expire_all()
    sample = db.get(Sample, pending)
    assert (sample.status, sample.rejection_reason) == ("unreadable", "corrupt")
    states = set(db.scalars(select(EpochItem.state).where(EpochItem.sample_id == pending, EpochItem.run_id == other)))
    assert states == {"done"}
