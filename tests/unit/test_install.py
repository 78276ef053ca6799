"""Installs that reproduce, and README's two commands (docs/contributing.md): the lock pins what
pyproject.toml asks for, with hashes; the image's lock is the same pins less the extras; README's
two commands are the Makefile's targets and CI runs the same one; every Debian package a test
needs is one .ci/run installs and README names."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.host_tools import TOOLS
from tests.unit.test_compose import ROOT, dockerfile_instructions
from tests.unit.test_operator_readme import sections, shell_lines

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
LOCK = ROOT / "requirements.lock"
RUNTIME_LOCK = ROOT / "requirements-runtime.lock"
CI_RUN = ROOT / ".ci" / "run"


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def read_lock(text: str) -> list[Pin]:
    """The pins of a requirements file as uv writes it: ``name==version ; marker \\`` followed by
    its ``--hash=`` lines and ``# via`` comments."""
    pins: list[Pin] = []
    entry: str | None = None
    hashes: list[str] = []

    def close() -> None:
        if entry is not None:
            requirement = Requirement(entry)
            [spec] = requirement.specifier
            assert spec.operator == "==", entry
            pins.append(
                Pin(
                    canonicalize_name(requirement.name),
                    Version(spec.version),
                    requirement.marker,
                    tuple(hashes),
                )
            )

    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            hashes.extend(re.findall(r"--hash=(sha256:[0-9a-f]{64})", line))
            continue
        close()
        entry, hashes = line.removesuffix("\\").strip(), []
    close()
    return pins


def pinned(pins: list[Pin]) -> dict[str, Version]:
    """The version each package gets on this interpreter and platform."""
    found: dict[str, Version] = {}
    for pin in pins:
        if pin.applies():
            assert pin.name not in found, f"{pin.name} pinned twice for this platform"
            found[pin.name] = pin.version
    return found


def asked_for(*, extras: bool) -> list[Requirement]:
    """What pyproject.toml asks for: the dependencies, each extra's (with extras) and the build
    backend (with extras: the editable install builds with it), less the project itself (an
    extra naming another extra)."""
    texts = list(PYPROJECT["project"]["dependencies"])
    if extras:
        for requirements in PYPROJECT["project"]["optional-dependencies"].values():
            texts.extend(requirements)
        texts.extend(PYPROJECT["build-system"]["requires"])
    requirements = [Requirement(text) for text in texts]
    return [r for r in requirements if canonicalize_name(r.name) != PROJECT]


LOCK_PINS = read_lock(LOCK.read_text(encoding="utf-8"))
RUNTIME_PINS = read_lock(RUNTIME_LOCK.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("pins", "extras"), [(LOCK_PINS, True), (RUNTIME_PINS, False)], ids=["lock", "runtime-lock"]
)
def test_the_lock_pins_everything_pyproject_asks_for(pins: list[Pin], extras: bool) -> None:
    versions = pinned(pins)
    for requirement in asked_for(extras=extras):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{name} is not in the lock: run make lock"
        assert requirement.specifier.contains(versions[name], prereleases=True), (
            f"the lock pins {name}=={versions[name]}, pyproject.toml asks {requirement}: "
            "run make lock"
        )


def test_every_extra_is_locked() -> None:
    # make lock takes --all-extras: an extra added to pyproject.toml needs no Makefile change.
    done = subprocess.run(
        ["make", "-n", "lock"], cwd=ROOT, capture_output=True, text=True, env=make_env()
    )
    assert done.returncode == 0, done.stderr
    assert "--all-extras" in done.stdout
    assert "-o requirements.lock" in done.stdout
    assert "-c requirements.lock -o requirements-runtime.lock" in done.stdout


@pytest.mark.parametrize("pins", [LOCK_PINS, RUNTIME_PINS], ids=["lock", "runtime-lock"])
def test_every_pin_has_its_hashes(pins: list[Pin]) -> None:
    assert len(pins) >= 20
    for pin in pins:
        assert pin.hashes, f"{pin.name} has no hash: pip's --require-hashes would refuse the lock"


def test_the_runtime_lock_is_the_lock_less_the_extras() -> None:
    everything = {(pin.name, pin.version) for pin in LOCK_PINS}
    runtime = {(pin.name, pin.version) for pin in RUNTIME_PINS}
    assert runtime <= everything, runtime - everything
    names = {pin.name for pin in RUNTIME_PINS}
    for tool in ("pytest", "ruff", "mypy", "uv", "selenium"):
        assert tool not in names, f"the image would install {tool}"


def test_the_image_installs_the_runtime_lock_with_its_hashes() -> None:
    runs = " ".join(rest for keyword, rest in dockerfile_instructions() if keyword == "RUN")
    assert re.search(r"pip install --require-hashes -r \S*requirements-runtime\.lock", runs)
    copied = [rest.split()[0] for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert "requirements-runtime.lock" in copied
    admitted = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "!requirements-runtime.lock" in admitted


# --- README's two commands ----------------------------------------------------------------------


def make_env() -> dict[str, str]:
    # Run under make test: the parent make's flags are not this one's business.
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def start_here_commands() -> list[list[str]]:
    """The commands of Start here's first block: the two README promises."""
    [first, *_] = re.findall(r"```sh\n.*?```", sections()["Start here"], flags=re.S)
    return shell_lines(first)


def test_readmes_two_commands_are_make_demo_and_make_test() -> None:
    assert start_here_commands() == [["make", "demo"], ["make", "test"]]


@pytest.mark.parametrize(
    ("target", "runs"),
    [
        ("demo", ["chat-archiver demo"]),
        ("test", ["python -m tests.host_tools", "ruff check .", "mypy", "python -m pytest"]),
    ],
)
def test_each_command_is_a_make_target_that_ends_in_its_run(target: str, runs: list[str]) -> None:
    assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    done = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, env=make_env()
    )
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    for run in runs:
        assert any(line.startswith(run) for line in lines), (run, done.stdout)


def test_ci_runs_the_readme_test_command() -> None:
    commands = [
        line.strip()
        for line in CI_RUN.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert commands[-1].split() == start_here_commands()[1]
    # Nothing else installs Python packages: CI's venv is the one make test builds from the lock.
    assert not any(re.search(r"\bpip\b", line) for line in commands)


def ci_debian_packages() -> set[str]:
    text = CI_RUN.read_text(encoding="utf-8")
    found: set[str] = set()
    for match in re.finditer(r"apt-get install ([^\n&|;]+)", text):
        found |= {word for word in shlex.split(match.group(1)) if not word.startswith("-")}
    return found


def test_ci_installs_every_debian_package_the_tests_need() -> None:
    installed = ci_debian_packages()
    assert "make" in installed
    for tool in TOOLS.values():
        assert set(tool.debian_packages) <= installed, (tool.name, tool.debian_packages)


def test_readme_names_every_debian_package_the_machine_needs() -> None:
    start_here = sections()["Start here"]
    for tool in TOOLS.values():
        for package in tool.debian_packages:
            assert f"`{package}`" in start_here, package
