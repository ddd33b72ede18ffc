"""Shared bench plumbing: timing side by side and writing a section of docs/BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\nEach section is rewritten by the bench named in it; ratios are measured side by side in one run.\n"
)


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, block: int = 5) -> dict[str, list[float]]:
    """Seconds of every timed call of each callable, alternating blocks of ``block`` calls between them.

    Alternating keeps drift and noise common to all; whole blocks (first call of each untimed) keep one
    library's idle spinning threads (torch's OpenMP, OpenBLAS) from being billed to the other's first call.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats // block)):
        for name, fn in fns.items():
            fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


def write_section(key: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- key:begin -->`` and ``<!-- key:end -->``."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"<!-- {key}:begin -->\n{body.rstrip()}\n\n_Measured {stamp} on {machine()}._\n<!-- {key}:end -->"
    BENCHMARKS.parent.mkdir(parents=True, exist_ok=True)
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    pattern = re.compile(rf"<!-- {key}:begin -->.*?<!-- {key}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)


def recorded(key: str, pattern: str) -> float | None:
    """A figure recorded in section ``key`` of docs/BENCHMARKS.md: the first group of ``pattern`` (multi-line)."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else ""
    section = re.search(rf"<!-- {key}:begin -->(.*?)<!-- {key}:end -->", text, re.S)
    found = re.search(pattern, section.group(1), re.M) if section else None
    return float(found.group(1)) if found else None
