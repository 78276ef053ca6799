"""Task ``archive.sweep``: find an account's inactive chats and enqueue an archive job for each.

policy.py    which listed chats are archived, the safety bound, and the sweep's summary
finders.py   how each provider's chats and their last activity are found (FINDERS)
calls.py     listing calls behind the shared limiter, retried
journals.py  GREEN-API: whether the journals may be believed (getSettings, coverage evidence)
sweeper.py   one sweep of one account, under its lock, and a held run's confirmation
task.py      the Celery task (one account, or every account whose sweep is enabled)
"""

from tasks.sweep.policy import SweepSummary, skip_reason
from tasks.sweep.sweeper import Sweeper
from tasks.sweep.task import SweepError, archive_sweep, sweep_accounts

__all__ = [
    "SweepError",
    "SweepSummary",
    "Sweeper",
    "archive_sweep",
    "skip_reason",
    "sweep_accounts",
]
