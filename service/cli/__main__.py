"""``python -m service.cli``: the ``chexcurate`` command line."""

from . import app

app()
