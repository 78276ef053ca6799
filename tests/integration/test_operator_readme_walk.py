"""README's bare-host walk through the simulator ("Start here"), run as written: the
simulator serving deploy/demo-scenario.json, a worker reading deploy/accounts.local.toml,
`chat-archiver enqueue --file deploy/demo-jobs.jsonl`, then `chat-archiver dlq list`; then the
simulator's switches as README prints them (a refused token, a paused account, its recovery) and
every body of its switch table."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import eventually
from tests.unit.test_compose import DEPLOY, ENV, ROOT
from worker.sandbox.local import WORKER_READY, CeleryProcess, free_port
from worker.sandbox.simulator import SimulatorClient

pytestmark = pytest.mark.integration

README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("\n## Start here\n") : README.index("\n## Running it for real\n")]


def switch_commands() -> list[tuple[list[str], str]]:
    """The walk's simulator-switch block: each command's words, and its comment (what it
    prints)."""
    [block] = [b for b in re.findall(r"```sh\n(.*?)```", SECTION, flags=re.S) if "/_sim/" in b]
    found = []
    for line in block.splitlines():
        command, _, comment = line.partition(" # ")
        found.append((shlex.split(command), comment.strip()))
    return found


def switch_bodies() -> list[dict[str, Any]]:
    """The JSON bodies of the switch table."""
    return [json.loads(body) for body in re.findall(r"^\| `(\{.*?\})` \|", SECTION, flags=re.M)]


def test_the_bare_host_walk_through_the_simulator_works(redis_url: str, tmp_path: Path) -> None:
    """README's simulator walk, with two substitutions: the test Redis for localhost:6379 and a
    free port for 8080 (which may be taken here)."""
    port = free_port()
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        (DEPLOY / "accounts.local.toml").read_text().replace(":8080", f":{port}"),
    )
    env = {
        **os.environ,
        "ARCHIVER_BROKER_URL": redis_url,
        "ARCHIVER_ACCOUNTS_FILE": str(accounts),
        "DEMO_GREEN_API_TOKEN": ENV["DEMO_GREEN_API_TOKEN"],
        "DEMO_WASSENGER_API_KEY": ENV["DEMO_WASSENGER_API_KEY"],
        # The account's first probe a second after it pauses, not README's 30 s.
        "ARCHIVER_CIRCUIT_COOLDOWN": "1",
    }
    cli = [sys.executable, "-m", "worker.cli"]
    simulator = subprocess.Popen(
        [*cli, "simulate", "--port", str(port), "--scenario", "deploy/demo-scenario.json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = CeleryProcess(
        ["worker", "-l", "INFO", "-c", "2", "--without-gossip", "--without-mingle"],
        env,
        tmp_path / "worker.log",
        cwd=ROOT,
    )
    try:
        worker.start().wait_for_log(WORKER_READY, timeout=60)
        enqueued = subprocess.run(
            [*cli, "enqueue", "--file", "deploy/demo-jobs.jsonl"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert enqueued.returncode == 0, enqueued.stdout + enqueued.stderr
        assert enqueued.stdout.strip() == "read 11 rows: enqueued 11, already pending 0, refused 0"

        def three_dead_letters() -> list[dict[str, Any]] | None:
            listed = subprocess.run(
                [*cli, "dlq", "list", "--json"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            found = json.loads(listed.stdout)
            return found if len(found) >= 3 else None

        dead = eventually(three_dead_letters, 60, "three dead letters", 0.5)
        assert sorted(e["job"]["request_id"] for e in dead) == ["demo-11", "demo-6", "demo-7"]
        with SimulatorClient(f"http://127.0.0.1:{port}") as sim:
            assert sim.chat("green-api", "1101000001", "79001000001@c.us")["archived"]
            assert sim.chat("wassenger", "64a1f0c2b3d4e5f601234567", "447362053577@c.us")[
                "archived"
            ]
            walk_the_switches(cli, env, port, sim)
    finally:
        worker.stop()
        simulator.terminate()
        simulator.wait(10)


def walk_the_switches(cli: list[str], env: dict[str, str], port: int, sim: SimulatorClient) -> None:
    """README's switch block as printed (the port substituted): the token refused, a job
    enqueued, status naming the paused account as the comment says, the token accepted, the
    job archived; then every body of the switch table, accepted by the simulator."""
    commands = switch_commands()
    assert [argv[0] for argv, _ in commands] == ["curl", "chat-archiver", "chat-archiver", "curl"]
    refuse, enqueue, status, accept = commands
    for argv, _ in (refuse, enqueue):
        done = run_as_printed(cli, env, port, argv[0], argv[1:])
        assert done.returncode == 0, done.stdout + done.stderr
    says = status[1]
    assert says.startswith("wassenger:64a1f0c2b3d4e5f601234567 paused (unauthorized)")

    def status_says() -> bool:
        done = run_as_printed(cli, env, port, "chat-archiver", status[0][1:])
        assert done.returncode == 0, done.stdout + done.stderr  # one paused account: a note
        return says in done.stdout

    eventually(status_says, 60, f"status saying {says!r}", 0.5)
    done = run_as_printed(cli, env, port, "curl", accept[0][1:])
    assert done.returncode == 0 and "error" not in json.loads(done.stdout), done.stdout
    chat = enqueue[0][enqueue[0].index("--chat-id") + 1]
    eventually(
        lambda: sim.chat("wassenger", "64a1f0c2b3d4e5f601234567", chat)["archived"],
        60,
        "the parked job archived once the token is accepted",
        0.5,
    )

    bodies = switch_bodies()
    assert len(bodies) >= 5
    for body in bodies:
        green = any(word in json.dumps(body) for word in ("sleep_mode", "false_already", "Chat"))
        target = "green-api/1101000001" if green else "wassenger/64a1f0c2b3d4e5f601234567"
        answer = httpx.patch(f"http://127.0.0.1:{port}/_sim/accounts/{target}", json=body)
        assert answer.status_code == 200, (body, answer.text)
    assert sim.account("green-api", "1101000001")["status"] == "sleep_mode"


def run_as_printed(
    cli: list[str], env: dict[str, str], port: int, program: str, args: list[str]
) -> subprocess.CompletedProcess[str]:
    """A README command: ``curl`` itself, or ``chat-archiver`` as this Python's module."""
    argv = [word.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for word in args]
    command = [program, "-sS", *argv] if program == "curl" else [*cli, *argv]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
