"""The trainer and its evaluation run as child processes, as they would against a deployed service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise ValueError("no JSON line in the output")


def run_child(args: Sequence[str], env: dict[str, str] | None = None) -> str:
    """Run a Python module as a child process; its stderr (progress bars) passes through, stdout is returned."""
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} exited with {proc.returncode}:\n{proc.stdout[-2000:]}")
    return proc.stdout
