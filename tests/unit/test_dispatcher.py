"""A node's dispatcher on a real Redis and a real Celery app: how long it waits between steps,
the Celery messages it publishes to the node's ready queue (with the ticket a run needs), and
the wake listener that relays work arriving anywhere."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import GREEN_ID, WASSENGER_ID, Env
from tests.support import JobDesk, eventually
from worker.celery_app import create_app
from worker.contract.history import ATTEMPTS_HEADER, TICKET_HEADER, Ticket
from worker.contract.tasks import ARCHIVE_TASK, SWEEP_TASK, UNPACED
from worker.dispatch.dispatcher import (
    MAX_SLEEP,
    Dispatcher,
    WakeListener,
    run_headers,
    slot_deadline,
)
from worker.dispatch.service import ready
from worker.stores.clock import MICROS, PinnedClock
from worker.stores.jobs import DISPATCH_LEAD, Dispatch, DispatchedJob, Held, JobBody, NewJob
from worker.stores.keys import ready_queue

NODE = "w1@host#1-abc"
LOCAL_NOW = 5_000.0  # the dispatcher's monotonic clock, pinned


@pytest.fixture
def clock(archiver_env: Env) -> PinnedClock:
    clock = PinnedClock()
    archiver_env.services.use_clock(clock)
    return clock


@pytest.fixture
def app(archiver_env: Env) -> Iterator[Celery]:
    celery = create_app(archiver_env.settings)
    yield celery
    celery.close()


@pytest.fixture
def desk(archiver_env: Env) -> JobDesk:
    return JobDesk(archiver_env.services, archiver_env.accounts)  # both accounts: 10/s


def dispatcher(env: Env, app: Celery, capacity: int = 4) -> Dispatcher:
    return Dispatcher(
        env.services.jobs,
        app,
        ready(env.settings.queue, NODE),
        lambda: capacity,
        clock=lambda: LOCAL_NOW,
    )


def chat_job(n: int, account: str = GREEN_ID, provider: str = "green-api") -> dict[str, str]:
    return {"provider": provider, "account": account, "chat_id": f"7900000{n:04d}@c.us"}


def messages(env: Env) -> list[dict[str, Any]]:
    """The node's ready queue as Redis holds it, oldest first (kombu pushes on the left)."""
    raw = env.redis.lrange(ready_queue(env.settings.queue, NODE), 0, -1)
    return [json.loads(m) for m in reversed(raw)]


def payload(message: dict[str, Any]) -> list[Any]:
    return json.loads(base64.b64decode(message["body"]))


# --- how long it waits ----------------------------------------------------------------------------


def test_no_free_slot_asks_the_store_for_nothing(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock
) -> None:
    desk.put(chat_job(1))
    assert dispatcher(archiver_env, app, capacity=0).step() == MAX_SLEEP
    assert archiver_env.services.jobs.counts().active == 0
    assert messages(archiver_env) == []


def test_nothing_waiting_sleeps_the_longest_a_wake_up_pokes(
    archiver_env: Env, app: Celery, clock: PinnedClock
) -> None:
    assert dispatcher(archiver_env, app).step() == MAX_SLEEP


def test_full_slots_wait_for_a_slot_to_free(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock
) -> None:
    for n in range(3):
        desk.put(chat_job(n))
        desk.put(chat_job(n, WASSENGER_ID, "wassenger"))
    # Two slots, two accounts due now: both filled, more waits.
    assert dispatcher(archiver_env, app, capacity=2).step() == MAX_SLEEP
    assert len(messages(archiver_env)) == 2


def test_the_next_due_job_sets_the_wait_less_the_lead(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock
) -> None:
    desk.put(chat_job(1))
    desk.put(chat_job(2))
    # 10/s at a 2.5% margin, the limit idle: the next slot is 102.5 ms + a 5 ms gap away.
    wait = dispatcher(archiver_env, app).step()
    assert wait == pytest.approx(0.1075 - DISPATCH_LEAD)
    assert len(messages(archiver_env)) == 1


def test_a_wait_is_never_longer_than_the_longest_sleep(
    archiver_env: Env, app: Celery, clock: PinnedClock
) -> None:
    job = NewJob("later", UNPACED, SWEEP_TASK, "", JobBody({}), not_before=clock.seconds + 3600)
    archiver_env.services.jobs.submit([job], held=Held.KEEP)
    assert dispatcher(archiver_env, app).step() == MAX_SLEEP


def test_a_poke_wakes_a_waiting_dispatcher(archiver_env: Env, app: Celery) -> None:
    node = dispatcher(archiver_env, app)
    node.clear()
    threading.Timer(0.05, node.poke).start()
    woken = threading.Event()

    def waiting() -> None:
        node.wait(MAX_SLEEP * 4)
        woken.set()

    threading.Thread(target=waiting, daemon=True).start()
    assert woken.wait(MAX_SLEEP)  # well before its own timeout
    node.clear()
    node.wait(0)  # nothing to wait for: returns at once


# --- what it publishes ------------------------------------------------------------------------


def test_each_job_is_a_celery_message_on_the_nodes_ready_queue_with_its_ticket(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock
) -> None:
    services = archiver_env.services
    services.jobs.submit(
        [
            NewJob(
                "t-1",
                f"green-api:{GREEN_ID}",
                ARCHIVE_TASK,
                services.keys.pending(f"green-api:{GREEN_ID}", "79000000001@c.us"),
                JobBody(chat_job(1), {ATTEMPTS_HEADER: 2}, "producer@host"),
            )
        ],
        held=Held.KEEP,
    )
    node = dispatcher(archiver_env, app)
    node.step()
    [message] = messages(archiver_env)
    headers = message["headers"]
    assert (headers["task"], headers["id"], headers["origin"]) == (
        ARCHIVE_TASK,
        "t-1",
        "producer@host",
    )
    assert headers[ATTEMPTS_HEADER] == 2  # the job's history goes with it
    assert payload(message)[:2] == [[], chat_job(1)]
    assert message["properties"]["delivery_info"]["routing_key"] == ready_queue(
        archiver_env.settings.queue, NODE
    )
    ticket = Ticket.from_headers(headers)
    assert ticket is not None
    [member] = archiver_env.redis.zrange(services.keys.active, 0, -1)
    assert member == f"t-1|{ticket.token}"
    assert (ticket.account, ticket.lost, ticket.probe, ticket.holder) == (
        f"green-api:{GREEN_ID}",
        0,
        False,
        "",
    )
    assert ticket.mark == services.keys.pending(f"green-api:{GREEN_ID}", "79000000001@c.us")
    assert ticket.slot == clock.micros and ticket.deadline == LOCAL_NOW
    # Renewed by its node until its request arrives.
    assert node.handed_out == {"t-1": (member, LOCAL_NOW)}


def test_a_celery_consumer_reads_the_message_without_acknowledging_it(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock
) -> None:
    """What the node's Celery consumer does: its ready queue is read with no kombu ack, so no
    unacked copy is kept beside the job store's lease."""
    desk.put(chat_job(1), task_id="t-1")
    kwargs = archiver_env.services.jobs.record("t-1").body.kwargs  # type: ignore[union-attr]
    dispatcher(archiver_env, app).step()
    queue = ready(archiver_env.settings.queue, NODE)
    assert queue.no_ack and queue.no_declare
    with app.connection_for_read() as connection:
        message = connection.default_channel.basic_get(queue.name, no_ack=True)
        assert message is not None
        assert message.headers["id"] == "t-1" and message.headers["task"] == ARCHIVE_TASK
        assert message.decode()[1] == kwargs
        assert Ticket.from_headers(message.headers) is not None
    assert messages(archiver_env) == []
    assert not archiver_env.redis.exists("unacked")


def test_a_slot_ahead_is_carried_on_this_hosts_clock(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock
) -> None:
    desk.put(chat_job(1))
    desk.put(chat_job(2))
    node = dispatcher(archiver_env, app)
    node.step()
    clock.advance(0.1075 - DISPATCH_LEAD)  # the next slot is within the lead
    node.step()
    second = Ticket.from_headers(messages(archiver_env)[1]["headers"])
    assert second is not None
    assert second.slot - clock.micros == DISPATCH_LEAD * MICROS
    assert second.deadline == pytest.approx(LOCAL_NOW + DISPATCH_LEAD)


def test_a_job_whose_chat_is_held_is_handed_out_naming_its_holder(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock
) -> None:
    services = archiver_env.services
    desk.put(chat_job(1), task_id="holder")
    desk.put(chat_job(1), task_id="copy")  # kept: raw messages are
    node = dispatcher(archiver_env, app)
    node.step()
    clock.advance(1)
    node.step()
    tickets = [Ticket.from_headers(m["headers"]) for m in messages(archiver_env)]
    assert [t.holder for t in tickets if t is not None] == ["", "holder"]
    mark = services.keys.pending(f"green-api:{GREEN_ID}", "79000000001@c.us")
    assert archiver_env.redis.get(mark) == "holder"


def test_run_headers_carry_history_and_ticket() -> None:
    job = DispatchedJob(
        task_id="t-1",
        token="7.2",
        slot=1_800_000_000_500_000,
        lost=1,
        probe=True,
        holder="",
        account="green-api:1",
        task=ARCHIVE_TASK,
        mark="m",
        body=JobBody({}, {ATTEMPTS_HEADER: 3}),
    )
    dispatch = Dispatch([job], None, 1_800_000_000_250_000)
    deadline = slot_deadline(job, dispatch, 100.0)
    assert deadline == pytest.approx(100.25)
    headers = run_headers(job, deadline, dispatch.now_us)
    assert headers[ATTEMPTS_HEADER] == 3
    assert headers[TICKET_HEADER] == ["7.2", "green-api:1", "m", 1, job.slot, deadline, 1, "", 0]
    assert Ticket.from_headers(headers) == Ticket(
        "7.2", "green-api:1", "m", 1, job.slot, deadline, True, "", False
    )
    # A slot given at the dispatch's own moment came from an idle limit.
    idle = run_headers(job, deadline, job.slot)[TICKET_HEADER]
    assert idle[-1] == 1
    # No limit: no deadline.
    unpaced = DispatchedJob("s", "1.1", 0, 0, False, "", UNPACED, SWEEP_TASK, "", JobBody({}))
    assert slot_deadline(unpaced, dispatch, 100.0) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "x",
        ["1.1", "a", "m", 0, 0, 0.0, 0, ""],
        ["1.1", "a", "m", "lost", 0, 0.0, 0, "", 0],
    ],
)
def test_a_malformed_ticket_is_none(value: Any) -> None:
    assert Ticket.from_headers({TICKET_HEADER: value}) is None


# --- the wake listener --------------------------------------------------------------------------


@pytest.fixture
def listener(archiver_env: Env) -> Iterator[tuple[threading.Event, list[float]]]:
    """A wake listener in its thread; yields its stop event and the wakes it relayed."""
    wakes: list[float] = []
    stop = threading.Event()
    wake = WakeListener(
        archiver_env.redis, archiver_env.services.keys.wake, lambda: wakes.append(1)
    )
    thread = threading.Thread(target=wake.run, args=(stop,), daemon=True)
    thread.start()
    yield stop, wakes
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_the_wake_listener_relays_a_job_arriving_anywhere(
    archiver_env: Env, desk: JobDesk, listener: tuple[threading.Event, list[float]]
) -> None:
    _, wakes = listener
    # Once subscribed it pokes: anything published before it listened is looked at.
    eventually(lambda: len(wakes) == 1, 5, "the first poke")
    eventually(lambda: archiver_env.redis.pubsub_numsub(archiver_env.services.keys.wake)[0][1])
    desk.put(chat_job(1))  # submit.lua publishes the wake
    eventually(lambda: len(wakes) == 2, 5, "the wake relayed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_wake_listener_keeps_trying_until_redis_answers(tmp_path: Path) -> None:
    """Redis is away when the node starts (or restarts under it): the listener retries with a
    backoff, and once subscribed it pokes (a wake published meanwhile was missed) and relays."""
    port = free_port()
    # No retries of redis-py's own: every failed try reaches the listener's loop.
    client = redis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    wakes: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=WakeListener(client, "t:wake", lambda: wakes.append(1)).run,
        args=(stop,),
        daemon=True,
    )
    thread.start()
    server = None
    try:
        time.sleep(0.5)  # a few failed tries
        assert wakes == [] and thread.is_alive()
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )
        eventually(lambda: wakes, 10, "the poke once subscribed", ignoring=(redis.RedisError,))
        eventually(lambda: client.pubsub_numsub("t:wake")[0][1], 5, "the subscription")
        settled = len(wakes)
        client.publish("t:wake", "1")
        eventually(lambda: len(wakes) > settled, 5, "the wake relayed")
    finally:
        stop.set()
        thread.join(5)
        if server is not None:
            server.terminate()
            server.wait(10)
    assert not thread.is_alive()


def test_the_wake_listener_stops_when_asked(archiver_env: Env) -> None:
    stop = threading.Event()
    wake = WakeListener(
        redis.Redis.from_url(archiver_env.settings.broker_url), "t:wake", lambda: None
    )
    thread = threading.Thread(target=wake.run, args=(stop,), daemon=True)
    thread.start()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_jobs_handed_out_while_the_consumer_was_away_count_from_its_return(
    archiver_env: Env, app: Celery
) -> None:
    """A handed-out job is renewed for a while until its request arrives; a broker connection
    that dropped holds the request back, so the while starts again when the consumer returns."""
    now = [LOCAL_NOW]
    node = Dispatcher(
        archiver_env.services.jobs,
        app,
        ready(archiver_env.settings.queue, NODE),
        lambda: 4,
        clock=lambda: now[0],
    )
    node.handed_out["t-1"] = ("t-1|7.1", LOCAL_NOW)
    now[0] = LOCAL_NOW + 25
    node.consumer_restarted()
    assert node.handed_out == {"t-1": ("t-1|7.1", LOCAL_NOW + 25)}
