"""The Celery application, configured from the service Settings (JSON only, late acks, two queues)."""

from __future__ import annotations

from celery import Celery

from service.config import Settings, get_settings

#: latency-critical: one curated batch per training step
QUEUE_CURATION = "curation"
#: heavy and slow: k-means, offline curation, scans, index builds
QUEUE_REFRESH = "refresh"

TASK_CURATE = "chexcurate.curate_manifest"
TASK_INIT_PROTOTYPES = "chexcurate.init_prototypes"
TASK_DICOM_SCAN = "chexcurate.dicom_scan"
TASK_OFFLINE = "chexcurate.offline_curation"
TASK_NEIGHBOUR_INDEX = "chexcurate.neighbour_index"
REFRESH_TASKS = (TASK_INIT_PROTOTYPES, TASK_DICOM_SCAN, TASK_OFFLINE, TASK_NEIGHBOUR_INDEX)


def make_celery(settings: Settings, include: tuple[str, ...] = ()) -> Celery:
    """The worker's app registers the tasks (``include``); the API's only sends them by name."""
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


app = make_celery(get_settings(), include=("workers.tasks",))
