"""Real processes for integration tests: the launcher's building blocks under the names the tests use."""

from __future__ import annotations

from service.launcher import api_server as uvicorn_server
from service.launcher import celery_worker, free_port

__all__ = ["celery_worker", "free_port", "uvicorn_server"]
