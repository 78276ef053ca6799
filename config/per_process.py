"""One object per process: built on first use, rebuilt after a fork.

Redis and HTTP clients hold sockets, and Celery's prefork pool forks children from a parent that
may already have built them: a child must never share its parent's sockets. So each cached object
remembers the process that built it, and a different process builds its own. Building is lazy so
that importing a module opens nothing.

Plain data without sockets (the accounts registry) may be marked ``survives_fork``: a child then
keeps its parent's copy instead of building its own (at 5,000 accounts, parsing the file costs
each pool child ~0.4 s of CPU at its first job). Their locks are ``ForkSafeLock``s: a forked
child gets them fresh, where a lock another thread of the parent held at the fork would
otherwise stay locked forever.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import ClassVar, Generic, TypeVar

T = TypeVar("T")


class ForkSafeLock:
    """A ``threading.Lock`` that a forked child gets unlocked, whatever its parent's threads
    held at the fork (Celery forks pool children while the node's threads run)."""

    _every: ClassVar[weakref.WeakSet[ForkSafeLock]] = weakref.WeakSet()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        ForkSafeLock._every.add(self)

    def __enter__(self) -> ForkSafeLock:
        self._lock.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.release()


def _new_locks_in_child() -> None:
    for lock in list(ForkSafeLock._every):
        lock._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)


class PerProcess(Generic[T]):
    """``get()`` returns this process's object, building it with ``build`` the first time."""

    _every: ClassVar[list[PerProcess[object]]] = []

    def __init__(self, build: Callable[[], T], *, survives_fork: bool = False) -> None:
        self._build = build
        self._survives_fork = survives_fork
        self._lock = ForkSafeLock()
        self._value: T | None = None
        self._pid: int | None = None
        PerProcess._every.append(self)  # type: ignore[arg-type]

    def get(self) -> T:
        pid = os.getpid()
        value = self._value
        if value is None or (self._pid != pid and not self._survives_fork):
            with self._lock:
                if self._value is None or (self._pid != pid and not self._survives_fork):
                    self._value, self._pid = self._build(), pid
                value = self._value
        return value

    def install(self, value: T) -> None:
        """Use ``value`` in this process until forgotten (tests that bring their own)."""
        with self._lock:
            self._value, self._pid = value, os.getpid()

    def forget(self) -> None:
        """Build afresh on the next ``get()`` (settings changed, tests switched Redis)."""
        with self._lock:
            self._value, self._pid = None, None


def forget_all() -> None:
    """Forget every per-process object (tests that change the environment)."""
    for cached in PerProcess._every:
        cached.forget()
