"""One object per process: the cache that keeps prefork children off their parent's sockets."""

from __future__ import annotations

import os

from config.per_process import PerProcess, forget_all


def test_built_once_per_process_and_again_in_a_forked_child() -> None:
    builds: list[int] = []

    def build() -> object:
        builds.append(os.getpid())
        return object()

    cached = PerProcess(build)
    first = cached.get()
    assert cached.get() is first and builds == [os.getpid()]

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: a new object, not the parent's
        os.close(read)
        ok = cached.get() is not first and builds[-1] == os.getpid() and len(builds) == 2
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(child, 0)
    assert answer == b"1"
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
