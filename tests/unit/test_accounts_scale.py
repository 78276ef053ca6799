"""A file of a hundred thousand accounts: it loads (under a size cap that scales with what it must
hold), parsed a piece at a time exactly as if it were parsed whole, with the same one-line errors
naming the same accounts."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import config.accounts
from config import ConfigError, load_accounts, parse_accounts
from config.accounts import ACCOUNT_BYTES, ACCOUNTS_FILE_LIMIT, MAX_ACCOUNTS

TOKEN = "CANARYsc4le9f8e7d6c5b4a3"
OTHER_TOKEN = "CANARYsc4le0a1b2c3d4e5f6"


@pytest.fixture(autouse=True)
def _tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALE_TOKEN", TOKEN)
    monkeypatch.setenv("OTHER_TOKEN", OTHER_TOKEN)


def table(n: int, **fields: str) -> str:
    """Account ``n``: GREEN-API when even, Wassenger when odd; ``fields`` override (raw TOML)."""
    values = (
        {"provider": '"green-api"', "id": f'"{7_100_000_000 + n}"', "rate_limit": '"10/s"'}
        if n % 2 == 0
        else {"provider": '"wassenger"', "id": f'"{n:024x}"', "rate_limit": '"5/s"'}
    )
    values |= {"api_url": '"http://127.0.0.1:9"', "token_env": '"SCALE_TOKEN"', **fields}
    return "[[accounts]]\n" + "".join(f"{key} = {value}\n" for key, value in values.items()) + "\n"


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "accounts.toml"
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_accounts(path)
    message = str(caught.value)
    assert message and "\n" not in message and TOKEN not in message
    return message


def whole(path: Path) -> list[config.accounts.Account]:
    """The accounts as tomllib reads the whole file: what the loader always gave."""
    return list(parse_accounts(tomllib.loads(path.read_bytes().decode("utf-8-sig"))))


# -- the cap ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_file_of_100000_accounts_loads(tmp_path: Path) -> None:
    path = write(tmp_path, "".join(table(n) for n in range(MAX_ACCOUNTS)))
    registry = load_accounts(path)
    assert len(registry) == MAX_ACCOUNTS
    accounts = list(registry)
    assert [a.key for a in accounts[:2]] == [
        "green-api:7100000000",
        "wassenger:000000000000000000000001",
    ]
    assert accounts[-1].key == f"wassenger:{MAX_ACCOUNTS - 1:024x}"
    assert registry.find("wassenger", f" {77_777:024X}\n") is accounts[77_777]
    # One token read once: one Secret (and one entry to redact), one mapping per kind of limits.
    assert len({id(a.token) for a in accounts}) == 1
    assert accounts[0].token.reveal() == TOKEN
    assert len({id(a.rates) for a in accounts}) == 2
    assert accounts[1].rates["archive"] == accounts[-1].rates["archive"]


def test_the_cap_holds_the_most_accounts_written_out_in_full() -> None:
    example = (Path(config.accounts.__file__).parent / "accounts.example.toml").read_text()
    most_commented = max(len(part) for part in example.split("[[accounts]]"))
    assert most_commented < ACCOUNT_BYTES
    assert ACCOUNTS_FILE_LIMIT == MAX_ACCOUNTS * ACCOUNT_BYTES >= 100_000 * 1024


def test_a_file_over_the_cap_is_refused_in_one_line_naming_it_and_its_size(
    tmp_path: Path,
) -> None:
    path = tmp_path / "huge.toml"
    with path.open("wb") as sparse:  # refused on its size, before a byte is read
        sparse.truncate(ACCOUNTS_FILE_LIMIT + 1)
    assert refused(path) == (
        f"ARCHIVER_ACCOUNTS_FILE: '{path}' is {ACCOUNTS_FILE_LIMIT + 1:,} bytes, larger than "
        f"the {ACCOUNTS_FILE_LIMIT:,} bytes allowed (room for {MAX_ACCOUNTS:,} accounts of "
        f"{ACCOUNT_BYTES:,} bytes)"
    )


def test_the_cap_is_exact_at_a_smaller_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "".join(table(n) for n in range(20)).encode()
    monkeypatch.setattr(config.accounts, "ACCOUNTS_FILE_LIMIT", len(text))
    assert len(load_accounts(write(tmp_path, text))) == 20
    assert f"is {len(text) + 1:,} bytes, larger than" in refused(write(tmp_path, text + b"\n"))


# -- in pieces, as if whole -------------------------------------------------------------------


def test_pieces_read_the_same_accounts_as_the_whole_file(tmp_path: Path) -> None:
    """Every form the pieces must get right: headers with spaces and comments, comments and
    blank lines between, sub-tables, inline tables, names, CRLF line ends and a BOM."""
    parts = ["# accounts\n\n"]
    for n in range(1_234):
        fields: dict[str, str] = {}
        if n % 7 == 0:
            fields["name"] = f'"shop {n} [[accounts]]"'
        if n % 11 == 0:
            fields["token_env"] = '"OTHER_TOKEN"'
        if n % 13 == 0 and n % 2 == 0:
            fields["rate_limits"] = '{ getChats = "2/s" }'
        text = table(n, **fields)
        if n % 5 == 0:
            text = text.replace("[[accounts]]", "  [[ accounts ]]   # the header, spaced")
        if n % 17 == 0 and n % 2 == 0:
            text += '[accounts.sweep]\ninactive_after = "60d"\n# a comment\n\n'
        parts.append(text)
    path = write(tmp_path, b"\xef\xbb\xbf" + "".join(parts).replace("\n", "\r\n").encode())
    loaded = list(load_accounts(path))
    assert loaded == whole(path)
    assert len(loaded) == 1_234 and loaded[0].sweep is not None and loaded[7].name
    assert loaded[11].token.reveal() == OTHER_TOKEN and loaded[12].token.reveal() == TOKEN


@pytest.mark.parametrize(
    "before", ["", "\ufeff", "# accounts\n\n", "\n  # indented comment\r\n"], ids=repr
)
def test_a_file_of_account_tables_is_never_parsed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: str
) -> None:
    def whole_parse(text: str, source: str) -> None:
        raise AssertionError("parsed whole")

    monkeypatch.setattr(config.accounts, "_parse_toml", whole_parse)
    path = write(tmp_path, before + "".join(table(n) for n in range(1_001)))
    assert len(load_accounts(path)) == 1_001


def test_a_header_line_inside_a_multi_line_string_is_read_as_the_whole_file_reads_it(
    tmp_path: Path,
) -> None:
    text = table(0) + table(1, name='"""two\n[[accounts]]\nlines"""') + table(2)
    assert "account 2 (wassenger 000000000000000000000001): name:" in refused(write(tmp_path, text))


def test_anything_but_account_tables_is_refused_as_the_whole_file_refuses_it(
    tmp_path: Path,
) -> None:
    middle = "".join(table(n) for n in range(600)) + "[other]\nx = 1\n" + table(600)
    assert "unknown top-level key other" in refused(write(tmp_path, middle))
    before = "x = 1\n" + table(0)
    assert "unknown top-level key x" in refused(write(tmp_path, before))
    broken = "".join(table(n) for n in range(1_200)).replace('id = "7100001100"', "id = ")
    line = broken[: broken.index("id = \n")].count("\n") + 1
    assert f"not valid TOML: Invalid value (at line {line}, column 6)" in refused(
        write(tmp_path, broken)
    )
    latin = table(0) + table(1, name='"caf\xe9"')
    assert "not UTF-8 text (byte" in refused(write(tmp_path, latin.encode("latin-1")))


def test_errors_name_the_account_by_its_place_in_the_whole_file(tmp_path: Path) -> None:
    accounts = [table(n) for n in range(1_500)]
    accounts[776] = table(776, rate_limit='"fast"')
    message = refused(write(tmp_path, "".join(accounts)))
    assert message.startswith(f"{tmp_path}/accounts.toml: account 777 (green-api 7100000776): ")
    assert "rate_limit" in message
    duplicate = [table(n) for n in range(1_500)]
    duplicate[1_203] = table(2)  # after the first piece
    message = refused(write(tmp_path, "".join(duplicate)))
    assert message.endswith("account 1204 (green-api 7100000002): id: duplicate of account 3")


def test_a_table_alike_but_for_its_id_still_has_its_id_checked(tmp_path: Path) -> None:
    text = table(0) + table(2, id='"71O0000002"')  # a letter O among the digits
    assert "account 2 (green-api 71O0000002): id:" in refused(write(tmp_path, text))
    text = table(0) + table(2, id="7100000002")  # unquoted: an integer
    assert "account 2 (green-api 7100000002): id:" in refused(write(tmp_path, text))


def test_a_table_alike_but_for_the_type_of_a_value_has_it_checked(tmp_path: Path) -> None:
    text = table(0, verify="true") + table(2, verify="1")  # true == 1 to Python
    assert "account 2 (green-api 7100000002): verify:" in refused(write(tmp_path, text))
