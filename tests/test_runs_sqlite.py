"""The embedded default: the same run lifecycle on SQLite (migrated by Alembic), no Postgres involved."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.auth import create_token
from service.config import Settings
from service.migrate import upgrade
from tests.runs_helpers import make_dataset
from tests.test_runs_lifecycle import CONFIG, drive


def test_run_lifecycle_on_sqlite(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url))
    with TestClient(app) as client, app.state.sessions() as db:
        dataset_id, ids = make_dataset(db, 60)
        admin = {"Authorization": "Bearer " + create_token(db, "a", "admin")}
        run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": CONFIG}, headers=admin).json()["id"]
        answers = drive(client, run_id, admin)
        epochs = {a["manifest"]["epoch"] for a in answers}
        assert epochs == {0, 1, 2, 3}
        curated = [a for a in answers if a["manifest"]["phase"] == "curation"]
        assert sorted(i for a in curated for i in a["ids"]) == sorted(ids)
        assert [a["answer"]["prototype_version"] for a in curated] == list(range(1, len(curated) + 1))
    app.state.engine.dispose()


def test_fully_leased_epoch_answers_wait_seconds_on_sqlite(tmp_path) -> None:
    """SQLite hands timestamps back without a zone: the 'nothing free, ask again in' answer must still work."""
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url, lease_seconds=30))
    with TestClient(app) as client, app.state.sessions() as db:
        dataset_id, _ = make_dataset(db, 20)
        admin = {"Authorization": "Bearer " + create_token(db, "a", "admin")}
        config = {**CONFIG, "warmup_samples": 8, "batch_size": 8}
        run_id = client.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}, headers=admin).json()["id"]
        first = client.post(f"/v1/runs/{run_id}/manifests", headers=admin)
        assert first.status_code == 200 and len(first.json()["items"]) == 8
        empty = client.post(f"/v1/runs/{run_id}/manifests", headers=admin)
        assert empty.status_code == 200, empty.text
        assert empty.json()["items"] == [] and 25 < empty.json()["wait_seconds"] <= 30
        run = client.get(f"/v1/runs/{run_id}", headers=admin).json()
        assert (run["epoch_size"], run["epoch_done"]) == (8, 0)
    app.state.engine.dispose()
