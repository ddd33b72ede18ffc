"""Where work runs: in the API process, or queued for a Celery worker. This module alone decides.

With no broker configured (the embedded default) ``Dispatcher`` runs every job in the request that asks for it.
With one, ``Queued`` sends the curated batches, the warm-up k-means and the long jobs (offline curation, DICOM
scans in the background, neighbour index builds) to workers by task name, and answers the others itself. The
routes call one method per job and answer what it returns: the result, or a ``TaskAccepted`` to poll. The
worker side registers the tasks under these names (``workers.tasks``), so the API never imports the worker's
Celery app (docs/DESIGN.md, "Dispatch").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerDown
from numpy.typing import NDArray
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings
from .errors import ApiError, ServiceUnavailable, from_envelope, is_envelope
from .explorer.embedding_map import cached_map, make_map, map_path
from .handover import hand_over, wait_reply
from .ingest import run_dicom_scan
from .ingest.importer import run_import
from .jobs.neighbours import IndexState, NeighbourIndexCache
from .jobs.offline import run_offline_curation
from .models import Run
from .runs.posts import apply_embeddings
from .runs.schedule import init_or_record
from .schemas.datasets import DicomScanRequest, DicomScanResult
from .schemas.imports import ImportRequest, ImportResult
from .schemas.tasks import TaskAccepted, TaskStatus
from .stages import add_stages, stage

#: latency-critical: one curated batch per training step
QUEUE_CURATION = "curation"
#: heavy and slow: k-means, offline curation, scans, index builds
QUEUE_REFRESH = "refresh"

TASK_CURATE = "chexcurate.curate_manifest"
TASK_INIT_PROTOTYPES = "chexcurate.init_prototypes"
TASK_DICOM_SCAN = "chexcurate.dicom_scan"
TASK_OFFLINE = "chexcurate.offline_curation"
TASK_NEIGHBOUR_INDEX = "chexcurate.neighbour_index"
TASK_IMPORT = "chexcurate.dataset_import"
TASK_EMBEDDING_MAP = "chexcurate.embedding_map"
REFRESH_TASKS = (
    TASK_INIT_PROTOTYPES,
    TASK_DICOM_SCAN,
    TASK_OFFLINE,
    TASK_NEIGHBOUR_INDEX,
    TASK_IMPORT,
    TASK_EMBEDDING_MAP,
)


def make_celery(settings: Settings, include: tuple[str, ...] = ()) -> Celery:
    """The Celery app of both sides: the worker's registers the tasks (``include``), the API's only sends them."""
    app = Celery(
        "chexcurate",
        broker=settings.broker_url or "memory://",
        backend=settings.result_backend or settings.broker_url or "cache+memory://",
        include=list(include),
    )
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # a task is acknowledged after it finished, and re-queued if its worker dies mid-way
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        result_expires=3600,
        task_default_queue=QUEUE_REFRESH,
        task_routes={
            TASK_CURATE: {"queue": QUEUE_CURATION},
            **{name: {"queue": QUEUE_REFRESH} for name in REFRESH_TASKS},
        },
        broker_connection_retry_on_startup=True,
        task_always_eager=settings.broker_url is None,
        task_eager_propagates=True,
    )
    return app


def make_dispatcher(settings: Settings, sessions: sessionmaker[Session]) -> Dispatcher:
    return Queued(settings, sessions) if settings.broker_url else Dispatcher(settings, sessions)


class Dispatcher:
    """Every job in this process, in the request that asks for it (no broker: the embedded default)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings, self.sessions = settings, sessions
        #: per-run FAISS indexes; files under ``neighbour_index_dir`` are shared with the workers
        self.neighbour_indexes = NeighbourIndexCache(settings.neighbour_index_dir)

    def init_prototypes(self, run: Run) -> None:
        """The post-warm-up k-means (``runs.schedule.InitPrototypes``): here, a failure noted on the run."""
        init_or_record(run, self.settings.step_failure_limit)

    def apply_embeddings(
        self, session: Session, run_id: int, manifest_id: str, arr: NDArray, phase: str
    ) -> dict[str, Any]:
        """A manifest's parsed embeddings stored, and curated in a curation phase; the answer."""
        return apply_embeddings(
            session, run_id, manifest_id, arr, self.init_prototypes, self.settings.step_failure_limit
        )

    def offline_curation(self, run_id: int) -> dict[str, Any] | TaskAccepted:
        return run_offline_curation(self.sessions, run_id)

    def dicom_scan(
        self, session: Session, dataset_id: int, root: Path, request: DicomScanRequest, background: bool
    ) -> DicomScanResult | TaskAccepted:
        try:
            return run_dicom_scan(
                session,
                dataset_id,
                root,
                request,
                limits=self.settings.path_limits(),
                text_limits=self.settings.text_limits(),
            )
        except BaseException:
            session.rollback()
            raise

    def dataset_import(
        self, session: Session, dataset_id: int, root: Path, request: ImportRequest, background: bool
    ) -> ImportResult | TaskAccepted:
        """A public set imported from its published layout, here (rolled back on any error)."""
        return run_import(
            session,
            dataset_id,
            root,
            request,
            paths=self.settings.path_limits(),
            text=self.settings.text_limits(),
        )

    def neighbour_index(self, run_id: int) -> IndexState | TaskAccepted:
        """The run's current neighbour index, built here if it is not yet."""
        return self.neighbour_indexes.get(self.sessions, run_id)

    def embedding_map(self, run_id: int) -> dict[str, Any] | TaskAccepted:
        """The run's embedding map (explorer), made here if it is not cached yet."""
        return make_map(self.sessions, run_id, self.settings.explorer_cache_dir)

    def task_status(self, task_id: str) -> TaskStatus:
        raise ApiError(404, "no_workers", "this deployment runs tasks in-process: there are no background tasks")

    def readiness(self) -> dict[str, str]:
        """What /readyz reports besides the database; raises ServiceUnavailable when not ready."""
        return {"broker": "embedded (eager tasks)", "workers": "embedded (in this process)"}


class Queued(Dispatcher):
    """Curated batches, the warm-up k-means and the long jobs on Celery workers, sent by task name."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        super().__init__(settings, sessions)
        self.celery = make_celery(settings)
        self.redis = redis.Redis.from_url(settings.broker_url or "", socket_timeout=5)
        #: for the blocking wait on a worker's answer, which may take up to ``curation_wait_seconds``
        self.replies = redis.Redis.from_url(
            settings.broker_url or "", socket_timeout=settings.curation_wait_seconds + 5
        )

    def init_prototypes(self, run: Run) -> None:
        """Asked of a worker, again if an earlier request looks lost (older than ``init_redrive_seconds``)."""
        requested = run.progress.get("init_requested_at")
        now = time.time()
        if requested is not None and now - float(requested) < self.settings.init_redrive_seconds:
            return
        run.progress = {**run.progress, "init_requested_at": now}  # a new dict: JSON columns track assignment
        self._send(TASK_INIT_PROTOTYPES, [run.id])

    def apply_embeddings(
        self, session: Session, run_id: int, manifest_id: str, arr: NDArray, phase: str
    ) -> dict[str, Any]:
        """A curation phase's batch goes to a worker (the API waits a bounded time for it); warm-up posts are
        stored here."""
        if phase != "curation":
            return super().apply_embeddings(session, run_id, manifest_id, arr, phase)
        session.close()  # do not hold a pooled connection while waiting for the worker
        ttl = self.settings.handover_ttl_seconds
        with stage("hand-over"):
            handover = self._broker(lambda: hand_over(self.redis, manifest_id, arr, ttl))
        with stage("dispatch"):
            self._send(TASK_CURATE, [run_id, manifest_id, handover.as_arg()], ignore_result=True)
        with stage("wait for worker"):
            try:
                reply = wait_reply(self.replies, handover, self.settings.curation_wait_seconds)
            except Exception as exc:  # broker down while waiting
                raise ServiceUnavailable(f"waiting for the curation worker failed ({type(exc).__name__})") from exc
        if reply is None:
            raise ServiceUnavailable(
                f"no curation worker answered within {self.settings.curation_wait_seconds:g} s; the batch stays "
                "queued: post the same embeddings again to get its answer"
            )
        add_stages(reply.get("stages", {}), "worker.")
        if "unavailable" in reply:  # the worker lost its database or broker mid-step: nothing was committed
            raise ServiceUnavailable(f"the curation worker could not finish the step ({reply['unavailable']})")
        result: dict[str, Any] = reply["answer"]
        if is_envelope(result):
            raise from_envelope(result)
        return result

    def offline_curation(self, run_id: int) -> dict[str, Any] | TaskAccepted:
        return self._submit(TASK_OFFLINE, [run_id])

    def dicom_scan(
        self, session: Session, dataset_id: int, root: Path, request: DicomScanRequest, background: bool
    ) -> DicomScanResult | TaskAccepted:
        if not background:
            return super().dicom_scan(session, dataset_id, root, request, background)
        return self._submit(TASK_DICOM_SCAN, [dataset_id, request.model_dump()])

    def dataset_import(
        self, session: Session, dataset_id: int, root: Path, request: ImportRequest, background: bool
    ) -> ImportResult | TaskAccepted:
        if not background:
            return super().dataset_import(session, dataset_id, root, request, background)
        return self._submit(TASK_IMPORT, [dataset_id, request.model_dump()])

    def neighbour_index(self, run_id: int) -> IndexState | TaskAccepted:
        """The run's current index when a worker has built it (or it is in memory); else the (shared) task
        building it."""
        key, state = self.neighbour_indexes.cached(self.sessions, run_id)
        if state is not None:
            return state
        task_key = f"chex:neighbour-index:{key.filename('task')}"
        return self._shared_task(TASK_NEIGHBOUR_INDEX, run_id, task_key, "index_failed", "neighbour index")

    def embedding_map(self, run_id: int) -> dict[str, Any] | TaskAccepted:
        """The cached map of the run's current rows, or the (shared) worker task making it."""
        found = cached_map(self.sessions, run_id, self.settings.explorer_cache_dir)
        if found is not None:
            return found
        task_key = f"chex:embedding-map:{map_path(self.sessions, run_id, self.settings.explorer_cache_dir).name}"
        return self._shared_task(TASK_EMBEDDING_MAP, run_id, task_key, "map_failed", "embedding map")

    def _shared_task(self, name: str, run_id: int, task_key: str, code: str, what: str) -> TaskAccepted:
        """The task making the run's ``what`` from its current rows, shared by every caller (``task_key`` names
        those rows). A task that failed over these very rows is a 409 ``code`` naming why, not 202 for ever."""
        accepted = self._submit_once(name, [run_id], task_key)
        done = self.task_status(accepted.task_id)
        if done.state == "FAILURE":
            # Asking again would only fail again: say why instead. Other rows (e.g. after a repair) get a new key.
            error = done.error or {}
            if not is_envelope(error):  # the task itself broke (not the rows): the next ask starts a new one
                self._forget(task_key)
            raise ApiError(
                409,
                code,
                f"building run {run_id}'s {what} failed: {error.get('error')}: {error.get('detail')}",
                reason=error,
            )
        return accepted

    def task_status(self, task_id: str) -> TaskStatus:
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

    def readiness(self) -> dict[str, str]:
        try:
            redis.Redis.from_url(self.settings.broker_url or "", socket_timeout=2).ping()
        except Exception as exc:
            raise ServiceUnavailable(f"broker: {type(exc).__name__}") from exc
        if not self._live_worker():
            raise ServiceUnavailable("workers: no Celery worker answered a ping; start one (chexcurate worker)")
        return {"broker": "ok", "workers": "ok"}

    def _live_worker(self, timeout: float = 1.0) -> bool:
        """Whether any worker answers a broadcast ping within ``timeout`` (returns at the first answer)."""
        try:
            return bool(self.celery.control.ping(timeout=timeout, limit=1))
        except Exception:  # broker gone between the checks
            return False

    def _send(self, name: str, args: list[Any], ignore_result: bool = False) -> Any:
        """Send a task by name; ``ignore_result``: its answer comes another way, so the API neither subscribes to
        a result channel for it (one per task, never released) nor has the worker store one."""
        try:
            return self.celery.send_task(name, args=args, ignore_result=ignore_result)
        except BrokerDown as exc:
            raise ServiceUnavailable(f"the task broker cannot be reached ({exc})") from exc

    def _submit(self, name: str, args: list[Any]) -> TaskAccepted:
        """Queue a background task (refresh queue); the client polls ``/v1/tasks/{id}``."""
        task = self._send(name, args)
        return TaskAccepted(task_id=task.id, status_url=f"/v1/tasks/{task.id}")

    def _submit_once(self, name: str, args: list[Any], key: str) -> TaskAccepted:
        """Like ``_submit``, but callers asking with the same ``key`` while the task may still run share one task
        (its id is kept in Redis for the visibility timeout)."""

        def shared() -> str:
            existing = self.redis.get(key)
            if existing is None:
                accepted = self._submit(name, args)
                if self.redis.set(key, accepted.task_id, nx=True, ex=self.settings.visibility_timeout_seconds):
                    return accepted.task_id
                existing = self.redis.get(key) or accepted.task_id  # another caller's task won the race
            return existing.decode() if isinstance(existing, bytes) else str(existing)

        task_id = self._broker(shared)
        return TaskAccepted(task_id=task_id, status_url=f"/v1/tasks/{task_id}")

    def _forget(self, key: str) -> None:
        """Drop a ``_submit_once`` key, so the next ask starts a new task."""
        self._broker(lambda: self.redis.delete(key))

    @staticmethod
    def _broker(call: Any) -> Any:
        """``call()`` on the broker's Redis; its failure (connection, timeout) is a 503."""
        try:
            return call()
        except ServiceUnavailable:
            raise
        except Exception as exc:  # redis.ConnectionError and timeouts alike
            raise ServiceUnavailable(f"the broker cannot be reached ({type(exc).__name__})") from exc
