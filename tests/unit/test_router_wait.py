"""An idle node's router waits on the intake with the worker's own client and block: the wait must
end as Redis's empty answer. When the block was as long as the client's socket timeout, the wait
ended as a TimeoutError instead, which redis-py retried on a new connection, again and again."""

from __future__ import annotations

import pytest
from kombu import Connection, Queue

from tests.conftest import Env
from worker.dispatch.router import Router, intake_lists
from worker.dispatch.service import INTAKE_BLOCK
from worker.services import get_services


# The wait blocks INTAKE_BLOCK seconds; a block past the socket timeout never returns in time
# (redis-py retries the timed-out command on a new connection, over and over).
@pytest.mark.timeout(30)
def test_an_idle_routers_wait_ends_in_redis_empty_answer_on_one_connection(
    archiver_env: Env,
) -> None:
    services = get_services()
    router = Router(
        services.broker,
        services.jobs,
        services.dead_letters,
        services.keys,
        intake=archiver_env.settings.queue,
        node="idle",
        shared=services.shared,
    )
    services.broker.ping()  # the client's connection, made before counting
    connections = int(archiver_env.redis.info("stats")["total_connections_received"])
    assert router.wait(INTAKE_BLOCK) is False
    # Nothing but the test's own INFO connection (if it needed one) is new.
    assert int(archiver_env.redis.info("stats")["total_connections_received"]) - connections <= 1


def test_the_intake_lists_are_those_kombu_publishes_to(archiver_env: Env) -> None:
    """A producer's message lands in one list per priority step: the router reads them all."""
    intake = archiver_env.settings.queue
    with Connection(archiver_env.settings.broker_url) as connection:
        producer = connection.Producer()
        for priority in range(10):
            producer.publish(
                {"n": priority}, routing_key=intake, declare=[Queue(intake)], priority=priority
            )
    broker = get_services().broker
    used = {str(key) for key in broker.keys(f"{intake}*")}
    assert used == set(intake_lists(intake))
    assert sum(int(broker.llen(name)) for name in intake_lists(intake)) == 10
