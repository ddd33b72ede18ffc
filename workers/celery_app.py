"""The worker's Celery application: the service's queue configuration, with the tasks of ``workers.tasks``."""

from __future__ import annotations

from service.config import get_settings
from service.dispatch import make_celery

app = make_celery(get_settings(), include=("workers.tasks",))
