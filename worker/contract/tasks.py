"""The tasks a worker runs, by name. Nothing else runs: a message naming any other task (one of
Celery's built-ins included) is dead-lettered when it arrives (worker/contract/envelope.py)."""

from __future__ import annotations

ARCHIVE_TASK = "archive.chat"
UNARCHIVE_TASK = "archive.unarchive"
SWEEP_TASK = "archive.sweep"

# Jobs about one chat, under the account's rate limit: the same keyword arguments, one action each.
CHAT_TASKS = frozenset({ARCHIVE_TASK, UNARCHIVE_TASK})
TASK_NAMES = frozenset({*CHAT_TASKS, SWEEP_TASK})

# The job store's name for "no account": sweeps wait for a free worker slot only, not for an
# account's rate limit. No real account key ("provider:id") can look like it.
UNPACED = "*"
