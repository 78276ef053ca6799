"""The accounts loader never tracebacks and never hangs: bounded reads of regular files only,
secrets checked (and never shown), every value type- and range-checked, every error one line
naming the account and the field."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from config import AccountRegistry, ConfigError, load_accounts
from config.accounts import ACCOUNTS_FILE_LIMIT, TOKEN_FILE_LIMIT
from tests.conftest import GREEN_ID, WASSENGER_ID

TOKEN = "CANARYl0ader9f8e7d6c5b4a"
HEX_TOKEN = "9F3A0C5E7B1D2468ACE02468BDF13579"  # an upper-case hex token, shaped like a name

Write = Callable[[str], Path]


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Write:
    monkeypatch.setenv("GOOD_TOKEN", TOKEN)

    def _write(text: str) -> Path:
        path = tmp_path / "accounts.toml"
        path.write_text(textwrap.dedent(text))
        return path

    return _write


def green(**fields: str) -> str:
    values = {
        "provider": '"green-api"',
        "id": f'"{GREEN_ID}"',
        "api_url": '"https://7105.api.greenapi.com"',
        "token_env": '"GOOD_TOKEN"',
        **fields,
    }
    lines = [f"{key} = {value}" for key, value in values.items() if value]
    return "[[accounts]]\n" + "\n".join(lines) + "\n"


def refused(path: Path) -> str:
    """The one line a refused file gives, checked to be one line that shows no secret."""
    with pytest.raises(ConfigError) as caught:
        load_accounts(path)
    message = str(caught.value)
    assert message and "\n" not in message and "\r" not in message
    assert message.isprintable()
    for secret in (TOKEN, HEX_TOKEN, TOKEN[6:20].lower()):
        assert secret.lower() not in message.lower()
    return message


# -- secrets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (TOKEN + "\u200b", "a non-ASCII character (a zero-width space"),
        (TOKEN[:10] + "é" + TOKEN[10:], "a non-ASCII character"),
        (TOKEN + " ", "whitespace at position 25 of 25"),
        (TOKEN + "\n", "a line break at position 25"),
        (TOKEN[:12] + "\x1b[31m", "a control character at position 13"),
        ("short-tok", "is 9 characters long: a token has at least 16"),
        ("x" * 2000, "longer than 1024 characters"),
    ],
)
def test_an_unusable_token_in_the_environment_is_refused_without_showing_it(
    write: Write, monkeypatch: pytest.MonkeyPatch, value: str, why: str
) -> None:
    monkeypatch.setenv("BAD_TOKEN", value)
    message = refused(write(green(token_env='"BAD_TOKEN"')))
    assert f"account 1 (green-api {GREEN_ID}): token_env: the value of BAD_TOKEN" in message
    assert why in message


@pytest.mark.parametrize(
    "name",
    [
        HEX_TOKEN,  # passes for a variable name on main, then printed in "is not set"
        "D75B3A66374942C5B3C019C698ABC2067E151558ACBD412345",
        "GREEN_" + HEX_TOKEN,
        "abc123-pasted-token-value",
    ],
)
def test_a_token_pasted_as_token_env_is_refused_without_showing_it(write: Write, name: str) -> None:
    message = refused(write(green(token_env=f'"{name}"')))
    assert "token_env:" in message
    assert name not in message and name[4:16] not in message


def test_a_plausible_variable_name_is_accepted_and_named_when_unset(write: Write) -> None:
    names = (
        "GREEN_API_TOKEN_7105",
        f"GREEN_API_TOKEN_{GREEN_ID}",
        "WASSENGER_API_KEY",
        f"WASSENGER_API_KEY_{WASSENGER_ID.upper()}",  # a device id is no token
        "TOKEN2",
        "A_B_C_D_E_F_1_2_3",
    )
    for name in names:
        message = refused(write(green(token_env=f'"{name}"')))
        assert message.endswith(f"token_env: environment variable {name} is not set")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (f"{TOKEN}\nsecond-line", "holds more than one line"),
        (f"{TOKEN}\r\nsecond-line\r\n", "holds more than one line"),
        (f"{TOKEN}\n\n", "holds more than one line"),
        ("", "is empty"),
        ("\n", "is empty"),
        (f"{TOKEN}\u200b\n", "a non-ASCII character"),
        (f"{TOKEN[:8]}\t{TOKEN[8:]}", "whitespace"),
    ],
)
def test_a_token_file_holds_one_line_of_printable_ascii(
    write: Write, tmp_path: Path, content: str, why: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    message = refused(write(green(token_env="", token_file=f'"{token_file}"')))
    assert "token_file:" in message and why in message


@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_a_token_file_may_end_with_one_newline(write: Write, tmp_path: Path, ending: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes((TOKEN + ending).encode())
    registry = load_accounts(write(green(token_env="", token_file=f'"{token_file}"')))
    assert registry.get("green-api", GREEN_ID).token.reveal() == TOKEN


@pytest.mark.timeout(20)
def test_a_fifo_a_device_or_a_directory_as_token_file_is_refused_at_once(
    write: Write, tmp_path: Path
) -> None:
    """A FIFO nobody writes to hung the loader (and `status`); /dev/zero ran it out of
    memory. Both are refused before anything is read."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link-to-fifo"
    link.symlink_to(fifo)
    for path, kind in (
        (fifo, "is a FIFO"),
        (link, "is a FIFO"),
        ("/dev/zero", "is a character device"),
        (tmp_path, "is a directory"),
    ):
        message = refused(write(green(token_env="", token_file=f'"{path}"')))
        assert f"token_file: '{path}' {kind}, not a regular file" in message


def test_a_large_or_unreadable_token_file_is_refused(write: Write, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"a" * (TOKEN_FILE_LIMIT + 1))
    message = refused(write(green(token_env="", token_file=f'"{big}"')))
    assert "is 4,097 bytes, larger than the 4,096 bytes allowed" in message
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + TOKEN.encode())
    message = refused(write(green(token_env="", token_file=f'"{binary}"')))
    assert "is not UTF-8 text" in message
    missing = refused(write(green(token_env="", token_file=f'"{tmp_path}/none\\nx"')))
    assert "'" in missing and "does not exist" in missing  # the newline shown escaped


def test_a_token_pasted_as_token_file_is_not_shown(write: Write) -> None:
    message = refused(write(green(token_env="", token_file=f'"{TOKEN.lower()}"')))
    assert "token_file: holds what looks like a token" in message


# -- the file ---------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_the_accounts_file_itself_must_be_a_small_regular_utf8_file(
    tmp_path: Path, write: Write
) -> None:
    fifo = tmp_path / "accounts.fifo"
    os.mkfifo(fifo)
    assert "is a FIFO, not a regular file" in refused(fifo)
    assert "is a character device" in refused(Path("/dev/zero"))
    assert "is a directory" in refused(tmp_path)
    big = tmp_path / "big.toml"
    with big.open("wb") as sparse:  # refused on its size, before a byte is read
        sparse.truncate(ACCOUNTS_FILE_LIMIT + 1)
    assert f"is {ACCOUNTS_FILE_LIMIT + 1:,} bytes, larger than the" in refused(big)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(green(name='"caf\xe9"').encode("latin-1"))
    assert "not UTF-8 text (byte" in refused(latin)
    assert refused(tmp_path / "missing.toml").startswith("ARCHIVER_ACCOUNTS_FILE: ")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("x = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("x = " + "{a=" * 3000 + "1" + "}" * 3000, "not valid TOML"),
        ("x = " + "9" * 5000, "not valid TOML"),
        ("[[accounts]]\n[[accounts\n", "not valid TOML"),
        ("accounts = 5", "accounts must be an array of tables"),
        ("accounts = [1, 2]", "account 1: must be a table of keys"),
        ('accounts = ["[/x]"]', "account 1: must be a table"),
        ('"[/bold]\\nkey" = 1', "unknown top-level key '[/bold]\\nkey'"),
        (f'"{TOKEN}" = 1', "unknown top-level key (a key shaped like a token, not shown)"),
        ("[accounts]\nprovider = 1", "accounts must be an array of tables"),
    ],
)
def test_malformed_documents_fail_in_one_line(write: Write, text: str, why: str) -> None:
    assert why in refused(write(text))


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"id": "7105187566"}, "id: Input should be a valid string"),
        ({"id": "[1, 2]"}, "id: Input should be a valid string"),
        ({"provider": "{ a = 1 }"}, "provider: Input should be a valid string"),
        ({"provider": '"telegram\\n"'}, "provider: unknown provider 'telegram\\n'"),
        ({"rate_limit": "10"}, "rate_limit: Input should be a valid string"),
        ({"rate_limit": '"' + "1" * 400 + '/s"'}, "is not a rate"),  # ZeroDivisionError on main
        ({"rate_limit": '"1e30/s"'}, "is not a rate"),
        ({"rate_limit": '"1000000/s"'}, "a rate must be between 1/d and 1000/s"),
        ({"rate_limit": '"1/7d"'}, "the period must be at most a day"),
        ({"rate_limits": "5"}, "rate_limits: Input should be a valid dictionary"),
        ({"rate_limits": '{ "get\\nChats" = "1/s" }'}, "rate_limits.'get\\nChats': unknown"),
        ({"rate_limits": '{ getChats = "0.00001/s" }'}, "rate_limits.getChats: '0.00001/s'"),
        ({"name": '"two\\nlines"'}, "name: must be one line of printable text"),
        ({"name": '"' + "n" * 200 + '"'}, "name: String should have at most 100 characters"),
        ({"allow_private": '"true"'}, "allow_private: Input should be a valid boolean"),
        ({"sweep": "3"}, "sweep: Input should be a valid dictionary or instance of SweepEntry"),
        ({"sweep": '{ every = "0.001s" }'}, "sweep.every: '0.001s': every must be between 1s"),
        ({"sweep": '{ every = "0.0000001s" }'}, "sweep.every: '0.0000001s' is not a duration"),
        ({"sweep": '{ every = "0.5s" }'}, "every must be between 1s and 3650d"),
        ({"sweep": '{ inactive_after = "inf" }'}, "sweep.inactive_after: 'inf' is not a dur"),
        ({"sweep": '{ inactive_after = "6m" }'}, "inactive_after must be between 1h and 3650d"),
        ({"sweep": '{ inactive_after = "99999d" }'}, "a duration must be at most 3650d"),
        ({"sweep": '{ schedule = "*/0 * * * *" }'}, "sweep.schedule: '*/0 * * * *' is not a"),
        ({"sweep": '{ schedule = "' + "* " * 500 + '" }'}, "is not a crontab"),
        ({"sweep": "{ statuses = [1] }"}, "sweep.statuses.0: Input should be a valid string"),
        ({"sweep": "{ enabled = 1 }"}, "sweep.enabled: Input should be a valid boolean"),
        ({"token": f'"{TOKEN}"'}, "token: Extra inputs are not permitted"),
        ({f'"{TOKEN}"': "1"}, "(a key shaped like a token, not shown): Extra inputs are not"),
    ],
)
def test_wrong_types_and_values_fail_in_one_line_naming_the_field(
    write: Write, fields: dict[str, str], why: str
) -> None:
    path = write(green(**fields))
    message = refused(path)
    assert message.startswith(f"{path}: account 1")
    assert why in message


def test_ids_are_normalised_before_duplicates_are_looked_for(write: Write) -> None:
    wassenger = '[[accounts]]\nprovider = "wassenger"\nid = "{id}"\ntoken_env = "GOOD_TOKEN"\n'
    message = refused(write(green() + green(id=f'"{GREEN_ID}\\n"')))
    assert message.endswith(f"account 2 (green-api '{GREEN_ID}\\n'): id: duplicate of account 1")
    message = refused(
        write(wassenger.format(id=WASSENGER_ID) + wassenger.format(id=" " + WASSENGER_ID.upper()))
    )
    assert message.endswith("id: duplicate of account 1")
    assert "is not a green-api idInstance" in refused(write(green(id=f'"0{GREEN_ID}"')))
    assert "is not a green-api idInstance" in refused(write(green(id='"\u0667\u0661\u0660\u0665"')))
    registry = load_accounts(write(green(id=f'" {GREEN_ID}\\n"')))
    assert [account.id for account in registry] == [GREEN_ID]


def test_registry_lookups_normalise_like_the_file(write: Write) -> None:
    wassenger = f'[[accounts]]\nprovider = "wassenger"\nid = "{WASSENGER_ID.upper()}"\n'
    registry: AccountRegistry = load_accounts(
        write(green() + wassenger + 'token_env = "GOOD_TOKEN"\n')
    )
    assert registry.get("wassenger", f" {WASSENGER_ID}\n").id == WASSENGER_ID
    assert registry.find("green-api", f"{GREEN_ID}\n") is registry.get("green-api", GREEN_ID)
    assert registry.find("green-api", f"0{GREEN_ID}") is None
    assert registry.find("green-api", "\u0667\u0661\u0660\u0665\u0661\u0668\u0667") is None
    assert registry.find("telegram", GREEN_ID) is None
