"""The tasks a worker runs, by name. Nothing else runs: a message naming any other task (one of
Celery's built-ins included) is dead-lettered when it arrives (worker/contract/envelope.py)."""

from __future__ import annotations

ARCHIVE_TASK = "archive.chat"
SWEEP_TASK = "archive.sweep"
PROBE_TASK = "archive.probe"

TASK_NAMES = frozenset({ARCHIVE_TASK, SWEEP_TASK, PROBE_TASK})

# The job store's name for "no account": sweeps and probes wait for a free worker slot only, not
# for an account's rate limit. No real account key ("provider:id") can look like it.
UNPACED = "*"
