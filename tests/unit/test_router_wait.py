"""An idle node's router waits on the intake with the worker's own client and block: the wait must
end as Redis's empty answer. When the block was as long as the client's socket timeout, the wait
ended as a TimeoutError instead, which redis-py retried on a new connection, again and again."""

from __future__ import annotations

import pytest

from tests.conftest import Env
from worker.dispatch.router import Router
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
