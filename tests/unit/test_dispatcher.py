"""A node's dispatcher on a real Redis and a real Celery app: how long it waits between steps,
the Celery messages it hands to the node's consumer (with the ticket a run needs), and the wake
listener that relays work arriving anywhere."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Message
from kombu.exceptions import MessageStateError
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import GREEN_ID, WASSENGER_ID, Env
from tests.support import JobDesk, eventually
from tests.unit.conftest import Fill
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
from worker.dispatch.handoff import Handoff
from worker.dispatch.service import DispatchStep
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


class Consumer:
    """A node's Celery consumer as the handoff sees it: its loop runs a callback at once, and
    its task handler keeps each message it is given."""

    def __init__(self) -> None:
        self.received: list[Message] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        callback()


@pytest.fixture
def consumer() -> Consumer:
    return Consumer()


def dispatcher(env: Env, app: Celery, consumer: Consumer, capacity: int = 4) -> Dispatcher:
    handoff = Handoff(ready_queue(env.settings.queue, NODE))
    handoff.attach(consumer, consumer.received.append)
    return Dispatcher(env.services.jobs, app, handoff, lambda: capacity, clock=lambda: LOCAL_NOW)


def chat_job(n: int, account: str = GREEN_ID, provider: str = "green-api") -> dict[str, str]:
    return {"provider": provider, "account": account, "chat_id": f"7900000{n:04d}@c.us"}


# --- how long it waits ----------------------------------------------------------------------------


def test_no_free_slot_asks_the_store_for_nothing(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock, consumer: Consumer
) -> None:
    desk.put(chat_job(1))
    assert dispatcher(archiver_env, app, consumer, capacity=0).step() == MAX_SLEEP
    assert archiver_env.services.jobs.counts().active == 0
    assert consumer.received == []


def test_nothing_waiting_sleeps_the_longest_a_wake_up_pokes(
    archiver_env: Env, app: Celery, clock: PinnedClock, consumer: Consumer
) -> None:
    assert dispatcher(archiver_env, app, consumer).step() == MAX_SLEEP


def test_full_slots_wait_for_a_slot_to_free(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock, consumer: Consumer
) -> None:
    for n in range(3):
        desk.put(chat_job(n))
        desk.put(chat_job(n, WASSENGER_ID, "wassenger"))
    # Two slots, two accounts due now: both filled, more waits.
    assert dispatcher(archiver_env, app, consumer, capacity=2).step() == MAX_SLEEP
    assert len(consumer.received) == 2


def test_the_next_due_job_sets_the_wait_less_the_lead(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock, consumer: Consumer
) -> None:
    desk.put(chat_job(1))
    desk.put(chat_job(2))
    # 10/s at a 2.5% margin, the limit idle: the next slot is 102.5 ms + a 25 ms gap away.
    wait = dispatcher(archiver_env, app, consumer).step()
    assert wait == pytest.approx(0.1275 - DISPATCH_LEAD)
    assert len(consumer.received) == 1


def test_a_wait_is_never_longer_than_the_longest_sleep(
    archiver_env: Env, app: Celery, clock: PinnedClock, consumer: Consumer
) -> None:
    job = NewJob("later", UNPACED, SWEEP_TASK, "", JobBody({}), not_before=clock.seconds + 3600)
    archiver_env.services.jobs.submit([job], held=Held.KEEP)
    assert dispatcher(archiver_env, app, consumer).step() == MAX_SLEEP


def test_a_poke_wakes_a_waiting_dispatcher(
    archiver_env: Env, app: Celery, consumer: Consumer
) -> None:
    node = dispatcher(archiver_env, app, consumer)
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
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock, consumer: Consumer
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
    node = dispatcher(archiver_env, app, consumer)
    node.step()
    [message] = consumer.received
    headers = message.headers
    assert (headers["task"], headers["id"], headers["origin"]) == (
        ARCHIVE_TASK,
        "t-1",
        "producer@host",
    )
    assert headers[ATTEMPTS_HEADER] == 2  # the job's history goes with it
    assert message.decode()[:2] == [[], chat_job(1)]
    assert message.delivery_info["routing_key"] == ready_queue(archiver_env.settings.queue, NODE)
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


def test_the_message_is_one_celery_would_publish(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock, consumer: Consumer
) -> None:
    """What the node's Celery consumer reads: the body and properties Celery's API made, in
    the serializer the worker accepts."""
    desk.put(chat_job(1), task_id="t-1")
    kwargs = archiver_env.services.jobs.record("t-1").body.kwargs  # type: ignore[union-attr]
    dispatcher(archiver_env, app, consumer).step()
    [message] = consumer.received
    assert message.content_type == "application/json" and isinstance(message.body, bytes)
    assert message.decode() == [
        [],
        kwargs,
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    assert message.properties["correlation_id"] == "t-1"
    assert message.headers["ignore_result"] is True


def test_messages_wait_while_the_consumer_is_away_and_arrive_in_order(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock, consumer: Consumer
) -> None:
    for n in range(3):
        desk.put(chat_job(n), task_id=f"t-{n}")
        desk.put(chat_job(n, WASSENGER_ID, "wassenger"), task_id=f"w-{n}")
    node = dispatcher(archiver_env, app, consumer)
    node.handoff.detach()
    node.step()
    clock.advance(0.2)
    node.step()
    assert consumer.received == [] and len(node.handoff) == 4
    # Their node renews their leases while they wait.
    active = archiver_env.redis.zrange(archiver_env.services.keys.active, 0, -1)
    assert sorted(node.handoff.members()) == sorted(active)
    node.handoff.attach(consumer, consumer.received.append)
    assert [m.headers["id"] for m in consumer.received] == ["t-0", "w-0", "t-1", "w-1"]
    assert len(node.handoff) == 0


def test_a_message_the_consumer_refuses_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[str] = []

    def handler(message: Message) -> None:
        if message.headers["id"] == "bad":
            raise ValueError("refused")
        received.append(message.headers["id"])

    handoff = Handoff("ready")
    handoff.put([(f"{i}|1", Message(headers={"id": i})) for i in ("a", "bad", "b")])
    handoff.attach(Consumer(), handler)
    assert received == ["a", "b"] and handoff.members() == []
    assert "the consumer refused job bad" in caplog.text


def test_a_slot_ahead_is_carried_on_this_hosts_clock(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock, consumer: Consumer
) -> None:
    desk.put(chat_job(1))
    desk.put(chat_job(2))
    node = dispatcher(archiver_env, app, consumer)
    node.step()
    clock.advance(0.1275 - DISPATCH_LEAD)  # the next slot is within the lead
    node.step()
    second = Ticket.from_headers(consumer.received[1].headers)
    assert second is not None
    assert second.slot - clock.micros == DISPATCH_LEAD * MICROS
    assert second.deadline == pytest.approx(LOCAL_NOW + DISPATCH_LEAD)


def test_a_job_whose_chat_is_held_is_handed_out_naming_its_holder(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock, consumer: Consumer
) -> None:
    services = archiver_env.services
    desk.put(chat_job(1), task_id="holder")
    desk.put(chat_job(1), task_id="copy")  # kept: raw messages are
    node = dispatcher(archiver_env, app, consumer)
    node.step()
    clock.advance(1)
    node.step()
    tickets = [Ticket.from_headers(m.headers) for m in consumer.received]
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


def test_a_node_without_celerys_event_loop_is_refused_in_one_line() -> None:
    class Gevent:  # what Celery's consumer has under eventlet or gevent: no hub
        hub = None

    with pytest.raises(SystemExit) as refused:
        DispatchStep(parent=Gevent()).start(Gevent())
    assert str(refused.value) == (
        "chat-archiver: a worker node needs the prefork, threads or solo pool"
    )


class ClosingHub(Consumer):
    """A consumer's hub as a lost broker connection resets it: callbacks wait until the loop
    runs, and a reset runs its on_close callbacks, then the pending ones."""

    def __init__(self) -> None:
        super().__init__()
        self.on_close: set[Callable[[Any], None]] = set()
        self.pending: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.pending.append(callback)

    def run(self) -> None:
        pending, self.pending = self.pending, []
        for callback in pending:
            callback()

    def reset(self) -> None:
        for callback in list(self.on_close):
            callback(self)
        self.run()


def test_a_hub_reset_by_a_lost_connection_gives_no_message_to_the_old_consumer() -> None:
    """Celery's asynloop resets the hub before the consumer's steps stop: a message given to
    the old consumer then would be forgotten with its requests, its lease left to run out."""
    hub = ClosingHub()
    handoff = Handoff("ready")
    handoff.attach(hub, hub.received.append)
    handoff.put([("a|1", Message(headers={"id": "a"}))])
    hub.reset()
    assert hub.received == [] and handoff.members() == ["a|1"] and not handoff.attached
    back = ClosingHub()  # the consumer started again
    handoff.attach(back, back.received.append)
    back.run()
    assert [m.headers["id"] for m in back.received] == ["a"]


def test_a_warm_shutdown_leaves_the_waiting_jobs_to_their_leases() -> None:
    handoff = Handoff("ready")
    handoff.put([("a|1", Message(headers={"id": "a"}))])
    handoff.clear()
    handoff.put([("b|1", Message(headers={"id": "b"}))])  # a step that was under way
    assert handoff.members() == [] and len(handoff) == 0 and not handoff.attached


def test_celerys_own_acknowledgements_of_a_handed_over_message_are_harmless(
    archiver_env: Env, app: Celery, desk: JobDesk, clock: PinnedClock, consumer: Consumer
) -> None:
    """Celery acknowledges or rejects a message it cannot run (an unknown task, say): one that
    came from no broker has nothing to tell, and must not raise."""
    desk.put(chat_job(1), task_id="t-1")
    dispatcher(archiver_env, app, consumer).step()
    first, second = Message(), *consumer.received
    with pytest.raises(MessageStateError):
        first.ack()  # what a message with no channel did
    second.ack()
    assert second.acknowledged


def test_a_message_counts_as_waiting_until_the_consumer_holds_it() -> None:
    """Celery's handler sends an event before it reserves the request, and the dispatcher's
    thread runs meanwhile: a message taken out first would count nowhere, and the node would
    take more jobs than its slots."""
    handoff = Handoff("ready")
    seen: list[int] = []
    handoff.put([(f"{i}|1", Message(headers={"id": i})) for i in ("a", "b")])
    handoff.attach(Consumer(), lambda message: seen.append(len(handoff)))
    assert seen == [2, 1] and len(handoff) == 0


def test_a_full_redis_hands_out_nothing(
    archiver_env: Env, app: Celery, desk: JobDesk, consumer: Consumer, fill: Fill
) -> None:
    """A script that has written once runs to its end even when Redis is full: the dispatch
    writes first what a full Redis refuses, so no job starts whose ending could not be
    recorded (worker/stores/lua/dispatch.lua)."""
    desk.put(chat_job(1), task_id="t-1")
    fill()
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        dispatcher(archiver_env, app, consumer).step()
    assert consumer.received == []
    assert archiver_env.services.jobs.counts().active == 0
    assert archiver_env.services.jobs.wait_head(f"green-api:{GREEN_ID}", 5) == ["t-1"]
