"""One object per process: the cache that keeps prefork children off their parent's sockets."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import worker.services as services
from config import AccountRegistry
from config.per_process import ForkSafeLock, PerProcess, forget_all
from tests.conftest import CANARY, Env, green_accounts_toml
from worker.services import AccountsFile


def in_child(check: Callable[[], bool]) -> bool:
    """``check()`` run in a forked child; a child stuck for 5 s (a dead lock) answers False."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        signal.alarm(5)
        try:
            ok = check()
        except BaseException:
            ok = False
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(child, 0)
    return answer == b"1"


@contextmanager
def held_by_another_thread(lock: ForkSafeLock) -> Iterator[None]:
    """``lock`` held by a parent's thread for the duration, as a reload holds it at a fork."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    taken.wait(5)
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_built_once_per_process_and_again_in_a_forked_child() -> None:
    builds: list[int] = []

    def build() -> object:
        builds.append(os.getpid())
        return object()

    cached = PerProcess(build)
    first = cached.get()
    assert cached.get() is first and builds == [os.getpid()]

    # The child: a new object, not the parent's.
    assert in_child(
        lambda: cached.get() is not first and builds[-1] == os.getpid() and len(builds) == 2
    )
    assert cached.get() is first  # the parent keeps its own


def test_forget_all_rebuilds_every_cache() -> None:
    a, b = PerProcess(object), PerProcess(object)
    first_a, first_b = a.get(), b.get()
    forget_all()
    assert a.get() is not first_a and b.get() is not first_b


def test_an_installed_object_is_used_until_forgotten() -> None:
    cached = PerProcess(object)
    mine = object()
    cached.install(mine)
    assert cached.get() is mine
    cached.forget()
    assert cached.get() is not mine


def test_data_that_survives_a_fork_is_not_built_again_in_the_child() -> None:
    builds: list[int] = []

    def build() -> object:
        builds.append(os.getpid())
        return object()

    cached = PerProcess(build, survives_fork=True)
    first = cached.get()
    assert in_child(lambda: cached.get() is first and len(builds) == 1)


def test_a_lock_held_by_another_thread_at_the_fork_is_free_in_the_child() -> None:
    cached = PerProcess(object)
    with held_by_another_thread(cached._lock):
        assert in_child(lambda: cached.get() is not None)


@pytest.fixture
def accounts_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_GREEN_TOKEN", CANARY)
    path = tmp_path / "accounts.toml"
    path.write_text(green_accounts_toml(1100000001, 3))
    return path


def test_pool_children_inherit_the_accounts_and_reload_on_their_own(
    accounts_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = AccountsFile(accounts_path, check_every=0)
    registry = accounts.get()
    loads: list[Path] = []
    real = services.load_accounts

    def counted(path: Path, **options: bool) -> AccountRegistry:
        loads.append(path)
        return real(path, **options)

    monkeypatch.setattr(services, "load_accounts", counted)

    def child() -> bool:
        inherited = accounts.get() is registry and not loads
        accounts_path.write_text(green_accounts_toml(1100000001, 4))
        return inherited and len(accounts.get()) == 4 and len(loads) == 1

    with held_by_another_thread(accounts._lock):  # a reload in progress at the fork
        assert in_child(child)


def test_a_pool_child_keeps_the_nodes_accounts_and_builds_its_own_services(
    archiver_env: Env,
) -> None:
    registry, node_services = services.get_accounts(), services.get_services()
    assert in_child(
        lambda: services.get_accounts() is registry and services.get_services() is not node_services
    )
