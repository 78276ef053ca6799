"""``celery -A benchmarks.traced_app worker``: the production app (``worker.app``) with a heap probe
in every pool process, for ``benchmarks/soak_memory.py --heap|--tracemalloc`` only.

With ``SOAK_HEAP_DIR`` set, each pool process, on SIGUSR2, writes into that folder
``<pid>-<n>.heap.json``: pymalloc's own statistics (``sys._debugmallocstats``: arenas, and bytes in
used and in free blocks, before and after a full collection), what a full collection finds
unreachable, by type, and the live gc-tracked objects by type. With ``SOAK_TRACEMALLOC_FRAMES``
above 0 it also starts tracemalloc as it is forked and writes a snapshot
(``<pid>-<n>.tracemalloc``) after the collection. It writes ``<pid>.ready`` once it handles the
signal, so the benchmark never signals a process that would die of it. Nothing here is imported by
the project's own code.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from celery import signals

from worker import app

__all__ = ["app"]

HEAP_DIR = "SOAK_HEAP_DIR"
FRAMES = "SOAK_TRACEMALLOC_FRAMES"
_dumps = 0
_MALLOC_FIGURES = {
    "arenas": re.compile(r"^# arenas allocated current\s*=\s*([\d,]+)", re.M),
    "allocated_blocks": re.compile(r"^# bytes in allocated blocks\s*=\s*([\d,]+)", re.M),
    "available_blocks": re.compile(r"^# bytes in available blocks\s*=\s*([\d,]+)", re.M),
    "empty_pools": re.compile(r"^\d+ unused pools \* \d+ bytes\s*=\s*([\d,]+)", re.M),
    "total": re.compile(r"^Total\s*=\s*([\d,]+)", re.M),
}


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _malloc_stats() -> dict[str, int]:
    """pymalloc's figures, in bytes (arenas: a count). ``_debugmallocstats`` writes to the C
    stderr, so fd 2 points at a file while it runs."""
    with tempfile.TemporaryFile("w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    figures = {}
    for name, pattern in _MALLOC_FIGURES.items():
        match = pattern.search(text)
        if match:
            figures[name] = int(match.group(1).replace(",", ""))
    return figures


def _collect() -> dict[str, Any]:
    """A full collection, keeping what it found unreachable long enough to count it by type:
    garbage in reference cycles waits for the collector, and the oldest generation is
    collected rarely, so it can hold far more than what is alive."""
    counts_before = gc.get_count()
    malloc_before = _malloc_stats()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        unreachable = gc.collect()
        garbage = Counter(_type_name(obj) for obj in gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    gc.collect()  # now free what was kept for counting
    return {
        "unreachable": unreachable,
        "counts_before": counts_before,
        "malloc_before": malloc_before,
        "malloc_after": _malloc_stats(),
        "garbage": dict(garbage.most_common(30)),
    }


def _dump(_signum: int, _frame: FrameType | None) -> None:
    global _dumps
    _dumps += 1
    stem = Path(os.environ[HEAP_DIR]) / f"{os.getpid()}-{_dumps}"
    collected = _collect()  # what stays, not what a collection would free anyway
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(f"{stem}.tracemalloc")
    types = Counter(_type_name(obj) for obj in gc.get_objects())
    Path(f"{stem}.heap.json").write_text(json.dumps({"collected": collected, "types": types}))


@signals.worker_process_init.connect
def _probe(**_: Any) -> None:
    folder = os.environ.get(HEAP_DIR)
    if not folder:
        return
    frames = int(os.environ.get(FRAMES, "0"))
    if frames > 0:
        tracemalloc.start(frames)
    signal.signal(signal.SIGUSR2, _dump)
    (Path(folder) / f"{os.getpid()}.ready").touch()
