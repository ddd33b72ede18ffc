"""Handing work to the Celery workers (or doing it in-process in the embedded mode, with no broker)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from kombu.exceptions import OperationalError as BrokerDown

from .config import Settings
from .errors import ApiError, ServiceUnavailable
from .lifecycle import InitPrototypes, init_or_record
from .models import Run
from .schemas.tasks import TaskAccepted, TaskStatus


class Dispatcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.celery = None
        self.redis = None
        if settings.broker_url:
            import redis

            from workers.celery_app import make_celery

            self.celery = make_celery(settings)
            self.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=5)

    @property
    def eager(self) -> bool:
        return self.celery is None

    @property
    def init_prototypes(self) -> InitPrototypes:
        """The post-warm-up k-means: with workers, asked of one (again if an earlier request looks lost or failed);
        without, run here, a failure noted on the run."""
        return self._init_here if self.celery is None else self._request_init

    def _init_here(self, run: Run) -> None:
        init_or_record(run, self.settings.step_failure_limit)

    def _request_init(self, run: Run) -> None:
        from workers.celery_app import TASK_INIT_PROTOTYPES

        requested = run.progress.get("init_requested_at")
        now = time.time()
        if requested is not None and now - float(requested) < self.settings.init_redrive_seconds:
            return
        run.progress = {**run.progress, "init_requested_at": now}  # a new dict: JSON columns track assignment
        self._send(TASK_INIT_PROTOTYPES, [run.id])

    def _send(self, name: str, args: list[Any]) -> Any:
        assert self.celery is not None
        try:
            return self.celery.send_task(name, args=args)
        except BrokerDown as exc:
            raise ServiceUnavailable(f"the task broker cannot be reached ({exc})") from exc

    def live_worker(self, timeout: float = 1.0) -> bool:
        """Whether any worker answers a broadcast ping within ``timeout`` (returns at the first answer)."""
        assert self.celery is not None
        try:
            return bool(self.celery.control.ping(timeout=timeout, limit=1))
        except Exception:  # broker gone between the checks
            return False

    def submit(self, name: str, args: list[Any]) -> TaskAccepted:
        """Queue a background task (refresh queue); the client polls ``/v1/tasks/{id}``."""
        task = self._send(name, args)
        return TaskAccepted(task_id=task.id, status_url=f"/v1/tasks/{task.id}")

    def submit_once(self, name: str, args: list[Any], key: str) -> TaskAccepted:
        """Like :meth:`submit`, but callers asking with the same ``key`` while the task may still run share
        one task (its id is kept in Redis for the visibility timeout)."""
        assert self.redis is not None
        try:
            existing = self.redis.get(key)
            if existing is None:
                accepted = self.submit(name, args)
                if self.redis.set(key, accepted.task_id, nx=True, ex=self.settings.visibility_timeout_seconds):
                    return accepted
                existing = self.redis.get(key) or accepted.task_id  # another caller's task won the race
        except ServiceUnavailable:
            raise
        except Exception as exc:  # redis.ConnectionError and timeouts alike
            raise ServiceUnavailable(f"the broker cannot be reached ({type(exc).__name__})") from exc
        task_id = existing.decode() if isinstance(existing, bytes) else str(existing)
        return TaskAccepted(task_id=task_id, status_url=f"/v1/tasks/{task_id}")

    def forget(self, key: str) -> None:
        """Drop a ``submit_once`` key, so the next ask starts a new task."""
        assert self.redis is not None
        try:
            self.redis.delete(key)
        except Exception as exc:  # redis.ConnectionError and timeouts alike
            raise ServiceUnavailable(f"the broker cannot be reached ({type(exc).__name__})") from exc

    def status(self, task_id: str) -> TaskStatus:
        assert self.celery is not None
        result = self.celery.AsyncResult(task_id)
        try:
            state, info = result.state, result.info
        except Exception as exc:  # result backend down
            raise ServiceUnavailable(f"the result backend cannot be reached ({type(exc).__name__})") from exc
        if state == "PROGRESS":
            return TaskStatus(task_id=task_id, state=state, progress=dict(info or {}))
        if state == "SUCCESS":
            answer = dict(info or {})
            if "error" in answer:
                return TaskStatus(task_id=task_id, state="FAILURE", error=answer)
            return TaskStatus(task_id=task_id, state=state, result=answer)
        if state == "FAILURE":
            return TaskStatus(task_id=task_id, state=state, error={"error": type(info).__name__, "detail": str(info)})
        return TaskStatus(task_id=task_id, state=state)

    def curate(self, run_id: int, manifest_id: str, body: bytes) -> dict[str, Any]:
        """Hand the embeddings over in Redis, queue the curated-batch task and wait a bounded time for it."""
        from workers.celery_app import TASK_CURATE

        assert self.redis is not None
        key = f"chex:embeddings:{manifest_id}:{uuid.uuid4().hex}"
        try:
            self.redis.set(key, body, ex=max(600, int(self.settings.curation_wait_seconds * 4)))
        except Exception as exc:  # redis.ConnectionError and timeouts alike
            raise ServiceUnavailable(f"the broker cannot be reached ({type(exc).__name__})") from exc
        pending = self._send(TASK_CURATE, [run_id, manifest_id, key])
        try:
            result: dict[str, Any] = pending.get(timeout=self.settings.curation_wait_seconds)
        except CeleryTimeout as exc:
            raise ServiceUnavailable(
                f"no curation worker answered within {self.settings.curation_wait_seconds:g} s; the batch stays "
                "queued: post the same embeddings again to get its answer"
            ) from exc
        except Exception as exc:  # result backend down
            raise ServiceUnavailable(f"waiting for the curation worker failed ({type(exc).__name__})") from exc
        if "error" in result:
            status, detail = int(result.pop("status")), str(result.pop("detail"))
            if status == 503:  # the step failed on the worker and may succeed when posted again
                raise ServiceUnavailable(detail)
            raise ApiError(status, str(result.pop("error")), detail, **result)
        return result
