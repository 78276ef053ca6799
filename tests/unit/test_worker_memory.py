"""What keeps a pool process's memory flat: a run's exception is freed when the run ends (not at
the next full collection), and the pool-process recycling limit is a setting with sane bounds.

The runs go through Celery's own tracer (``build_tracer``, what a prefork pool process calls for
each job), with the cyclic collector off, so "freed" means freed by reference counting."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable, Iterator

import pytest
from celery import Celery
from celery.app.trace import build_tracer
from celery.exceptions import Ignore, Retry

from config import ConfigError, load_settings
from tests.conftest import Env
from worker import tracebacks


class Refused(Exception):
    pass


def _app() -> Celery:
    return Celery("memory-test", broker="memory://", backend="cache+memory://")


class Local:
    """Something a run's frame holds, as our task's frames hold the runner, the job and the
    provider's answer."""


def _failing_task(app: Celery, kind: str, held: list[Local]) -> Callable[..., object]:
    """A task whose run ends as a dead letter (FAILURE), a wait (RETRY) or a quiet end (IGNORED),
    recording a local of its frame."""

    @app.task(name=f"memory-test.{kind}", throws=(Refused,))
    def task() -> None:
        local = Local()
        held.append(local)
        error: BaseException
        if kind == "failure":
            error = Refused("chat_not_found")
        elif kind == "retry":
            error = Retry("waiting for the account's turn", exc=Refused("deferred"))
        else:
            error = Ignore()
        raise error

    return task


@pytest.fixture
def no_cyclic_collection() -> Iterator[None]:
    logging.disable(logging.CRITICAL)  # Celery logs each failure with its traceback
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        logging.disable(logging.NOTSET)


def _run_once(kind: str) -> tuple[weakref.ref[Local], weakref.ref[object]]:
    """Weak references to a local of the run's frame and to Celery's ExceptionInfo of the run
    (billiard's copy of the traceback, the bulk of what a cycle would hold)."""
    app = _app()
    held: list[Local] = []
    task = _failing_task(app, kind, held)
    tracer = build_tracer(task.name, task, eager=False, propagate=False, app=app)
    einfo = tracer("job-1", (), {}, {"id": "job-1"})[0]
    refs = weakref.ref(held.pop()), weakref.ref(einfo)
    del einfo
    return refs


@pytest.mark.parametrize("kind", ["failure", "retry", "ignore"])
def test_a_run_that_ends_in_an_exception_leaves_nothing_for_the_collector(
    kind: str, no_cyclic_collection: None
) -> None:
    # release_tracebacks is connected to task_postrun when worker.tracebacks is imported.
    assert tracebacks.release_tracebacks is not None
    local, einfo = _run_once(kind)
    assert local() is None, f"the {kind} run's frame is still alive"
    assert einfo() is None, f"the {kind} run's traceback copy is still alive"


@pytest.mark.parametrize("kind", ["failure", "retry", "ignore"])
def test_without_the_release_celery_keeps_the_exception_in_a_cycle(
    kind: str, no_cyclic_collection: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why worker.tracebacks exists: should Celery's tracer stop keeping the run's exception in a
    reference cycle, this fails and the module can go."""
    from celery import signals

    signals.task_postrun.disconnect(tracebacks.release_tracebacks)
    try:
        local, einfo = _run_once(kind)
        assert local() is not None and einfo() is not None
        gc.collect()
        assert local() is None and einfo() is None
    finally:
        signals.task_postrun.connect(tracebacks.release_tracebacks)


def test_chained_exceptions_lose_their_tracebacks_too() -> None:
    def raise_chain() -> None:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise Refused("outer") from inner

    with pytest.raises(Refused) as caught:
        raise_chain()
    outer = caught.value
    inner = outer.__cause__
    assert outer.__traceback__ is not None and inner is not None
    assert inner.__traceback__ is not None
    retry = Retry("later", exc=outer)
    tracebacks.release_tracebacks(retval=retry)
    assert outer.__traceback__ is None
    assert inner.__traceback__ is None
    tracebacks.release_tracebacks(retval={"outcome": "archived"})  # a result: left alone


def test_the_recycling_limit_defaults_to_a_backstop_and_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().worker_max_memory_per_child == 200_000
    monkeypatch.setenv("ARCHIVER_WORKER_MAX_MEMORY_PER_CHILD", "0")
    assert load_settings().worker_max_memory_per_child == 0
    monkeypatch.setenv("ARCHIVER_WORKER_MAX_MEMORY_PER_CHILD", "500000")
    assert load_settings().worker_max_memory_per_child == 500_000


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("50000", "must be 0 (never replace a pool process) or at least 100000"),
        ("1", "must be 0 (never replace a pool process) or at least 100000"),
        ("-1", "greater than or equal to 0"),
        ("20000000", "less than or equal to 16777216"),
        ("200MB", "valid integer"),
    ],
)
def test_a_wrong_recycling_limit_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, why: str
) -> None:
    monkeypatch.setenv("ARCHIVER_WORKER_MAX_MEMORY_PER_CHILD", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    [line] = str(caught.value).splitlines()
    assert line.startswith("ARCHIVER_WORKER_MAX_MEMORY_PER_CHILD: ")
    assert why in line
    assert f"(got {value!r})" in line or f"(got {value})" in line


def test_a_node_start_puts_its_accounts_out_of_the_collectors_reach(archiver_env: Env) -> None:
    """worker_init loads the accounts and freezes what is loaded: Celery's full collection
    before each pool fork (and every later one) does not walk a hundred thousand accounts."""
    from worker.celery_app import _check_accounts
    from worker.services import get_accounts

    gc.unfreeze()
    try:
        _check_accounts()
        assert gc.get_freeze_count() > 0
        account = next(iter(get_accounts()))
        tracked = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
        assert id(account) not in tracked and id(account.rates) not in tracked
    finally:
        gc.unfreeze()
