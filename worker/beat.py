"""Celery beat: one sweep per account, on the schedule its policy gives.

``celery -A worker beat`` uses RedBeat (celery-redbeat): the schedule lives in Redis and a beat
holds a Redis lock while it runs, so a second beat started by mistake waits for the lock instead
of sending every sweep twice, and takes over if the first one dies. The schedule is rebuilt from
the accounts file each time beat starts; RedBeat drops entries of accounts that left the file.
(Each sweep also takes a per-account lock, so overlapping ticks skip: tasks/sweep.py.)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from redbeat import RedBeatScheduler
from redbeat.schedulers import REDBEAT_REDIS_KEY

from config import AccountRegistry, get_settings
from config.sweep import parse_crontab
from worker.services import get_accounts
from worker.stores.client import set_outage_grace, state_redis

# Named here, where beat needs it (worker never imports tasks); tasks/sweep.py registers it.
SWEEP_TASK = "archive.sweep"


def sweep_schedule(accounts: AccountRegistry) -> dict[str, dict[str, Any]]:
    """Beat entries, one per account whose sweep is enabled."""
    entries = {}
    for account in accounts:
        policy = account.sweep
        if policy is None or not policy.enabled:
            continue
        if policy.every:
            schedule: Any = timedelta(seconds=policy.every)
        else:
            schedule = parse_crontab(policy.schedule or "")
        entries[f"sweep {account.key}"] = {
            "task": SWEEP_TASK,
            "schedule": schedule,
            "kwargs": {"provider": account.provider, "account": account.id},
        }
    return entries


class SweepScheduler(RedBeatScheduler):
    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        # Beat keeps its schedule and lock through our state client, as a worker keeps its state:
        # it rides out a Redis restart for the outage grace and, under Sentinel, follows the
        # master across a failover (worker/sentinel.py). RedBeat's own client gives up on both,
        # and beat exits. RedBeat builds its client only when the app has none.
        set_outage_grace(get_settings().redis_outage_grace)
        setattr(app, REDBEAT_REDIS_KEY, state_redis())
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        # Beat sends sweeps by name and calls no provider: it reads no token.
        self.app.conf.beat_schedule = sweep_schedule(get_accounts(secrets=False))
        super().setup_schedule()
