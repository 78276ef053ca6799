"""Property: whatever the accounts file holds, loading it either fails with one plain line (a
ConfigError; `chat-archiver status` then exits 2) or gives a sane registry, and never raises
anything else, hangs, or shows a token.

Documents are generated from the accounts file's own keys with values drawn from pools of good,
bad and hostile ones (look-alike digits, dangerous URLs, absurd rates, FIFOs and devices as
token files...), serialised to TOML, and then, often, mutated as bytes (truncated, spliced with
random or non-UTF-8 bytes, nested thousands deep) as a careless editor or a broken pipeline
would. On main, 300 such files gave 15 tracebacks and a hang.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import PROVIDERS, AccountRegistry, ConfigError, load_accounts
from config.accounts import MAX_TOKEN_LENGTH, MIN_TOKEN_LENGTH
from config.sweep import MIN_EVERY, MIN_INACTIVE_AFTER
from config.units import MAX_DURATION, MAX_RATE, MAX_RATE_PERIOD, MIN_RATE
from config.urls import check_api_url
from tests.conftest import CANARY, GREEN_ID, WASSENGER_CANARY, WASSENGER_ID

EXAMPLES = 1000
# A loader that takes longer than this on a file under a megabyte is hanging.
HANG_SECONDS = 5.0
HEX_TOKEN = CANARY.upper().replace("_", "")

# -- the pools -------------------------------------------------------------------------------

PROVIDER_NAMES = ["green-api", "wassenger", "Green-API", "telegram", "", "green-api\n"]
IDS = [
    GREEN_ID,
    WASSENGER_ID,
    WASSENGER_ID.upper(),
    f" {GREEN_ID}\n",
    f"0{GREEN_ID}",
    "".join(chr(0x0660 + int(d)) for d in GREEN_ID),  # Arabic-Indic digits
    "".join(chr(0xFF10 + int(d)) for d in GREEN_ID),  # fullwidth digits
    GREEN_ID + "\u200b",
    "1101000001",
    "12345",
    "9" * 40,
]
URLS = [
    "https://7105.api.greenapi.com",
    "https://api.wassenger.com/",
    "http://127.0.0.1:8080",
    "http://localhost:9",
    "http://provider.test",
    "http://simulator:8080",
    "https://10.0.0.8",
    f"https://user:{CANARY}@api.green-api.com",
    "http://api.green-api.com@evil.example",
    "http://169.254.169.254",
    "http://2852039166",
    "http://0xa9fea9fe",
    "http://[fd00:ec2::254]",
    "http://[::ffff:169.254.169.254]",
    "http://127.0.0.1:6379",
    "http://evil.example/?steal=",
    "https://g\u043e\u043egle.com",
    "https://bücher.example",
    "https://api.green-api.com\r\n",
    "https://api.green-api.com:99999",
    "ftp://x.test",
    "https://",
    "http://[::1",
]
TOKEN_ENVS = [
    "FUZZ_GOOD",
    "FUZZ_ZWS",
    "FUZZ_ACCENT",
    "FUZZ_SHORT",
    "FUZZ_TWO_LINES",
    "FUZZ_LONG",
    "FUZZ_UNSET",
    HEX_TOKEN,
    CANARY,
    "lower_case",
    "",
]
TOKEN_FILES = ["good", "crlf", "two-lines", "empty", "zws", "big", "latin1", "fifo", "dir"]
RATES = [
    "10/s",
    "600/m",
    "1/2s",
    "1/d",
    "1000/s",
    "0/s",
    "1001/s",
    "1" * 400 + "/s",
    "1e30/s",
    "1e-7/s",
    "inf/s",
    "nan/s",
    "0.0000001/s",
    "1/0s",
    "\u0661\u0660/s",
    "10/s\n",
    "",
]
DURATIONS = ["30d", "6h", "1h", "59m", "1s", "0.001s", "0s", "inf", "1e400d", "99999999d", "-1d"]
SCHEDULES = ["0 3 * * *", "*/0 * * * *", "* * * *", "61 * * * *", "[/x] * * * *", "a b c d e"]
KEYS = [
    "provider",
    "id",
    "api_url",
    "allow_private",
    "token_env",
    "token_file",
    "rate_limit",
    "rate_limits",
    "name",
    "sweep",
]
METHODS = ["archiveChat", "getChats", "archive", "listChats", "nope", "get\nChats"]
SWEEP_KEYS = ["enabled", "inactive_after", "schedule", "every", "statuses", "exclude_labels"]

# Values of the wrong type or shape, TOML can hold them all. A fixed pool draws much faster than
# composing them each time, and the text strategy below still brings arbitrary strings.
ODD_VALUES: list[Any] = [
    0,
    -1,
    7105187566,
    2**63 - 1,
    1.5,
    float("inf"),
    float("nan"),
    True,
    [],
    ["10/s"],
    [1, "a"],
    [[[]]],
    {},
    {"a": 1},
    {"every": {"x": []}},
    "",
    " ",
    "\n",
    "[/bold]",
    "\x1b[31m",
    "\u200b",
    "\ud800",
    "é" * 50,
    "x" * 5000,
]
anything = st.one_of(st.sampled_from(ODD_VALUES), st.text(max_size=12))


def pool(values: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value from the pool, sometimes anything at all."""
    return st.one_of(st.sampled_from(values), st.sampled_from(values), anything)


RATE_NUMBERS = st.decimals(min_value=0, max_value=10**12, places=3) | st.sampled_from(
    ["0.00000001", "1" * 15, "1.0000001", "00010"]
)
RATE_UNITS = st.sampled_from(["s", "m", "h", "d", "2s", "0s", "w"])
rates = st.one_of(
    st.sampled_from(RATES),
    st.builds(lambda number, unit: f"{number}/{unit}", RATE_NUMBERS, RATE_UNITS),
)
SWEEP_VALUES = {
    "enabled": st.booleans(),
    "inactive_after": pool(DURATIONS),
    "schedule": pool(SCHEDULES),
    "every": pool(DURATIONS),
    "statuses": st.lists(st.text(max_size=10), max_size=3),
    "exclude_labels": st.lists(st.text(max_size=10), max_size=3),
    "max_share": pool([0.25, 1.0, 1, 0.0, -0.5, 1.5, float("nan"), True]),
    "max_chats": pool([2000, 1, 0, -1, 10**12, 2.5]),
    "journals_complete_since": pool(
        ["2026-11-01T00:00:00Z", "2026-11-01", "2999-01-01T00:00:00Z", "x", "2026-13-01T00:00Z"]
    ),
}
sweeps = st.fixed_dictionaries({}, optional=SWEEP_VALUES)

VALID = {
    "green-api": {
        "id": ["7105187566", "1101000001", "710518756612"],
        "api_url": ["https://7105.api.greenapi.com", "http://127.0.0.1:8080"],
    },
    "wassenger": {
        "id": [WASSENGER_ID, "64a1f0c2b3d4e5f601234567", "0123456789ABCDEF01234567"],
        "api_url": ["https://api.wassenger.com", "http://localhost:9"],
    },
}
VALID_SWEEPS = [{}, {"every": "6h", "inactive_after": "30d"}, {"schedule": "0 3 * * *"}]


def documents(token_dir: str) -> st.SearchStrategy[bytes]:
    """Accounts files as bytes. The strategies are built once: hypothesis works out each new
    strategy object's properties on first use, which cost more than the drawing itself."""
    values: dict[str, st.SearchStrategy[Any]] = {
        "provider": pool(PROVIDER_NAMES),
        "id": pool(IDS),
        "api_url": pool(URLS),
        "allow_private": st.one_of(st.booleans(), anything),
        "token_env": pool(TOKEN_ENVS),
        "token_file": st.one_of(
            st.sampled_from(TOKEN_FILES).map(lambda name: f"{token_dir}/{name}"),
            st.sampled_from(["/dev/zero", "/nonexistent", CANARY.lower(), "", "a\0b"]),
        ),
        "rate_limit": st.one_of(rates, anything),
        "rate_limits": st.dictionaries(st.sampled_from(METHODS), rates, max_size=3),
        "name": st.text(max_size=30),
        "sweep": st.one_of(sweeps, anything),
    }
    spoilers = st.sampled_from([*KEYS, "extra"])
    extra_keys = st.text(min_size=1, max_size=10)
    providers = st.sampled_from(sorted(VALID))
    valid = {
        provider: {field: st.sampled_from(choices) for field, choices in fields.items()}
        for provider, fields in VALID.items()
    }
    valid_rates = st.sampled_from(["10/s", "1/d", "1000/s", "600/m"])
    valid_sweeps = st.sampled_from(VALID_SWEEPS)
    how_many, one_in_four = st.integers(0, 3), st.integers(0, 3)

    @st.composite
    def account_tables(draw: st.DrawFn) -> dict[str, Any]:
        provider = draw(providers)
        table: dict[str, Any] = {
            "provider": provider,
            "id": draw(valid[provider]["id"]),
            "api_url": draw(valid[provider]["api_url"]),
            "token_env": "FUZZ_GOOD",
        }
        if draw(st.booleans()):
            table["rate_limit"] = draw(valid_rates)
        if draw(st.booleans()):
            table["sweep"] = draw(valid_sweeps)
        # Then spoil it: none, one or a few keys replaced, dropped or added.
        for _ in range(draw(how_many)):
            key = draw(spoilers)
            if key == "extra":
                table[draw(extra_keys)] = draw(anything)
            elif key in table and draw(one_in_four) == 0:
                del table[key]
            else:
                table[key] = draw(values[key])
        return table

    tables = st.lists(account_tables(), max_size=3)
    odd_keys = st.text(max_size=10)
    shapes = st.integers(0, 19)

    @st.composite
    def document(draw: st.DrawFn) -> bytes:
        shape = draw(shapes)
        if shape == 0:
            content: Any = {"accounts": draw(anything)}
        elif shape == 1:
            content = {draw(odd_keys): draw(anything)}
        else:
            content = {"accounts": draw(tables)}
        return mutate(draw, toml_text(content).encode())

    return document()


MUTATIONS = st.integers(0, 9)
POSITIONS = st.integers(0, 2**20)  # taken modulo the length: one strategy for every file
SPLICES = st.binary(min_size=1, max_size=8)
DEPTHS = st.integers(100, 5000)


def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """As a careless editor or a broken pipeline would leave the file."""
    kind = draw(MUTATIONS)
    if kind <= 4 or not data:
        return data
    at = draw(POSITIONS) % (len(data) + 1)
    if kind == 5:
        return data[:at]  # truncated
    if kind == 6:
        return data[:at] + draw(SPLICES) + data[at:]  # spliced
    if kind == 7:
        return data[:at] + b"\xff\xfe\xc3(" + data[at:]  # not UTF-8
    if kind == 8:
        depth = draw(DEPTHS)
        return data + b"\nx = " + b"[" * depth + b"]" * depth + b"\n"  # nested deep
    lines = data.split(b"\n")
    line = at % len(lines)
    return b"\n".join([*lines[: line + 1], *lines[line:]])  # a line twice


# -- TOML out --------------------------------------------------------------------------------


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F or 0xD800 <= ord(char) <= 0xDFFF:
            # Control characters escaped; lone surrogates cannot be written at all.
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0xD800 else "?")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_text(document: dict[str, Any]) -> str:
    tables = document.get("accounts")
    if isinstance(tables, list) and all(isinstance(table, dict) for table in tables):
        rest = {key: value for key, value in document.items() if key != "accounts"}
        lines = [f"{_key(key)} = {_value(value)}" for key, value in rest.items()]
        for table in tables:
            lines.append("[[accounts]]")
            lines += [f"{_key(str(key))} = {_value(value)}" for key, value in table.items()]
        return "\n".join(lines) + "\n"
    return "".join(f"{_key(str(key))} = {_value(value)}\n" for key, value in document.items())


# -- what must hold ----------------------------------------------------------------------------


def assert_sane(registry: AccountRegistry) -> None:
    keys = set()
    for account in registry:
        spec = PROVIDERS[account.provider]
        assert spec.normalise_account_id(account.id) == account.id
        assert (account.provider, account.id) not in keys
        keys.add((account.provider, account.id))
        assert check_api_url(account.api_url, allow_private=account.allow_private) == (
            account.api_url
        )
        assert set(account.rates) == set(spec.method_rates)
        for rate in account.rates.values():
            assert MIN_RATE <= rate.per_second <= MAX_RATE and 0 < rate.period <= MAX_RATE_PERIOD
            assert math.isfinite(rate.interval)
        token = account.token.reveal()
        assert MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH
        assert all("!" <= char <= "~" for char in token)
        assert account.name.isprintable() and len(account.name) <= 100
        if account.sweep is not None:
            assert MIN_INACTIVE_AFTER <= account.sweep.inactive_after <= MAX_DURATION
            assert account.sweep.every is None or MIN_EVERY <= account.sweep.every <= MAX_DURATION
            assert 0 < account.sweep.max_share <= 1 and account.sweep.max_chats >= 1


def assert_one_plain_line(error: ConfigError) -> None:
    message = str(error)
    assert message and len(error.problems) == 1
    assert message.isprintable(), message  # no newline, no control character, no surrogate
    assert len(message) < 1000
    for secret in (CANARY, WASSENGER_CANARY, HEX_TOKEN):
        assert secret.lower() not in message.lower(), message


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"the loader took more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- the test ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("tokens")
    files = {
        "good": f"{WASSENGER_CANARY}\n",
        "crlf": f"{WASSENGER_CANARY}\r\n",
        "two-lines": f"{WASSENGER_CANARY}\nsecond\n",
        "empty": "",
        "zws": f"{WASSENGER_CANARY}\u200b",
        "big": "a" * 10_000,
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    (directory / "latin1").write_bytes(b"caf\xe9-token-0123456789")
    os.mkfifo(directory / "fifo")
    (directory / "dir").mkdir()
    environment = {
        "FUZZ_GOOD": CANARY,
        "FUZZ_ZWS": CANARY + "\u200b",
        "FUZZ_ACCENT": CANARY[:5] + "é" + CANARY[5:],
        "FUZZ_SHORT": "short",
        "FUZZ_TWO_LINES": f"{CANARY}\n{CANARY}",
        "FUZZ_LONG": "t" * 5000,
    }
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    yield directory
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.mark.timeout(300)
def test_any_accounts_file_loads_sane_or_fails_in_one_line(token_dir: Path) -> None:
    stats: Counter[str] = Counter()
    path = token_dir.parent / "fuzzed-accounts.toml"
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=documents(str(token_dir)))
    def check(data: bytes) -> None:
        stats["examples"] += 1
        path.write_bytes(data)
        try:
            with no_hang(HANG_SECONDS):
                registry = load_accounts(path)
        except ConfigError as error:
            stats["refused"] += 1
            assert_one_plain_line(error)
            return
        stats["accepted"] += 1
        stats["accounts"] += len(registry)
        assert_sane(registry)

    check()
    seconds = time.monotonic() - started
    print(f"\nfuzzed accounts files: {dict(stats)} in {seconds:.1f}s")
    assert stats["examples"] >= EXAMPLES
    # Both sides of the property were exercised, not just one.
    assert stats["refused"] >= EXAMPLES // 4 and stats["accepted"] >= EXAMPLES // 50
    assert stats["accounts"] >= EXAMPLES // 50


def _status(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "status"],
        env={**os.environ, "ARCHIVER_ACCOUNTS_FILE": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


CLI_CASES = {
    "recursion": "x = " + "[" * 3000 + "]" * 3000 + "\n",
    "not utf-8": '[[accounts]]\nname = "caf\xe9"\n',
    "a rate of 1e400/s": (
        f'[[accounts]]\nprovider = "green-api"\nid = "{GREEN_ID}"\n'
        f'api_url = "https://x.test"\ntoken_env = "X"\nrate_limit = "{"1" * 400}/s"\n'
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_status_exits_2_with_one_line_on_files_that_broke_main(case: str, tmp_path: Path) -> None:
    """On main `chat-archiver status` gave a traceback (recursion, not UTF-8) or accepted the
    file (a rate of 1e400/s, which later divides by zero)."""
    path = tmp_path / "accounts.toml"
    path.write_bytes(CLI_CASES[case].encode("latin-1" if case == "not utf-8" else "utf-8"))
    done = _status(path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot read the status: {path}")
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(120)
def test_status_never_opens_a_token_file(token_dir: Path, tmp_path: Path) -> None:
    """On main a FIFO as token file hung `chat-archiver status`; status reads no token now (it
    calls no provider), so it goes on to Redis, which this test's environment does not reach."""
    path = tmp_path / "accounts.toml"
    fifo = token_dir / "fifo"
    path.write_text(
        f'[[accounts]]\nprovider = "wassenger"\nid = "{WASSENGER_ID}"\ntoken_file = "{fifo}"\n'
    )
    done = _status(path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("unhealthy:\n  - cannot read the status from Redis")


def test_status_prints_an_error_with_brackets_literally(tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text('"[/x]" = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_accounts(path)
    done = _status(path)
    assert (done.returncode, done.stderr) == (2, f"Error: cannot read the status: {caught.value}\n")
