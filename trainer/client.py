"""HTTP client of the curation service: manifests, embeddings, acknowledgements, unreadable samples.

Transient failures (connection errors, timeouts, 502/503/504) are retried with exponential backoff that honours the
service's ``Retry-After``; a 4xx raises :class:`ServiceError` carrying the service's error code and message at once,
because retrying a bad request cannot fix it.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay

RETRY_STATUS = {502, 503, 504}


class ServiceError(Exception):
    """The service refused a request (4xx) or stayed unavailable past the retry budget."""

    def __init__(self, status: int, code: str, detail: Any) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


class _Transient(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.status_code} from {response.request.url}")
        self.response = response


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (_Transient, httpx.TransportError))


def to_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class ServiceClient:
    """One trainer's session with the service (bearer token scoped to its runs)."""

    def __init__(
        self,
        api: str,
        token: str | None,
        *,
        timeout: float = 120.0,
        retry_for: float = 600.0,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=api, headers=headers, timeout=timeout, transport=transport)
        self.retry_for, self.max_backoff, self._sleep = retry_for, max_backoff, sleep
        self.retries = 0

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _wait(self, state: RetryCallState) -> float:
        self.retries += 1
        backoff = min(self.max_backoff, 0.5 * 2 ** (state.attempt_number - 1))
        exc = state.outcome.exception() if state.outcome else None
        hinted = _retry_after(exc.response) if isinstance(exc, _Transient) else None
        return min(self.max_backoff, hinted) if hinted is not None else backoff

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send with retries; JSON of a 2xx (None for 204), :class:`ServiceError` for a 4xx or when retries run out."""
        retrying = Retrying(
            retry=retry_if_exception(_is_transient),
            wait=self._wait,
            stop=stop_after_delay(self.retry_for),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            response = retrying(self._send, method, path, **kwargs)
        except _Transient as exc:
            raise self._error(exc.response) from exc
        except httpx.TransportError as exc:
            raise ServiceError(0, "unreachable", f"{method} {path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise self._error(response)
        return None if response.status_code == 204 or not response.content else response.json()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code in RETRY_STATUS:
            raise _Transient(response)
        return response

    @staticmethod
    def _error(response: httpx.Response) -> ServiceError:
        try:
            body = response.json()
            code, detail = str(body.get("error", "error")), body.get("detail", body)
        except (ValueError, AttributeError):
            code, detail = "error", response.text[:500]
        return ServiceError(response.status_code, code, detail)

    def run(self, run_id: int) -> dict[str, Any]:
        return self.request("GET", f"/v1/runs/{run_id}")

    def next_manifest(
        self, run_id: int, size: int | None = None, model_id: str | None = None, checkpoint_step: int | None = None
    ) -> dict[str, Any]:
        """Lease the next manifest; no ``items`` when none is free (see ``wait_seconds``) or the run is done."""
        params = {"size": size} if size else None
        body = {"model_id": model_id, "checkpoint_step": checkpoint_step}
        return self.request("POST", f"/v1/runs/{run_id}/manifests", params=params, json=body)

    def post_embeddings(self, run_id: int, manifest_id: str, features: np.ndarray) -> dict[str, Any]:
        """Warm-up: stored; curation: the curated batch (``keep``, ``bands``, prototype versions)."""
        return self.request(
            "POST",
            f"/v1/runs/{run_id}/manifests/{manifest_id}/embeddings",
            content=to_npy(features),
            headers={"Content-Type": "application/octet-stream"},
        )

    def ack(self, run_id: int, manifest_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/runs/{run_id}/manifests/{manifest_id}/ack")

    def report_unreadable(self, run_id: int, sample_id: int, reason: str, manifest_id: str | None = None) -> None:
        """Leave a sample of the manifest this trainer holds out of the run (the service checks the lease)."""
        body = {"reason": reason[:2000], **({"manifest_id": manifest_id} if manifest_id else {})}
        self.request("POST", f"/v1/runs/{run_id}/samples/{sample_id}/unreadable", json=body)
