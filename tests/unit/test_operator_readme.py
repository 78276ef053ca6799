"""README's commands run as written: every ``chat-archiver`` and ``celery -A worker`` line of its
shell blocks is a real command with real options and files, and the bare-host instructions use no
compose-only host (tests/integration/test_operator_readme_walk.py runs the simulator walk)."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from config.accounts import load_accounts
from tests.unit.test_compose import DEPLOY, ENV, ROOT, check_entry_point

README = (ROOT / "README.md").read_text(encoding="utf-8")
RUNNABLE = ("chat-archiver ", "celery -A worker ")


def sections() -> dict[str, str]:
    """README's text under each heading."""
    parts = re.split(r"^(#{2,3} .+)$", README, flags=re.M)
    return {title.lstrip("# "): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def shell_lines(text: str) -> list[list[str]]:
    """The words of each line of the text's ``sh`` blocks, comments and a trailing & dropped."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[-1] == "&":
                words = words[:-1]
            if words:
                lines.append(words)
    return lines


def commands(text: str) -> list[list[str]]:
    """The runnable command lines (the end of a pipe); lines that show syntax (``ID… | --all``,
    ``[--limit N]``) are not commands."""
    found = []
    for words in shell_lines(text):
        if words[0] != "chat-archiver" and "|" in words:
            words = words[len(words) - words[::-1].index("|") :]
        syntax = any("…" in word or word.startswith("[") or word == "|" for word in words)
        if shlex.join(words).startswith(RUNNABLE) and not syntax:
            found.append(words)
    return found


@pytest.mark.parametrize("argv", commands(README), ids=shlex.join)
def test_every_command_in_readme_is_a_real_command(argv: list[str]) -> None:
    check_entry_point(f"README: {shlex.join(argv)}", argv)
    for word in argv:
        if word.startswith(("deploy/", "config/")):
            assert (ROOT / word).is_file(), f"README names {word}, which does not exist"


def test_readme_has_the_commands_people_run() -> None:
    found = {shlex.join(argv) for argv in commands(README)}
    assert "chat-archiver enqueue --file deploy/demo-jobs.jsonl" in found
    assert "celery -A worker worker -l INFO -c 8" in found
    assert len(found) >= 10


def test_bare_host_instructions_use_no_compose_only_host() -> None:
    for title, body in sections().items():
        if title == "With Docker Compose":
            continue
        for words in shell_lines(body):
            line = shlex.join(words)
            assert "redis://redis" not in line and "//simulator" not in line, (title, line)


def test_local_accounts_are_the_scenario_accounts_at_the_port_readme_serves() -> None:
    [simulate] = [argv for argv in commands(README) if argv[:2] == ["chat-archiver", "simulate"]]
    port = int(simulate[simulate.index("--port") + 1])
    assert DEPLOY / simulate[simulate.index("--scenario") + 1].removeprefix("deploy/") == (
        DEPLOY / "demo-scenario.json"
    )
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        accounts = load_accounts(DEPLOY / "accounts.local.toml")
    scenario = json.loads((DEPLOY / "demo-scenario.json").read_text(encoding="utf-8"))
    assert {(a.provider, a.id, a.token.reveal()) for a in accounts} == {
        (a["provider"], a["id"], a["token"]) for a in scenario["accounts"]
    }
    assert {a.api_url for a in accounts} == {f"http://127.0.0.1:{port}"}
    for name in ("DEMO_GREEN_API_TOKEN", "DEMO_WASSENGER_API_KEY"):
        assert f"export {name}={ENV[name]}" in README


def test_readme_runs_flower_on_loopback_with_a_password() -> None:
    # Flower's default address is every interface, and without basic auth anyone who reaches it
    # can revoke jobs and stop workers: a bare host runs it as the compose file does, on loopback
    # with FLOWER_BASIC_AUTH.
    found = 0
    for title, body in sections().items():
        if title == "With Docker Compose":
            continue
        for block in re.findall(r"```sh\n(.*?)```", body, flags=re.S):
            lines = shell_lines(f"```sh\n{block}```")
            for index, words in enumerate(lines):
                if words[:4] != ["celery", "-A", "worker", "flower"]:
                    continue
                found += 1
                assert "--address=127.0.0.1" in words, (title, shlex.join(words))
                before = [shlex.join(line) for line in lines[:index]]
                auth = [line for line in before if line.startswith("export FLOWER_BASIC_AUTH=")]
                assert auth or any(w.startswith("--basic-auth=") for w in words), title
                for line in auth:
                    user, sep, password = line.split("=", 1)[1].partition(":")
                    assert user and sep and password, line
    assert found >= 1
