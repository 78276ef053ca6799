"""The package as users install it: the built wheel, installed non-editable into a fresh virtual
environment, runs the demo from a folder outside the checkout (so ``import worker`` can only find
the installed copy). An editable install hides anything the wheel leaves out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("config", "worker", "tasks")


def data_files() -> set[str]:
    """Every file the packages hold that is not Python source or documentation: what the code
    loads at run time (Lua scripts, the example accounts file)."""
    listed = subprocess.run(
        ["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return {name for name in listed if not name.endswith((".py", ".md"))}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the checkout's files (tracked or new, not ignored): a build/ or
    *.egg-info folder an editable install left behind would slip its files into the wheel."""
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in listed:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    [built] = out.glob("chat_archiver-*.whl")
    return built


def test_the_wheel_carries_every_file_the_packages_load(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = data_files()
    assert {name for name in wanted if name.endswith(".lua")}, "no Lua scripts in the checkout?"
    assert sorted(wanted - names) == []
    lua_in_wheel = [name for name in names if name.endswith(".lua")]
    assert len(lua_in_wheel) == len([name for name in wanted if name.endswith(".lua")])


def test_the_demo_runs_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # The wheel with its dependencies, resolved as a user's pip would (pip's cache makes it quick).
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ARCHIVER_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = subprocess.run(
        [str(python), "-c", "import worker; print(worker.__file__)"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(env_dir)), f"worker imported from {where}, not the wheel"
    demo = subprocess.run(
        [str(env_dir / "bin" / "chat-archiver"), "demo"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert demo.returncode == 0, (demo.stdout + demo.stderr)[-3000:]
    assert "FileNotFoundError" not in demo.stdout + demo.stderr
