"""The admin side of the HTTP contract that the demo and the curation-value benchmark drive runs with (httpx)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np


class AdminApi:
    """The admin side of the HTTP contract that the demo and the benchmark use (httpx, admin token)."""

    def __init__(self, url: str, token: str, timeout: float = 600.0) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AdminApi:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.text[:500]}")
        return response.json()

    def create_dataset(self, name: str, root: Path) -> int:
        body = {"name": name, "root": str(Path(root).resolve())}
        return int(self._json(self.http.post("/v1/datasets", json=body))["id"])

    def upload_csv(self, dataset_id: int, text: str, synthesize_reports: bool = False) -> dict[str, Any]:
        response = self.http.post(
            f"/v1/datasets/{dataset_id}/samples",
            content=text.encode(),
            headers={"Content-Type": "text/csv"},
            params={"synthesize_reports": str(synthesize_reports).lower()},
        )
        result: dict[str, Any] = self._json(response)
        return result

    def samples(self, dataset_id: int, status: str | None = "accepted") -> list[dict[str, Any]]:
        """Every sample of the dataset (of one status), paged."""
        out: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"limit": 1000, "offset": len(out)}
            if status:
                params["status"] = status
            page = self._json(self.http.get(f"/v1/datasets/{dataset_id}/samples", params=params))
            out += page["items"]
            if not page["items"] or len(out) >= page["total"]:
                return out

    def run_pool(self, dataset_id: int, run_id: int) -> list[dict[str, Any]]:
        """The accepted samples of the dataset less those left out of the run (e.g. reported unreadable by its
        trainer): the pairs the run could use."""
        left_out = {e["sample_id"] for e in self._json(self.http.get(f"/v1/runs/{run_id}/exclusions"))}
        return [s for s in self.samples(dataset_id) if s["id"] not in left_out]

    def create_run(self, dataset_id: int, config: dict[str, Any]) -> int:
        return int(self._json(self.http.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}))["id"])

    def run(self, run_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self.http.get(f"/v1/runs/{run_id}"))
        return result

    def stats(self, run_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self.http.get(f"/v1/runs/{run_id}/stats"))
        return result

    def stats_png(self, run_id: int) -> bytes:
        response = self.http.get(f"/v1/runs/{run_id}/stats.png")
        if response.status_code != 200 or not response.content.startswith(b"\x89PNG"):
            raise RuntimeError(f"GET /v1/runs/{run_id}/stats.png: {response.status_code} {response.text[:200]}")
        return response.content

    def subset(self, run_id: int) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
        """The curated subset export: (provenance, rows, the JSONL text as served)."""
        response = self.http.get(f"/v1/runs/{run_id}/subset", params={"format": "jsonl"})
        if response.status_code != 200:
            raise RuntimeError(f"GET /v1/runs/{run_id}/subset: {response.status_code} {response.text[:200]}")
        lines = response.text.splitlines()
        return json.loads(lines[0])["provenance"], [json.loads(line) for line in lines[1:]], response.text

    def step(self, run_id: int, step: int) -> dict[str, Any] | None:
        """The replay of the manifest issued as ``step`` (items, and the stored answer once posted); None past the
        last step."""
        response = self.http.get(f"/v1/runs/{run_id}/steps/{step}")
        if response.status_code == 404:
            return None
        result: dict[str, Any] = self._json(response)
        return result

    def bulk_embeddings(self, run_id: int, sample_ids: np.ndarray, embeddings: np.ndarray) -> dict[str, Any]:
        buffer = io.BytesIO()
        np.savez(buffer, sample_id=np.asarray(sample_ids, dtype=np.int64), embedding=embeddings)
        response = self.http.post(
            f"/v1/runs/{run_id}/embeddings",
            content=buffer.getvalue(),
            headers={"Content-Type": "application/octet-stream"},
        )
        result: dict[str, Any] = self._json(response)
        return result

    def offline(self, run_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self.http.post(f"/v1/runs/{run_id}/offline"))
        return result
