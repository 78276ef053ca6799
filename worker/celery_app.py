"""The Celery app: ``celery -A worker worker|beat|flower`` finds it as ``worker.app``.

Tasks are listed by module name (``include``), so nothing in ``worker`` imports ``tasks``.
Every reliability setting below has a reason written next to it.

Producers publish to the intake queue (``ARCHIVER_QUEUE``); a worker's Celery consumer reads only
the ready queue, which the node's dispatcher fills with jobs that may run now
(worker/dispatch/). Everything else waits in the job store (worker/stores/jobs.py).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from celery import Celery, bootsteps, signals

from config import ConfigError, Settings, get_settings
from worker.contract.tasks import SWEEP_TASK
from worker.logs import install_redaction, use_json_format
from worker.services import get_accounts
from worker.stores.client import set_outage_grace
from worker.stores.keys import ready_queue

TASK_MODULES = ["tasks.archive", "tasks.probe", "tasks.sweep"]


def soft_time_limit(hard: int) -> int:
    """A tenth of the hard limit before it (at least 1 s, at most 30 s)."""
    return max(1, hard - max(1, min(30, hard // 10)))


def restore_interval(visibility_timeout: int) -> float:
    return min(60.0, max(1.0, visibility_timeout / 10))


def celery_config(settings: Settings) -> dict[str, Any]:
    # While Redis restarts, a result waits to be stored (about a retry a second) rather than lost.
    result_retries = 10 + int(settings.redis_outage_grace)
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.state_url,
        # JSON only: any service in any language can publish a job, and nothing is unpickled.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": settings.result_expires,
        # Beat, sweeps and probes publish to the intake like every producer.
        "task_default_queue": settings.queue,
        "timezone": "UTC",
        # Acknowledge a job after it ends, one job per worker process at a time: a killed
        # worker's job is delivered again (archiving is idempotent: "already archived").
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        # A worker process that dies mid-job gives the job back; the job store counts runs that
        # never ended and dead-letters a job that keeps killing its worker (worker_lost).
        "task_reject_on_worker_lost": True,
        # kombu gives back what is not acknowledged within the visibility timeout. No countdown
        # waits in a worker's memory (the job store holds delayed work), so it only has to
        # outlast one run; a killed node's jobs come back through their leases much sooner.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            # kombu looks for expired unacknowledged jobs every interval * throttle seconds
            # (100 s by default): a tenth of the visibility timeout, at most a minute, instead.
            "unacked_restore_interval": restore_interval(settings.visibility_timeout),
            "unacked_restore_throttle": 1,
        },
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "task_time_limit": settings.task_time_limit,
        # The soft limit raises inside the task, which treats it as a transient failure; the hard
        # limit is the backstop that kills a job stuck where no exception reaches it.
        "task_soft_time_limit": soft_time_limit(settings.task_time_limit),
        # A sweep lists an account at the provider's listing rate (about 1 call/s): minutes.
        "task_annotations": {
            SWEEP_TASK: {
                "time_limit": settings.sweep_time_limit,
                "soft_time_limit": soft_time_limit(settings.sweep_time_limit),
            }
        },
        "broker_connection_retry_on_startup": True,
        # Not True: on a Redis restart it kills running jobs and acknowledges them with no
        # outcome. A job that runs on records its outcome once Redis is back (our clients
        # retry through ARCHIVER_REDIS_OUTAGE_GRACE); a copy kombu gives back meanwhile finds
        # the job's lease held and ends quietly.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "result_backend_always_retry": True,
        "result_backend_max_retries": result_retries,
        "result_backend_max_sleep_between_retries_ms": 1000,
        # Flower follows jobs through events, from "sent" to done.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Not task_track_started: Flower shows "started" from the events above, and the extra
        # result-backend write per job is a round trip nothing of ours reads.
        # Our consumer dead-letters undecodable and unknown messages instead of dropping them.
        "worker_consumer": "worker.consumer:ArchiverConsumer",
        # Beat: RedBeat keeps the schedule in Redis behind a lock (worker/beat.py).
        "beat_scheduler": "worker.beat:SweepScheduler",
        "beat_max_loop_interval": 30,
        "redbeat_redis_url": settings.state_url,
        "redbeat_redis_options": {},
        "redbeat_key_prefix": f"{settings.key_prefix}:redbeat",
    }


class SettingsRefused(ConfigError, click.ClickException):
    """Wrong ARCHIVER_* variables met while the app configures. Under `celery -A worker ...`
    (whose options are read from the configuration) click prints it as ``Error:`` and one line
    per variable, exit 2 ("cannot start", as `chat-archiver status` answers when it cannot read
    the state), instead of a traceback through Celery's loader; elsewhere it is a ConfigError."""

    exit_code = 2

    def __init__(self, error: ConfigError) -> None:
        ConfigError.__init__(self, *error.problems)
        click.ClickException.__init__(self, str(error))


def _configured() -> dict[str, Any]:
    """The app's configuration, read from ARCHIVER_* when the app first needs it (not when it is
    imported: a service that imports the producer API is not stopped by a worker setting)."""
    install_redaction()
    try:
        return celery_config(get_settings())
    except ConfigError as error:
        raise SettingsRefused(error) from None


def create_app(settings: Settings | None = None) -> Celery:
    """An app configured from ``settings``, or from the environment when it configures."""
    celery = Celery("chat-archiver", include=TASK_MODULES)
    if settings is None:
        celery.add_defaults(_configured)
    else:
        install_redaction()
        celery.conf.update(celery_config(settings))
    return celery


app = create_app()


@signals.worker_init.connect
def _check_accounts(**_: Any) -> None:
    """Load the accounts file before the first job, so a wrong file stops the worker at start."""
    set_outage_grace(get_settings().redis_outage_grace)
    try:
        get_accounts()
    except ConfigError as error:
        sys.exit(f"chat-archiver: {error}")


@signals.worker_process_init.connect
def _pool_process(**_: Any) -> None:
    set_outage_grace(get_settings().redis_outage_grace)


@signals.celeryd_after_setup.connect
def _consume_ready_queue(instance: Any = None, **_: Any) -> None:
    """Consume the ready queue and nothing else: the dispatcher fills it with jobs that may run
    now; the intake is read by the node's router (worker/dispatch/)."""
    queues = instance.app.amqp.queues
    queues.select_add(ready_queue(get_settings().queue))
    for name in list(queues.consume_from):
        if name != ready_queue(get_settings().queue):
            queues.deselect(name)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_format(logger: Any = None, **_: Any) -> None:
    if get_settings().log_format == "json":
        use_json_format(logger)


class LogFormatStep(bootsteps.Step):
    """``celery -A worker worker --log-format json``: the option the environment variable
    ARCHIVER_LOG_FORMAT also gives (beat and Flower take the variable)."""

    def __init__(self, parent: Any, log_format: str | None = None, **options: Any) -> None:
        super().__init__(parent, **options)
        if log_format == "json":
            use_json_format(logging.getLogger())
            use_json_format(logging.getLogger("celery.task"))


app.user_options["worker"].add(
    click.Option(
        ["--log-format"],
        type=click.Choice(["text", "json"]),
        default=None,
        help="text (default) or json: one JSON object per log line.",
    )
)
app.steps["worker"].add(LogFormatStep)
app.steps["consumer"].add("worker.dispatch.service:DispatchStep")
