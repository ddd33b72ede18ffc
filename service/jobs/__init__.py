"""Jobs over stored data, run by a worker task (or in the request where tasks run in-process).

Each job takes a ``sessionmaker`` (it opens its own transactions, since a job may take minutes), reports
``progress(stage, done, total)`` where it is long, keeps ``Run.progress`` current for the admin statistics, and
raises ``service.errors.ApiError`` for what it cannot work on, so an in-process call answers with the right 4xx
and a worker's answer carries the same error back (docs/DESIGN.md, "Dispatch").
"""
