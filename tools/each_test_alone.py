"""Run every selected test by itself, each in a pytest session of its own, and list those that fail
alone (a test that passes only after another one has run depends on it).

    python -m tools.each_test_alone tests/unit            # every unit test, two at a time
    python -m tools.each_test_alone tests/unit/test_limiter.py --jobs 1

A fresh interpreter per test would spend most of its time importing; instead the parent imports
the test modules once (what a fresh session's collection does, before any test runs) and forks a
child per test, which runs ``pytest.main([node id])``: its own session, its own pytest-redis
server, nothing run before it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import pytest


class _Collect:
    def __init__(self) -> None:
        self.ids: list[str] = []

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.ids = [item.nodeid for item in items]


def collect(paths: Sequence[str]) -> list[str]:
    plugin = _Collect()
    code = pytest.main(["--collect-only", "-q", "-p", "no:randomly", *paths], plugins=[plugin])
    if code != 0:
        raise SystemExit(f"collection failed (pytest exit {code})")
    return plugin.ids


class _Only:
    """Keeps one test of its file, the ``index``-th as the parent collected them (by position:
    in a second session of the same process pytest escapes some parametrized ids once more, so
    neither a node id on the command line nor the id itself finds them)."""

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name  # the test function's name, to check that the position still holds

    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        kept = [items[self.index]] if self.index < len(items) else []
        if kept and getattr(kept[0], "originalname", kept[0].name) != self.name:
            kept = []  # collected otherwise than in the parent: pytest exits 5, reported
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def run_alone(node_id: str, index: int) -> int:
    """Fork; the child runs the one test quietly and exits with pytest's code (5: not found)."""
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        path, _, rest = node_id.partition("::")
        arguments = ["-q", "-p", "no:randomly", "-p", "no:cacheprovider", path]
        name = rest.split("[")[0].split("::")[-1]  # a class's test: after its class
        code = pytest.main(arguments, plugins=[_Only(index, name)])
        os._exit(int(code))
    return pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=["tests/unit"])
    parser.add_argument("--jobs", type=int, default=2, help="tests run at once (2)")
    args = parser.parse_args()
    ids = collect(args.paths)
    started = time.monotonic()
    running: dict[int, str] = {}
    failed: list[tuple[str, int]] = []
    # Each test with its position among its file's tests, as the child collects them.
    seen: dict[str, int] = {}
    queue: list[tuple[str, int]] = []
    for node_id in ids:
        path = node_id.split("::")[0]
        queue.append((node_id, seen.get(path, 0)))
        seen[path] = seen.get(path, 0) + 1
    queue.reverse()
    while queue or running:
        while queue and len(running) < args.jobs:
            node_id, index = queue.pop()
            running[run_alone(node_id, index)] = node_id
        pid, status = os.wait()
        node_id = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            failed.append((node_id, code))
            print(f"FAILED alone (exit {code}): {node_id}", flush=True)
    seconds = time.monotonic() - started
    print(f"{len(ids)} tests each run alone in {seconds:.0f} s: {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
