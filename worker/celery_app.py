"""The Celery app: ``celery -A worker worker|beat|flower`` finds it as ``worker.app``.

Tasks are listed by module name (``include``), so nothing in ``worker`` imports ``tasks``.
Every reliability setting below has a reason written next to it.

Producers write jobs into the job store (worker/stores/jobs.py), or publish them to the intake
queue (``ARCHIVER_QUEUE``) from which each node's router stores them. A worker's Celery consumer
takes the jobs that may run now from its node's dispatcher, in the same process
(worker/dispatch/), and reads only its node's ready queue from Redis. Everything else waits in
the job store.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from typing import Any

import click
from celery import Celery, bootsteps, signals

from config import ConfigError, Settings, get_settings
from config.sentinel import is_sentinel_url
from worker import tracebacks  # noqa: F401 - its task_postrun handler frees a run's exception and frames when the run ends
from worker.contract.tasks import SWEEP_TASK
from worker.logs import install_redaction, use_json_format
from worker.sentinel import celery_options, check_fencing
from worker.services import get_accounts
from worker.stores.client import set_outage_grace

TASK_MODULES = ["tasks.archive", "tasks.sweep"]


def soft_time_limit(hard: int) -> int:
    """A tenth of the hard limit before it (at least 1 s, at most 30 s)."""
    return max(1, hard - max(1, min(30, hard // 10)))


def celery_config(settings: Settings) -> dict[str, Any]:
    # While Redis restarts, a result waits to be stored (about a retry a second) rather than lost.
    result_retries = 10 + int(settings.redis_outage_grace)
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": settings.state_url,
        # JSON only: any service in any language can publish a job, and nothing is unpickled.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": settings.result_expires,
        # Beat publishes sweeps to the intake like any producer.
        "task_default_queue": settings.queue,
        "timezone": "UTC",
        # One job per worker process at a time. Jobs reach the consumer in memory and its ready
        # queue is read without kombu's acknowledgements (worker/dispatch/service.py): the job
        # store's lease brings back a job whose run is lost (a killed worker, a lost message),
        # so no message is kept a second time in kombu's unacked hash. A worker process that dies
        # mid-job is counted by its job's record; one that keeps killing its worker is
        # dead-lettered (worker_lost).
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        # After a lost broker connection Celery lowers the prefetch for the runs still going and
        # raises it again as later messages are acknowledged: jobs are never acknowledged to
        # the broker, so it never would. The dispatcher sizes what it hands out by the
        # runs this node holds (worker/dispatch/service.py) instead.
        "worker_enable_prefetch_count_reduction": False,
        # A backstop: a pool process past this peak RSS (KiB) is replaced after its job.
        "worker_max_memory_per_child": settings.worker_max_memory_per_child or None,
        "task_reject_on_worker_lost": True,
        "broker_transport_options": {
            # An idle consumer asks Redis this often (it answers at once when work comes).
            "polling_interval": 5,
        },
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
        # Not True: on a Redis restart it kills running jobs. A job that runs on records its
        # outcome once Redis is back (our clients retry through ARCHIVER_REDIS_OUTAGE_GRACE).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Our tasks write their results with their ending, in one step (worker/stores/endings.py);
        # Celery's own writes are for anything else (a refused message's result).
        "task_ignore_result": True,
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
    # Redis Sentinel (worker/sentinel.py): what a sentinel:// URL needs, over the options above.
    for key, value in celery_options(settings).items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


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
    # What is loaded so far lives as long as the node, a hundred thousand accounts included: out
    # of the collector's reach, the full collection Celery runs before forking each pool process
    # (and every later one) skips it, and the forks share its pages instead of copying them.
    gc.freeze()
    if is_sentinel_url(get_settings().state_url):
        # Off the start's path: a Redis that is not there yet must not hold the worker up.
        url = get_settings().state_url
        threading.Thread(target=check_fencing, args=(url,), name="fencing", daemon=True).start()


@signals.worker_process_init.connect
def _pool_process(**_: Any) -> None:
    set_outage_grace(get_settings().redis_outage_grace)


@signals.celeryd_after_setup.connect
def _consume_ready_queue(sender: str = "", instance: Any = None, **_: Any) -> None:
    """Consume this node's ready queue and nothing else: Celery's consumer needs a queue, and the
    dispatcher's jobs come in memory (worker/dispatch/handoff.py); the intake is read by the
    node's router (worker/dispatch/)."""
    from worker.dispatch.service import node_name, ready

    queue = ready(get_settings().queue, node_name(instance.hostname or sender))
    queues = instance.app.amqp.queues
    queues.select_add(queue)
    for name in list(queues.consume_from):
        if name != queue.name:
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
