"""The programs outside Python that the tests run, and the Debian packages that bring them (what
.ci/run installs and README's Start here names). A test that needs one calls ``require``: when it
is missing, the test fails with one line saying what to install. A developer who chooses to do
without one names it in ARCHIVER_TEST_WITHOUT (``chromium,faketime``): its tests are skipped,
saying so, and never under CI, where everything is installed.

``python -m tests.host_tools`` (``make test`` runs it first) prints what is missing, one line
each, and exits 1: before a ten-minute run, not in the middle of it.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

WITHOUT = "ARCHIVER_TEST_WITHOUT"

# Debian's own paths: the browser test names both, so Selenium never looks for another.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def libfaketime() -> Path | None:
    """Debian's multithreaded libfaketime (package faketime), for whichever architecture."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    return Path(found[0]) if found else None


@dataclass(frozen=True)
class HostTool:
    name: str
    # Programs looked up on the PATH (or absolute paths) that must all be there.
    programs: tuple[str, ...]
    debian_packages: tuple[str, ...]
    needed_by: str
    # redis-server cannot be done without: nearly every test starts one.
    optional: bool = True

    def missing(self) -> list[str]:
        absent = [program for program in self.programs if shutil.which(program) is None]
        if self.name == "faketime" and libfaketime() is None:
            absent.append("libfaketimeMT.so.1")
        return absent

    def problem(self) -> str | None:
        """One line saying what is missing and what to do, or None when all is there."""
        absent = self.missing()
        if not absent:
            return None
        line = (
            f"{', '.join(absent)} not found, needed by {self.needed_by}: "
            f"apt-get install {' '.join(self.debian_packages)}"
        )
        if self.optional:
            line += f" (or {WITHOUT}={self.name} to skip those tests)"
        return line


TOOLS = {
    tool.name: tool
    for tool in (
        HostTool(
            "redis-server",
            ("redis-server", "redis-cli"),
            ("redis-server",),
            "the demo and most tests",
            optional=False,
        ),
        HostTool(
            "chromium",
            (CHROMIUM, CHROMEDRIVER),
            ("chromium", "chromium-driver"),
            "tests/integration/test_flower_browser.py",
        ),
        HostTool(
            "promtool",
            ("promtool",),
            ("prometheus",),
            "tests/unit/test_observability.py",
        ),
        HostTool(
            "faketime",
            ("faketime",),
            ("faketime",),
            "tests/integration/test_clock_skew.py",
        ),
    )
}


def opted_out(name: str) -> bool:
    """Whether the developer chose to run without this tool; CI never does."""
    if os.environ.get("CI"):
        return False
    chosen = {part.strip() for part in os.environ.get(WITHOUT, "").split(",")}
    return name in chosen and TOOLS[name].optional


def require(name: str) -> None:
    """Fail the calling test with one line when the tool is missing, or skip it when
    ARCHIVER_TEST_WITHOUT names the tool."""
    problem = TOOLS[name].problem()
    if problem is None:
        return
    if opted_out(name):
        pytest.skip(f"{WITHOUT}={name}: {problem}")
    pytest.fail(problem, pytrace=False)


def main() -> int:
    status = 0
    for name, tool in TOOLS.items():
        problem = tool.problem()
        if problem is None:
            continue
        if opted_out(name):
            print(f"skipping what needs {name} ({WITHOUT}): {problem}", file=sys.stderr)
            continue
        print(problem, file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
