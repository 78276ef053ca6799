"""Redis refusing writes (full at maxmemory under noeviction, a read-only replica, MISCONF) or
losing the connection: the producer raises PublishFailed, which places every row exactly
(enqueued, not published, uncertain), and sending the unsent rows again is safe. A batch is
stored in one atomic step (lua/submit.lua), so rows are placed by whole batches: a refused step
stored nothing, a lost one stored all of its batch or none of it. Real redis-server processes;
the only stand-in is a lost reply, which a real server cannot be made to drop on cue."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate, islice
from typing import Any

import httpx
import pytest
import redis
import respx

from tasks.archive.runner import ArchiveRunner, Done, RunContext
from tests.conftest import CANARY, GREEN_ID, Env, use_environment
from tests.support import JobDesk, stored_jobs
from tests.unit.conftest import Fill
from worker.celery_app import create_app
from worker.contract import envelope
from worker.contract.jobs import TASK_ID
from worker.producer import (
    BATCH_SIZE,
    CONNECTION_LOST,
    FIRST_BATCH,
    NOT_REPLICATED,
    ArchiveProducer,
    PublishFailed,
    batch_sizes,
    enqueue_archive,
    enqueue_job,
)
from worker.sandbox.local import PrivateRedis
from worker.stores.endings import Endings
from worker.stores.jobs import JobStore, NewJob
from worker.write_refusals import MAXMEMORY, MISCONF, READ_ONLY, read_refusal

ACCOUNT = f"green-api:{GREEN_ID}"
GREEN_URL = f"http://provider.test/waInstance{GREEN_ID}/archiveChat/{CANARY}"
OOM = "Redis refused the write (maxmemory): command not allowed when used memory > 'maxmemory'"


def jobs(count: int, first: int = 0) -> list[dict[str, Any]]:
    return [
        {"provider": "green-api", "account": GREEN_ID, "chat_id": f"7900{first + n:07d}@c.us"}
        for n in range(count)
    ]


def waiting_ids(env: Env) -> list[str]:
    """The account's wait list, oldest first: the jobs workers will be handed."""
    return env.services.jobs.wait_head(ACCOUNT, 100_000)


def stored_chats(env: Env) -> Counter[str]:
    """How many jobs the store holds for each chat."""
    return Counter(job.body.kwargs["chat_id"] for job in stored_jobs(env.services))


def owner(env: Env, row: dict[str, Any]) -> str | None:
    """The job that holds the row's chat (its pending mark), if any."""
    return env.redis.get(
        env.services.keys.pending(f"{row['provider']}:{row['account']}", row["chat_id"])
    )


def lose_the_reply_of_the_next_step(
    monkeypatch: pytest.MonkeyPatch, store: JobStore, *, went_through: bool
) -> list[list[str]]:
    """The connection drops while the next batch's step is sent: after Redis ran it (only its
    reply is lost) or before it got there. The producer cannot tell which. Returns the task
    ids of the batch lost, once it is."""
    real = store.submit
    lost: list[list[str]] = []

    def submit(jobs: Sequence[NewJob], **options: Any) -> list[str]:
        if lost:
            return real(jobs, **options)
        lost.append([job.task_id for job in jobs])
        if went_through:
            real(jobs, **options)
        raise redis.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(store, "submit", submit)
    return lost


def test_redis_filling_up_between_two_batches_stores_the_first_and_none_of_the_rest(
    producer: ArchiveProducer, archiver_env: Env, fill: Fill, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batches stored before Redis filled up are enqueued and hold their chats; the batch
    whose step it refused, and every row after it, are not published (none uncertain), their
    chats free; sending exactly those rows again stores each chat once."""
    rows = jobs(120)
    real = producer.store.submit
    steps: list[int] = []

    def full_from_the_third_step(jobs: Sequence[NewJob], **options: Any) -> list[str]:
        steps.append(len(jobs))
        if len(steps) == 3:
            fill()
        return real(jobs, **options)

    monkeypatch.setattr(producer.store, "submit", full_from_the_third_step)
    with pytest.raises(PublishFailed) as caught:
        producer.enqueue_many(rows, first_batch=10, batch_size=40)  # 10, 20, 40, 40, 10
    assert steps == [10, 20, 40]  # no step is sent after the refused one
    failed = caught.value
    assert (failed.reason, failed.refused_writes) == (MAXMEMORY, True)
    result = failed.result
    assert [position for position, _ in result.enqueued] == list(range(1, 31))
    assert [u.position for u in result.not_published] == list(range(31, 121))
    assert result.uncertain == [] and result.duplicates == [] and result.refused == []
    assert str(failed) == (
        "Redis refused writes (maxmemory): 30 enqueued, 90 not published, 0 uncertain"
    )
    whys = [u.why for u in result.not_published]
    assert all(why.startswith(OOM) for why in whys[:40]), whys[0]
    assert set(whys[40:]) == {"not sent: storing stopped earlier in this call (maxmemory)"}
    # Exactly the rows said enqueued are stored, under the ids reported, holding their chats.
    assert waiting_ids(archiver_env) == [task_id for _, task_id in result.enqueued]
    for position, task_id in result.enqueued:
        assert owner(archiver_env, rows[position - 1]) == task_id
    for unsent in result.not_published:
        assert owner(archiver_env, rows[unsent.position - 1]) is None
        assert unsent.row == {**rows[unsent.position - 1], "source": "api"}  # no id: no job

    # Memory freed, exactly the unsent rows sent again: every chat stored once.
    monkeypatch.setattr(producer.store, "submit", real)
    archiver_env.redis.config_set("maxmemory", 0)
    again = producer.enqueue_many([u.row for u in result.not_published])
    assert len(again.enqueued) == 90 and again.duplicates == []
    assert stored_chats(archiver_env) == Counter(row["chat_id"] for row in rows)
    assert len(waiting_ids(archiver_env)) == 120


def test_memory_running_out_during_the_steps_places_the_rows_by_whole_batches(
    producer_for: Callable[..., ArchiveProducer],
) -> None:
    """Redis checks maxmemory when a step begins, not at each write inside it: a step begun
    under the limit is stored whole, and one begun over it is refused before it writes
    anything. However the memory runs out, the rows enqueued are whole batches, exactly those
    are stored, and the rest are not published. (A Redis of its own: no other test's clients
    hold memory that Redis frees meanwhile.)"""
    with PrivateRedis() as server:
        producer = producer_for(server.url)
        producer.enqueue_many(jobs(1, first=10_000))  # the script loaded, the connections open
        client = redis.Redis.from_url(server.url)
        client.config_set("maxmemory-policy", "noeviction")
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 400_000)  # room for a few hundred of the jobs
        with pytest.raises(PublishFailed) as caught:
            producer.enqueue_many(jobs(3000))  # batches of 25, 50, 100, 200, 400, 500, ...
        assert caught.value.reason == MAXMEMORY
        result = caught.value.result
        count = len(result.enqueued)
        ends = list(accumulate(islice(batch_sizes(BATCH_SIZE, FIRST_BATCH), 12)))
        assert count in ends[:-1], (count, ends)  # some batches stored, not all
        assert [position for position, _ in result.enqueued] == list(range(1, count + 1))
        assert [u.position for u in result.not_published] == list(range(count + 1, 3001))
        assert result.uncertain == []
        store = producer.store
        assert store.counts().jobs == count + 1
        assert store.wait_head(ACCOUNT, 5000)[1:] == [task_id for _, task_id in result.enqueued]


def test_a_full_redis_refuses_the_first_step_and_the_call_places_every_row(
    producer: ArchiveProducer, archiver_env: Env, fill: Fill
) -> None:
    rows: list[Any] = jobs(60)
    rows[29] = {**rows[29], "chat_id": "not a chat"}
    fill()
    with pytest.raises(PublishFailed) as caught:
        producer.enqueue_many(rows, first_batch=10)
    result = caught.value.result
    assert caught.value.reason == MAXMEMORY
    assert result.enqueued == [] and result.uncertain == []
    assert [position for position, _ in result.refused] == [30]
    assert [u.position for u in result.not_published] == [p for p in range(1, 61) if p != 30]
    # The first batch was refused at its step; the rows after it were read, never sent.
    assert result.not_published[0].why.startswith(OOM)
    assert result.not_published[-1].why == (
        "not sent: storing stopped earlier in this call (maxmemory)"
    )
    assert all("task_id" not in u.row for u in result.not_published)
    assert stored_jobs(archiver_env.services) == []
    assert archiver_env.redis.keys("*pending*") == []

    with pytest.raises(PublishFailed, match=r"0 enqueued, 1 not published, 0 uncertain"):
        enqueue_archive("green-api", GREEN_ID, "79001234567@c.us", producer=producer)


@pytest.mark.parametrize("went_through", [True, False], ids=["stored", "not-stored"])
def test_a_lost_reply_leaves_its_batch_uncertain_and_a_resend_stores_nothing_twice(
    producer: ArchiveProducer,
    archiver_env: Env,
    monkeypatch: pytest.MonkeyPatch,
    went_through: bool,
) -> None:
    """The batch whose step was lost is uncertain, each row with the task id it was sent
    under; the rows after it were never sent. Sent again, each row is stored under its id if
    the first step had not gone through, and found stored (enqueued, nothing written) if it
    had: each chat has one job either way."""
    rows = jobs(30)
    lost = lose_the_reply_of_the_next_step(monkeypatch, producer.store, went_through=went_through)
    with pytest.raises(PublishFailed) as caught:
        producer.enqueue_many(rows, first_batch=20)  # 20, then 10
    failed = caught.value
    assert (failed.reason, failed.refused_writes) == (CONNECTION_LOST, False)
    assert str(failed) == (
        "lost the connection to Redis (Connection closed by server.): 0 enqueued, "
        "10 not published, 20 uncertain"
    )
    result = failed.result
    assert result.enqueued == []
    assert [u.position for u in result.uncertain] == list(range(1, 21))
    assert [u.position for u in result.not_published] == list(range(21, 31))
    ids = [u.task_id for u in result.uncertain]
    assert lost == [ids]  # each row's id is the one its job was sent under
    assert all(task_id and TASK_ID.match(task_id) for task_id in ids)
    for unsent in result.uncertain:
        assert unsent.row == {
            **rows[unsent.position - 1],
            "source": "api",
            "task_id": unsent.task_id,
        }
        assert unsent.why.startswith("uncertain: connection to Redis lost: ")
    assert all("task_id" not in u.row for u in result.not_published)
    if went_through:  # stored under those ids, holding the chats: "already pending" as them
        assert waiting_ids(archiver_env) == ids
        assert producer.enqueue(rows[0]) == ids[0]
    else:
        assert stored_jobs(archiver_env.services) == []
        assert owner(archiver_env, rows[0]) is None

    resend = sorted([*result.uncertain, *result.not_published], key=lambda u: u.position)
    again = producer.enqueue_many([u.row for u in resend])
    assert [task_id for _, task_id in again.enqueued][:20] == ids
    assert len(again.enqueued) == 30 and again.duplicates == []
    assert stored_chats(archiver_env) == Counter(row["chat_id"] for row in rows)
    waiting = waiting_ids(archiver_env)
    assert len(waiting) == 30 and waiting[:20] == ids  # each job once, in its place
    for position, task_id in again.enqueued:
        assert owner(archiver_env, rows[position - 1]) == task_id


def lose_the_first_reply_to(command: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first time Redis answers ``command``, the connection drops before the client reads
    the answer: Redis has run the command, the client does not know it."""
    real = redis.client.Redis.parse_response
    lost: list[str] = []

    def parse_response(self: redis.Redis, connection: Any, name: str, **options: Any) -> Any:
        reply = real(self, connection, name, **options)
        if name == command and not lost:
            lost.append(name)
            connection.disconnect()
            raise redis.ConnectionError("Connection closed by server.")
        return reply

    monkeypatch.setattr(redis.client.Redis, "parse_response", parse_response)
    return lost


def test_a_step_the_client_sends_again_after_losing_its_reply_is_stored_once(
    producer: ArchiveProducer, archiver_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state client retries a command whose connection dropped (worker/stores/client.py),
    so a lost reply usually never reaches the producer: the step runs a second time, finds each
    job stored under its id, and the batch is enqueued, each job once."""
    producer.enqueue_many(jobs(1, first=1000))  # the script loaded
    lost = lose_the_first_reply_to("EVALSHA", monkeypatch)
    result = producer.enqueue_many(jobs(20), first_batch=500)
    assert lost == ["EVALSHA"]
    assert [position for position, _ in result.enqueued] == list(range(1, 21))
    ids = [task_id for _, task_id in result.enqueued]
    assert waiting_ids(archiver_env)[1:] == ids  # each once
    everyone = [*jobs(1, first=1000), *jobs(20)]
    assert stored_chats(archiver_env) == Counter(row["chat_id"] for row in everyone)


@pytest.fixture
def runner(archiver_env: Env, producer: ArchiveProducer) -> Iterator[ArchiveRunner]:
    client = httpx.Client(timeout=2)
    yield ArchiveRunner(
        archiver_env.services,
        archiver_env.accounts,
        Endings(archiver_env.services, producer.app.backend),
        client_factory=lambda: client,
        sleep=lambda _: None,
    )
    client.close()


def test_an_uncertain_row_whose_job_has_ended_is_not_stored_again(
    producer: ArchiveProducer,
    archiver_env: Env,
    runner: ArchiveRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lost step had gone through and its job ran to its end (the chat archived, its mark
    released, its result kept) before the row was sent again: sent under its id, it is
    reported enqueued as that job and nothing is stored, so the provider is called once."""
    [job] = jobs(1)
    lose_the_reply_of_the_next_step(monkeypatch, producer.store, went_through=True)
    with pytest.raises(PublishFailed) as caught:
        producer.enqueue(job)
    [unsent] = caught.value.result.uncertain
    desk = JobDesk(archiver_env.services, archiver_env.accounts)
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(200)
        task_id, kwargs, headers = desk.take()
        assert task_id == unsent.task_id
        end = runner.run((), kwargs, RunContext(task_id, "w@h", headers))
        assert isinstance(end, Done) and end.result["outcome"] == "archived"
        assert owner(archiver_env, job) is None

        assert enqueue_job(unsent.row, producer=producer) == unsent.task_id
        assert stored_jobs(archiver_env.services) == []
        assert owner(archiver_env, job) is None
        assert archiver_env.services.jobs.dispatch(1).jobs == []
    assert route.call_count == 1


def test_a_row_resent_with_its_task_id_is_stored_under_it_unless_another_job_holds_the_chat(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    free, held = jobs(2)
    assert producer.enqueue({**free, "task_id": "crm-42.resend"}) == "crm-42.resend"
    assert owner(archiver_env, free) == "crm-42.resend"
    other = producer.enqueue(held)
    result = producer.enqueue_many([{**held, "task_id": "crm-43"}])
    assert result.enqueued == [] and result.duplicates == [(1, other)]
    assert archiver_env.services.jobs.record("crm-43") is None
    assert waiting_ids(archiver_env) == ["crm-42.resend", other]
    # Sent again under its id: the job stored already, reported as enqueued, stored once.
    assert enqueue_job({**free, "task_id": "crm-42.resend"}, producer=producer) == "crm-42.resend"
    assert waiting_ids(archiver_env) == ["crm-42.resend", other]


@pytest.mark.parametrize(
    ("task_id", "why"),
    [
        (42, "task_id: must be a string, got int"),
        ("two words", "task_id: 'two words' is not a task id"),
        ("-leading-dash", "task_id: '-leading-dash' is not a task id"),
        ("x" * 129, "task_id: 'xxxx"),
        ("line\nbreak", "task_id: 'line\\nbreak' is not a task id"),
    ],
)
def test_a_task_id_is_checked_as_workers_check_one(
    producer: ArchiveProducer, archiver_env: Env, task_id: object, why: str
) -> None:
    [job] = jobs(1)
    result = producer.enqueue_many([{**job, "task_id": task_id}])
    [(position, refused)] = result.refused
    assert position == 1 and refused.startswith(why) and "\n" not in refused
    assert stored_jobs(archiver_env.services) == []
    # The producer's rule is the one workers apply to a message's id header.
    assert envelope._task_id({"id": task_id}) is None


def test_one_task_id_for_two_rows_is_refused(producer: ArchiveProducer, archiver_env: Env) -> None:
    first, second = jobs(2)
    result = producer.enqueue_many([{**first, "task_id": "t-1"}, {**second, "task_id": "t-1"}])
    assert result.enqueued == [(1, "t-1")]
    assert result.refused == [
        (2, "task_id: also given to row 1 of this call (a task id names one job)")
    ]


# --- a read-only replica, MISCONF ----------------------------------------------------------------


@pytest.fixture
def producer_for(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., ArchiveProducer]]:
    """``producer_for(url, state_url=None)``: a producer whose broker is ``url`` (and state
    Redis too, unless ``state_url``)."""
    apps = []

    def make(url: str, state_url: str | None = None) -> ArchiveProducer:
        if state_url is not None:
            monkeypatch.setenv("ARCHIVER_REDIS_URL", state_url)
        made = use_environment(monkeypatch, url, archiver_env.accounts_file)
        apps.append(create_app(made.settings))
        return ArchiveProducer(apps[-1], made.settings, made.redis)

    yield make
    for app in apps:
        app.close()


def test_a_read_only_replica_refuses_the_step_and_nothing_is_stored(
    producer_for: Callable[..., ArchiveProducer], replica: tuple[PrivateRedis, PrivateRedis]
) -> None:
    primary, copy = replica
    producer = producer_for(copy.url)
    with pytest.raises(PublishFailed) as caught:
        producer.enqueue_many(jobs(30))
    assert (caught.value.reason, caught.value.refused_writes) == (READ_ONLY, True)
    result = caught.value.result
    assert [u.position for u in result.not_published] == list(range(1, 31))
    assert result.enqueued == [] and result.uncertain == []
    assert redis.Redis.from_url(primary.url).dbsize() == 0
    assert read_refusal(redis.Redis.from_url(copy.url)).reason == READ_ONLY  # type: ignore[union-attr]


def test_jobs_go_to_the_state_redis_so_a_broker_demoted_to_a_replica_fails_no_enqueue(
    producer_for: Callable[..., ArchiveProducer],
    replica: tuple[PrivateRedis, PrivateRedis],
) -> None:
    """The producer stores jobs in the state Redis; the broker only carries Flower's
    task-sent events. A broker that became a read-only replica fails no enqueue: the jobs are
    stored, to be dispatched once the broker takes writes again."""
    primary, copy = replica
    with PrivateRedis() as state:
        producer = producer_for(copy.url, state_url=state.url)
        result = producer.enqueue_many(jobs(30))
        assert len(result.enqueued) == 30
        store = producer.store
        assert store.wait_head(ACCOUNT, 100) == [task_id for _, task_id in result.enqueued]
        assert redis.Redis.from_url(primary.url).dbsize() == 0


def test_misconf_is_a_refusal_too(
    producer_for: Callable[..., ArchiveProducer], misconf: PrivateRedis
) -> None:
    producer = producer_for(misconf.url)
    with pytest.raises(PublishFailed) as caught:
        producer.enqueue_many(jobs(5))
    assert (caught.value.reason, caught.value.refused_writes) == (MISCONF, True)
    assert len(caught.value.result.not_published) == 5
    assert read_refusal(redis.Redis.from_url(misconf.url)).reason == MISCONF  # type: ignore[union-attr]


def test_a_step_no_replica_acknowledged_is_uncertain_and_a_resend_stores_it_once(
    producer: ArchiveProducer, archiver_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Sentinel, an enqueue answers once a replica has its step (WAIT): a master that
    crashes right after cannot lose jobs the caller holds ids of. This Redis has no replica:
    the stored batch is reported uncertain, and sent again it is found stored, not doubled."""
    monkeypatch.setattr("worker.stores.jobs.REPLICA_WAIT_MS", 50)
    monkeypatch.setattr(producer, "_replicas", 1)
    with pytest.raises(PublishFailed) as caught:
        producer.enqueue_many(jobs(5))
    failed = caught.value
    assert failed.reason == NOT_REPLICATED
    assert str(failed) == (
        "no replica acknowledged the enqueue (stored on the master, but on 0 of 1 replicas after "
        "50 ms: a failover could lose it): 0 enqueued, 0 not published, 5 uncertain"
    )
    result = failed.result
    assert result.enqueued == [] and [u.position for u in result.uncertain] == [1, 2, 3, 4, 5]
    assert len(waiting_ids(archiver_env)) == 5  # stored on the master all the same
    # Sent again, the rows are found stored, and again no replica has them.
    with pytest.raises(PublishFailed, match="5 uncertain"):
        producer.enqueue_many([u.row for u in result.uncertain])
    # A master with no replica is told so: ARCHIVER_ENQUEUE_REPLICAS=0.
    monkeypatch.setattr(producer, "_replicas", 0)
    again = producer.enqueue_many([u.row for u in result.uncertain])
    assert [task_id for _, task_id in again.enqueued] == [u.task_id for u in result.uncertain]
    assert waiting_ids(archiver_env) == [u.task_id for u in result.uncertain]


@pytest.mark.parametrize(
    ("sentinel", "setting", "replicas"),
    [(False, None, 0), (False, 2, 2), (True, None, 1), (True, 0, 0)],
    ids=["plain", "set", "sentinel", "sentinel-off"],
)
def test_an_enqueue_waits_for_a_replica_with_sentinel_unless_told_otherwise(
    archiver_env: Env, sentinel: bool, setting: int | None, replicas: int
) -> None:
    """ARCHIVER_ENQUEUE_REPLICAS: unset, 1 with a sentinel:// state URL and 0 otherwise."""
    url = "sentinel://127.0.0.1:26379/0" if sentinel else archiver_env.settings.redis_url
    settings = archiver_env.settings.model_copy(
        update={"enqueue_replicas": setting, "redis_url": url, "sentinel_master": "m"}
    )
    made = ArchiveProducer(create_app(archiver_env.settings), settings, archiver_env.redis)
    assert made._replicas == replicas
