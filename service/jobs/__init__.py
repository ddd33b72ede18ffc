"""Long-running jobs over stored data, run by a worker task (or inline in the embedded default).

Each job takes a ``sessionmaker`` and a run id, reports ``progress(stage, done, total)``, keeps
``Run.progress`` current for the admin statistics, and raises ``service.errors.ApiError`` for a run it
cannot work on, so an inline call answers with the right 4xx.
"""

from .offline import OFFLINE_MANIFEST, run_offline_curation
from .progress import ProgressCallback, ProgressRecorder

__all__ = ["OFFLINE_MANIFEST", "ProgressCallback", "ProgressRecorder", "run_offline_curation"]
