"""``chexcurate demo`` and what it is made of: the embedded service as a process, an admin HTTP client, the
trainer as child processes. The service side never imports the trainer. The curation-value benchmark
(``bench/curation_value.py``) starts and drives its runs with the same pieces.
"""

from .admin_client import AdminApi
from .csv_files import csv_text, read_csv
from .embedded import EmbeddedService
from .run import DemoOptions, flagged_shares, run_demo

__all__ = ["AdminApi", "DemoOptions", "EmbeddedService", "csv_text", "flagged_shares", "read_csv", "run_demo"]
