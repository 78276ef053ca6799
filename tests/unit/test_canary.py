"""Canary tests: the conftest's canary tokens never show, in any form, on any fault path of
issue 9 — a non-ASCII token, a token file with a second line, Basic/Bearer credentials and a
percent-encoded token in a provider's echo, credentials in api_url, a token pasted as
token_env — in error texts, log records, excerpts, dead letters, results or CLI output.

The end-to-end check with a real worker and the simulator's echo fault is in
tests/integration/test_canary_echo.py."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import respx

from config import Account, AccountRegistry, ConfigError, Secret, load_accounts
from tasks.archive.runner import ArchiveRunner, Failed, RunContext, RunEnd, Waiting
from tests.conftest import CANARY, GREEN_ID, WASSENGER_CANARY, WASSENGER_ID, Env
from tests.support import JobDesk
from worker.celery_app import create_app
from worker.logs import install_redaction
from worker.stores.endings import Endings

CANARIES = (CANARY, WASSENGER_CANARY)


def _base64_pieces(token: str) -> list[str]:
    pieces = []
    for pad in ("", "x", "xy"):
        encoded = base64.b64encode(f"{pad}{token}".encode()).decode()
        start = (len(pad) * 4 + 2) // 3
        pieces.append(encoded[start : start + 16])
    return pieces


def _decodings(text: str) -> list[str]:
    """The text, and what it says once percent-, backslash- or base64-decoded."""
    decoded = [text]
    for _ in range(3):  # percent-encoded once, twice, three times
        decoded.append(unquote(decoded[-1]))
    unescaped = text
    for _ in range(3):  # escaped once, or JSON inside JSON
        # Python's escapes are JSON's but for "\/", which it keeps (with a warning).
        with contextlib.suppress(UnicodeError), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            unescaped = unescaped.encode("latin-1", "backslashreplace").decode("unicode_escape")
            decoded.append(unescaped)
    for word in text.replace('"', " ").replace("'", " ").split():
        with contextlib.suppress(binascii.Error, ValueError):
            padded = word + "=" * (-len(word) % 4)
            decoded.append(base64.b64decode(padded, validate=False).decode("latin-1"))
    return decoded


def leaks(text: str, tokens: tuple[str, ...] = CANARIES) -> list[str]:
    """Every canary found in ``text`` in any form (any case, percent-encoded, escaped, inside
    base64): what a reader of that text could recover."""
    found = []
    for token in tokens:
        for decoded in _decodings(text):
            if token.lower() in decoded.lower():
                found.append(f"{token} in {decoded[:120]!r}")
                break
        else:
            found.extend(f"{token} as base64" for piece in _base64_pieces(token) if piece in text)
    return found


def test_the_detector_finds_what_it_must() -> None:
    """leaks() is the yardstick of every test here: it must see each form."""
    forms = [
        CANARY,
        CANARY.upper(),
        "".join(f"%{byte:02X}" for byte in CANARY.encode()),
        "".join(f"%25{byte:02x}" for byte in CANARY.encode()),
        json.dumps("".join(f"\\u{ord(char):04x}" for char in CANARY)),
        "Authorization: Basic " + base64.b64encode(f"1101:{CANARY}".encode()).decode(),
        f"{GREEN_ID}:" + base64.b64encode(f"ab{CANARY}".encode()).decode(),
    ]
    for form in forms:
        assert leaks(f"x {form} y"), form
    assert leaks("x *** y") == []


# -- refused at load: the error says why, never what -------------------------------------------


def _entry(provider: str, **fields: str) -> str:
    account_id = GREEN_ID if provider == "green-api" else WASSENGER_ID
    lines = [f'provider = "{provider}"', f'id = "{account_id}"']
    lines += [f"{key} = {value}" for key, value in fields.items()]
    return "[[accounts]]\n" + "\n".join(lines) + "\n"


def _fault_files(tmp_path: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """Each load-time fault path: (accounts file text, environment it needs)."""
    two_lines = tmp_path / "two-lines.key"
    two_lines.write_text(f"{WASSENGER_CANARY}\nsecond line {WASSENGER_CANARY}\n")
    return {
        "zero-width space in token": (
            _entry("wassenger", token_env='"TOKEN_ZWS"'),
            {"TOKEN_ZWS": WASSENGER_CANARY + "\u200b"},
        ),
        "accented letter in token": (
            _entry("wassenger", token_env='"TOKEN_ACCENT"'),
            {"TOKEN_ACCENT": WASSENGER_CANARY[:10] + "é" + WASSENGER_CANARY[10:]},
        ),
        "token_file with a second line": (
            _entry("wassenger", token_file=f'"{two_lines}"'),
            {},
        ),
        "credentials in api_url": (
            _entry(
                "green-api",
                api_url=f'"https://{GREEN_ID}:{CANARY}@7105.api.greenapi.com"',
                token_env='"TOKEN_OK"',
            ),
            {"TOKEN_OK": "an-ordinary-token-0123456789"},
        ),
        "upper-case token pasted as token_env": (
            _entry("green-api", api_url='"https://x.test"', token_env=f'"{CANARY.upper()}"'),
            {},
        ),
        "token pasted inline": (
            _entry("green-api", api_url='"https://x.test"', token=f'"{CANARY}"'),
            {},
        ),
    }


FAULTS = (
    "zero-width space in token",
    "accented letter in token",
    "token_file with a second line",
    "credentials in api_url",
    "upper-case token pasted as token_env",
    "token pasted inline",
)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_refused_account_never_shows_its_token(
    fault: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = _fault_files(tmp_path)
    assert set(faults) == set(FAULTS)
    text, env = faults[fault]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_accounts(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: account 1 (")
    assert leaks(message) == []


# Faults in a token's value: only a process that reads the tokens (it calls a provider) sees them.
IN_THE_TOKEN = {
    "zero-width space in token",
    "accented letter in token",
    "token_file with a second line",
}


@pytest.mark.parametrize("fault", FAULTS)
def test_the_cli_refuses_each_fault_in_one_line_without_the_token(
    fault: str, tmp_path: Path
) -> None:
    """`chat-archiver sweep` reads every token (it calls providers): exit 2, one line. `status`
    (the health check) reads no token: it refuses the file for a fault in the file itself, and
    never shows a token either way."""
    text, env = _fault_files(tmp_path)[fault]
    path = tmp_path / "accounts.toml"
    path.write_text(text)

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker.cli", command],
            env={**os.environ, **env, "ARCHIVER_ACCOUNTS_FILE": str(path)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    for command in ("sweep", "status"):
        done = run(command)
        assert leaks(done.stdout + done.stderr) == [], command
        if command == "status" and fault in IN_THE_TOKEN:
            assert done.returncode != 2, done.stderr
            continue
        assert (done.returncode, done.stdout) == (2, ""), (command, done.stderr)
        [line] = done.stderr.splitlines()
        says = "Error: cannot read the status: " if command == "status" else "Error: "
        assert line.startswith(f"{says}{path}: account 1 ("), line


# -- past the loader: what the worker stores and logs ----------------------------------------


@pytest.fixture
def runner_for(archiver_env: Env) -> Iterator[Callable[[Account], ArchiveRunner]]:
    client = httpx.Client(timeout=2)
    services = archiver_env.services
    app = create_app(archiver_env.settings)
    endings = Endings(services, app.backend)

    def build(account: Account) -> ArchiveRunner:
        return ArchiveRunner(
            services,
            AccountRegistry([account]),
            endings,
            client_factory=lambda: client,
            sleep=lambda _: None,
        )

    yield build
    client.close()
    app.close()


def run_job(env: Env, runner: ArchiveRunner, job: dict[str, str]) -> RunEnd:
    """Store the job as the router would, take it as the dispatcher would, run it."""
    desk = JobDesk(env.services, env.accounts)
    desk.put(job)
    task_id, kwargs, headers = desk.take()
    return runner.run((), kwargs, RunContext(task_id, "w@h", headers))


def _everything_in_redis(env: Env) -> str:
    """Every key and value of our Redis, as text: results, dead letters, parked jobs, marks."""
    chunks = []
    for key in env.redis.scan_iter():
        kind = env.redis.type(key)
        chunks.append(str(key))
        if kind == "string":
            chunks.append(str(env.redis.get(key)))
        elif kind == "hash":
            chunks.append(json.dumps(env.redis.hgetall(key)))
        elif kind == "list":
            chunks.append(json.dumps(env.redis.lrange(key, 0, -1)))
        elif kind in ("set", "zset"):
            members = env.redis.smembers(key) if kind == "set" else env.redis.zrange(key, 0, -1)
            chunks.append(json.dumps(sorted(members)))
    return "\n".join(chunks)


def test_a_non_ascii_token_that_reaches_a_worker_pauses_the_account_without_leaking(
    archiver_env: Env,
    runner_for: Callable[[Account], ArchiveRunner],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The loader refuses such a token; were one built some other way, the adapter turns the
    UnicodeEncodeError (which carries the whole header value) into an account pause."""
    install_redaction()
    caplog.set_level(logging.INFO)
    token = WASSENGER_CANARY + "\u200b"
    account = Account(
        "wassenger",
        WASSENGER_ID,
        "http://provider.test",
        Secret(token),
        archiver_env.accounts.get("wassenger", WASSENGER_ID).rates,
    )
    job = {"provider": "wassenger", "account": WASSENGER_ID, "chat_id": "79001234567@c.us"}
    with respx.mock(assert_all_called=False) as mock:
        route = mock.route().respond(200)
        ending = run_job(archiver_env, runner_for(account), job)
    assert route.call_count == 0
    assert isinstance(ending, Waiting) and "paused (account_unavailable)" in ending.why
    logged = "\n".join(logging.Formatter().format(record) for record in caplog.records)
    assert caplog.records
    assert leaks(repr(ending) + logged + _everything_in_redis(archiver_env)) == []


@pytest.mark.parametrize(
    "echo",
    [
        "percent-encoded token",
        "basic credentials",
        "bearer token",
        "json-escaped path",
        "lower-case percent-encoded path",
    ],
)
def test_a_provider_echoing_the_token_leaves_no_trace_in_dead_letters_or_logs(
    archiver_env: Env,
    runner_for: Callable[[Account], ArchiveRunner],
    caplog: pytest.LogCaptureFixture,
    echo: str,
) -> None:
    install_redaction()
    caplog.set_level(logging.INFO)
    path = f"/waInstance{GREEN_ID}/archiveChat/{CANARY}"
    body = {
        "percent-encoded token": "bad request for token "
        + "".join(f"%{b:02X}" for b in CANARY.encode()),
        "basic credentials": "echo: Authorization: Basic "
        + base64.b64encode(f"{GREEN_ID}:{CANARY}".encode()).decode(),
        "bearer token": f"echo: authorization: bearer {CANARY}",
        "json-escaped path": json.dumps({"path": "".join(f"\\u{ord(c):04x}" for c in path)}),
        "lower-case percent-encoded path": "".join(f"%{b:02x}" for b in path.encode()),
    }[echo]
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    job = {"provider": "green-api", "account": GREEN_ID, "chat_id": "79001234567@c.us"}
    state = f"http://provider.test/waInstance{GREEN_ID}/getStateInstance/{CANARY}"
    with respx.mock() as mock:
        mock.post(f"http://provider.test{path}").respond(418, text=body)
        # An undocumented answer is the job's only while the instance is authorized.
        mock.get(state).respond(200, json={"stateInstance": "authorized"})
        ending = run_job(archiver_env, runner_for(account), job)
    assert isinstance(ending, Failed) and ending.result["reason"] == "unexpected_response"
    result = ending.result
    entry = archiver_env.services.dead_letters.read(result["dead_letter_id"])
    assert entry is not None and entry.excerpt  # the excerpt is kept, masked
    logged = "\n".join(logging.Formatter().format(record) for record in caplog.records)
    stored = json.dumps(result) + entry.to_json() + logged + _everything_in_redis(archiver_env)
    assert leaks(stored) == []
