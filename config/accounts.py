"""The accounts registry: which GREEN-API instances and Wassenger devices we archive through.

The accounts file (TOML) names where each secret comes from (an environment variable or a file),
never the secret itself. Everything is checked when the file is loaded, so a wrong file stops a
worker at start with one line naming the account and the field, not at its first job.

Loading never hangs and never raises anything but ``ConfigError``: files are read bounded and
only when regular (config/files.py), every value is type- and range-checked (rates and durations
in config/units.py, sweeps in config/sweep.py, ``api_url`` in config/urls.py), and every text a
person wrote is shown escaped and cut short (config/errors.py). A secret is never shown.
"""

from __future__ import annotations

import codecs
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import rtoml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from config.errors import ConfigError, UserError, first_pydantic_error, location, show
from config.files import PATH_LIMIT, FileProblem, FileTooLarge, read_bounded
from config.providers import PROVIDERS, ProviderSpec, provider_spec
from config.secrets import Secret, UnreadSecret
from config.sweep import SweepEntry, SweepPolicy
from config.units import Rate, parse_rate
from config.urls import check_api_url

# The file holds up to MAX_ACCOUNTS accounts, each written out in full (the example file's
# most commented account is 806 bytes): a larger file is not an accounts file. Bounded, so a
# wrong path (a log, a disk image) stops the worker at once instead of filling its memory.
MAX_ACCOUNTS = 100_000
ACCOUNT_BYTES = 1024
ACCOUNTS_FILE_LIMIT = MAX_ACCOUNTS * ACCOUNT_BYTES
TOKEN_FILE_LIMIT = 4096
# GREEN-API tokens are 50 characters, Wassenger API keys longer. Shorter values could not be
# told from ordinary words when redacting (config/secrets.py), longer ones are not tokens.
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class Account:
    provider: str
    id: str  # normalised (ProviderSpec.normalise_account_id)
    api_url: str  # checked and normalised (config/urls.py)
    token: Secret = field(repr=False)
    # Calls allowed per method (every method the provider has a rate for). Accounts with the
    # same limits share one read-only mapping: a node may hold a hundred thousand accounts.
    rates: Mapping[str, Rate] = field(default_factory=dict)
    name: str = ""
    sweep: SweepPolicy | None = None  # None: never swept
    # The account's api_url may be on a private network (see config/urls.py).
    allow_private: bool = False
    # Read the chat's archive flag back after a success (GREEN-API has answered "already
    # archived" for chats that were not: green-api/issues #488, #744).
    verify: bool = False

    @property
    def key(self) -> str:
        """``provider:id``: how logs, metrics, Redis keys and the CLI name an account."""
        return f"{self.provider}:{self.id}"

    @property
    def spec(self) -> ProviderSpec:
        return PROVIDERS[self.provider]

    def rate(self, method: str) -> Rate:
        return self.rates[method]


class UnknownAccount(UserError, LookupError):
    pass


def _normalised_key(provider: str, account_id: str) -> tuple[str, str] | None:
    spec = PROVIDERS.get(provider)
    if spec is None or not isinstance(account_id, str):
        return None
    try:
        return (provider, spec.normalise_account_id(account_id))
    except ValueError:
        return None


class AccountRegistry:
    """Accounts by (provider, id). Lookups normalise the id the way the file's ids were, so
    ``" 61B37A..."`` finds the device written ``61b37a...``. Iteration follows the file."""

    def __init__(self, accounts: list[Account] | tuple[Account, ...] = ()) -> None:
        # By provider, then id: the ids are the accounts' own strings, so the index adds no
        # object per account (a (provider, id) key would add a tuple each).
        self._by_provider: dict[str, dict[str, Account]] = {}
        for account in accounts:
            self._by_provider.setdefault(account.provider, {})[account.id] = account
        self._accounts = tuple(accounts)
        if sum(map(len, self._by_provider.values())) != len(self._accounts):
            # An account given twice (parse_accounts refuses that) is kept once: where it came
            # first, as it was given last.
            once = {(a.provider, a.id): a for a in accounts}
            self._accounts = tuple(once.values())

    @classmethod
    def _indexed(
        cls, accounts: list[Account], by_provider: dict[str, dict[str, Account]]
    ) -> AccountRegistry:
        """Accounts with no two the same, and the index of them by provider and id."""
        registry = cls()
        registry._by_provider = by_provider
        registry._accounts = tuple(accounts)
        return registry

    def _lookup(self, provider: str, normalised_id: str) -> Account | None:
        by_id = self._by_provider.get(provider)
        return by_id.get(normalised_id) if by_id is not None else None

    def get(self, provider: str, account_id: str) -> Account:
        account = self.find(provider, account_id)
        if account is None:
            raise UnknownAccount(f"no {provider} account {show(account_id)} in the accounts file")
        return account

    def find(self, provider: str, account_id: str) -> Account | None:
        key = _normalised_key(provider, account_id)
        return self._lookup(*key) if key is not None else None

    def __iter__(self) -> Iterator[Account]:
        return iter(self._accounts)

    def __len__(self) -> int:
        return len(self._accounts)


# -- secrets ----------------------------------------------------------------------------------

# Upper case, as environment variables are named: the tokens of both providers are lower-case
# hex, so a token pasted in place of a name mostly fails here already.
_ENV_NAME = re.compile(r"\A[A-Z_][A-Z0-9_]{0,127}\Z")
_HEX = re.compile(r"\A[0-9A-F]{16,}\Z")
# Parts of a name that are an account id (a device id, an idInstance), as in
# WASSENGER_API_KEY_61B37A069CBA0C15D6C81C8E: long runs of letters and digits that are no token.
_ID_PART = re.compile(r"\A(?:[0-9A-Fa-f]{24}|[0-9]{1,20})\Z")


def _looks_like_a_token(text: str) -> bool:
    """A token pasted where a name or path goes: variable names and file names are words
    joined by underscores, hyphens, dots or slashes; a token is one long run of letters and
    digits (an upper-cased hex token even passes for a variable name)."""
    if _HEX.fullmatch(text) and any(c.isdigit() for c in text) and any(c.isalpha() for c in text):
        return True
    for part in re.split(r"[_./\\ -]+", text):
        if _ID_PART.fullmatch(part):
            continue
        digits = sum(c.isdigit() for c in part)
        if len(part) >= 32 or (len(part) >= 20 and digits >= 2 and digits < len(part)):
            return True
    return False


def _token_problem(value: str) -> str | None:
    """What makes ``value`` unusable as a token, in words that never quote it."""
    if not value:
        return "is empty"
    for position, char in enumerate(value, start=1):
        if "!" <= char <= "~":
            continue
        if char in "\r\n":
            what = "a line break"
        elif char.isspace():
            what = "whitespace"
        elif not char.isascii():
            what = "a non-ASCII character (a zero-width space or a typographic quote?)"
        else:
            what = "a control character"
        return (
            f"has {what} at position {position} of {len(value)}: a token is printable ASCII "
            "with no spaces"
        )
    if len(value) < MIN_TOKEN_LENGTH:
        return f"is {len(value)} characters long: a token has at least {MIN_TOKEN_LENGTH}"
    if len(value) > MAX_TOKEN_LENGTH:
        return f"is longer than {MAX_TOKEN_LENGTH} characters: not a token"
    return None


def _check_env_name(name: str) -> None:
    if _looks_like_a_token(name):
        raise ValueError(
            "token_env: holds what looks like a token, not a variable's name (not shown): "
            "put the token in an environment variable and name that variable here"
        )
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(
            "token_env: must name an environment variable (A-Z, 0-9, _), not hold the token "
            "itself (the value is not shown)"
        )


def _token_from_env(name: str) -> Secret:
    _check_env_name(name)
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"token_env: environment variable {name} is not set")
    problem = _token_problem(value)
    if problem is not None:
        raise ValueError(f"token_env: the value of {name} {problem}")
    return Secret(value)


def _check_file_name(path: str) -> None:
    if _looks_like_a_token(path) and not os.path.exists(path):
        raise ValueError(
            "token_file: holds what looks like a token, not a path (not shown): put the "
            "token in a file and name that file here"
        )


def _token_from_file(path: str) -> Secret:
    _check_file_name(path)
    try:
        data = read_bounded(path, TOKEN_FILE_LIMIT)
    except FileProblem as problem:
        raise ValueError(f"token_file: {problem}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"token_file: {show(path, PATH_LIMIT)} is not UTF-8 text") from None
    # One line, and the newline that ends a line written by an editor or `echo`.
    text = text.removesuffix("\n").removesuffix("\r")
    if "\n" in text or "\r" in text:
        raise ValueError(
            f"token_file: {show(path, PATH_LIMIT)} holds more than one line: a token file holds "
            "the token alone, on one line"
        )
    wrong = _token_problem(text)
    if wrong is not None:
        raise ValueError(f"token_file: the token in {show(path, PATH_LIMIT)} {wrong}")
    return Secret(text)


# -- one [[accounts]] table -------------------------------------------------------------------

_Name = Annotated[StrictStr, StringConstraints(max_length=100)]


class _AccountEntry(BaseModel):
    """One ``[[accounts]]`` table as written. Unknown keys are refused: a typo must not pass,
    and a secret pasted inline (``token = "..."``) is refused without being shown."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    provider: StrictStr
    # Strict: an unquoted idInstance would arrive as an integer and lose leading zeros.
    id: StrictStr
    api_url: StrictStr | None = None
    allow_private: StrictBool = False
    token_env: StrictStr | None = None
    token_file: StrictStr | None = None
    # The archive method's limit; `rate_limits` sets any method by name.
    rate_limit: StrictStr | None = None
    rate_limits: dict[str, StrictStr] = Field(default_factory=dict)
    name: _Name = ""
    sweep: SweepEntry | None = None
    verify: StrictBool = False

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        provider_spec(value)
        return value

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be one line of printable text")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value


def _plain(value: object) -> str:
    """An id or a provider name as the label shows it: as written when it is an ordinary word,
    escaped and quoted otherwise."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str) and 0 < len(text) <= 40 and text.isascii() and text.isprintable():
        return text if " " not in text else show(text)
    return show(text)


def _entry_label(index: int, raw: object) -> str:
    if isinstance(raw, Mapping):
        provider, account_id = raw.get("provider"), raw.get("id")
        if isinstance(provider, str) and isinstance(account_id, str | int):
            return f"account {index} ({_plain(provider)} {_plain(account_id)})"
    return f"account {index}"


@lru_cache(maxsize=1024)
def _account_rates(
    provider: str, rate_limit: str | None, overrides: tuple[tuple[str, str], ...]
) -> Mapping[str, Rate]:
    """An account's limits, from its ``rate_limit`` and ``rate_limits`` as written. Cached: the
    accounts with the same limits (most share a few) share one read-only mapping."""
    spec = PROVIDERS[provider]
    rates = {method: parse_rate(text) for method, text in spec.method_rates.items()}
    for method, text in overrides:
        where = f"rate_limits.{location([method], _looks_like_a_token)}"
        if method not in rates:
            known = ", ".join(sorted(rates))
            raise ValueError(f"{where}: unknown {spec.name} method (known: {known})")
        try:
            rates[method] = parse_rate(text)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    if rate_limit is not None:
        rates[spec.archive_method] = parse_rate(rate_limit)
    return MappingProxyType(rates)


def _unread_token(entry: _AccountEntry) -> Secret:
    """Where the token comes from, checked as a name or path but not read."""
    if entry.token_env is not None:
        _check_env_name(entry.token_env)
        return UnreadSecret(f"environment variable {entry.token_env}")
    _check_file_name(entry.token_file or "")
    return UnreadSecret(f"token_file {show(entry.token_file or '', PATH_LIMIT)}")


class _Tokens:
    """The tokens of one load: a variable or file that many accounts name is read and checked
    once, and is one Secret. ``secrets=False``: checked as names and paths, never read."""

    def __init__(self, secrets: bool = True) -> None:
        self._read: dict[tuple[str, str], Secret] = {}
        self._secrets = secrets

    def of(self, entry: _AccountEntry) -> Secret:
        if (entry.token_env is None) == (entry.token_file is None):
            raise ValueError("token_env or token_file: give exactly one of them")
        if entry.token_env is not None:
            source = ("env", entry.token_env)
        else:
            source = ("file", entry.token_file or "")
        token = self._read.get(source)
        if token is None:
            if not self._secrets:
                token = _unread_token(entry)
            elif source[0] == "env":
                token = _token_from_env(source[1])
            else:
                token = _token_from_file(source[1])
            self._read[source] = token
        return token


def _normalised_id(spec: ProviderSpec, raw: str) -> str:
    try:
        return spec.normalise_account_id(raw)
    except ValueError as error:
        raise ValueError(f"id: {error}") from None


def _build_account(entry: _AccountEntry, tokens: _Tokens) -> Account:
    spec = provider_spec(entry.provider)
    account_id = _normalised_id(spec, entry.id)
    api_url = entry.api_url or spec.default_api_url
    if api_url is None:
        raise ValueError(
            f"api_url: required for {spec.name} (the instance's apiUrl from the console)"
        )
    try:
        api_url = check_api_url(api_url, allow_private=entry.allow_private)
    except ValueError as error:
        raise ValueError(f"api_url: {error}") from None
    rates = _account_rates(spec.name, entry.rate_limit, tuple(entry.rate_limits.items()))
    token = tokens.of(entry)
    return Account(
        provider=spec.name,
        id=account_id,
        api_url=api_url,
        token=token,
        rates=rates,
        name=entry.name,
        sweep=entry.sweep.policy(spec.name) if entry.sweep else None,
        allow_private=entry.allow_private,
        verify=entry.verify,
    )


# -- the file -------------------------------------------------------------------------------


# Kinds of account table remembered by _Accounts (tables alike but for their id).
_KINDS = 64
_Kind = tuple[tuple[tuple[str, object], ...], tuple[type, ...]]


class _Accounts:
    """Accounts as they are read, one table at a time, in file order: each checked, and no two
    the same account."""

    def __init__(self, source: str, secrets: bool = True) -> None:
        self.source = source
        self.accounts: list[Account] = []
        self._seen: dict[str, dict[str, Account]] = {}  # by provider, then id
        self._tokens = _Tokens(secrets)
        # An account built from a table, by the table's keys, values and their types (true is
        # 1 to Python, not to the checks) but its id: a table that differs from it only in its
        # id makes the same account with that id, so its other values need no checking again
        # (most tables of a large file are alike).
        self._kinds: dict[_Kind, Account] = {}

    def _build(self, raw: Mapping[str, object]) -> Account:
        kind: _Kind | None = None
        raw_id = raw.get("id")
        if type(raw_id) is str:
            rest = dict(raw)
            del rest["id"]
            kind = (tuple(rest.items()), tuple(map(type, rest.values())))
            try:
                like = self._kinds.get(kind)
            except TypeError:  # a table inside (rate_limits, sweep): checked in full
                kind = like = None
            if like is not None:
                return Account(
                    provider=like.provider,
                    id=_normalised_id(like.spec, raw_id),
                    api_url=like.api_url,
                    token=like.token,
                    rates=like.rates,
                    name=like.name,
                    sweep=like.sweep,
                    allow_private=like.allow_private,
                    verify=like.verify,
                )
        account = _build_account(_AccountEntry.model_validate(raw), self._tokens)
        if kind is not None and len(self._kinds) < _KINDS:
            self._kinds[kind] = account
        return account

    def add(self, raw: object) -> None:
        index = len(self.accounts) + 1
        # The label is made only for an error: most files have none.
        try:
            if type(raw) is not dict and not isinstance(raw, Mapping):
                raise ValueError("must be a table of keys (provider, id, ...)")
            account = self._build(raw)
        except ValidationError as error:
            prefix = f"{self.source}: {_entry_label(index, raw)}: "
            line = first_pydantic_error(error.errors(), prefix=prefix, hide=_looks_like_a_token)
            raise ConfigError(line) from None
        except ValueError as error:
            raise ConfigError(f"{self.source}: {_entry_label(index, raw)}: {error}") from None
        first = self._seen.setdefault(account.provider, {}).setdefault(account.id, account)
        if first is not account:
            raise ConfigError(
                f"{self.source}: {_entry_label(index, raw)}: id: duplicate of account "
                f"{self.accounts.index(first) + 1}"
            )
        self.accounts.append(account)

    def registry(self) -> AccountRegistry:
        return AccountRegistry._indexed(self.accounts, self._seen)


def parse_accounts(
    data: Mapping[str, Any], source: str = "accounts file", *, secrets: bool = True
) -> AccountRegistry:
    """Build the registry from parsed TOML; raise ConfigError naming the account and field.
    ``secrets=False``: the tokens are not read (their variables may be unset), for a process
    that calls no provider; revealing one raises."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a TOML document with an accounts array")
    unknown = sorted(str(key) for key in data if key != "accounts")
    if unknown:
        key = location(unknown[:1], _looks_like_a_token)
        raise ConfigError(
            f"{source}: unknown top-level key {key} (expected only accounts, written as one "
            "table per account headed accounts in double brackets)"
        )
    raw_accounts = data.get("accounts", [])
    if not isinstance(raw_accounts, list):
        raise ConfigError(f"{source}: accounts must be an array of tables, one per account")
    accounts = _Accounts(source, secrets)
    for raw in raw_accounts:
        accounts.add(raw)
    return accounts.registry()


# A line that opens an account's table, as the example file writes it, from the line break
# before it (a search for a line break is quicker than for a line's start).
_ACCOUNT_HEADER = re.compile(
    rb"\n[ \t]*\[\[[ \t]*accounts[ \t]*\]\][ \t]*(?:#[^\r\n]*)?\r?(?=\n|\Z)"
)
# Accounts parsed at a time: the parsed TOML of a piece is dropped before the next is parsed.
_PIECE = 500


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid TOML: arrays or tables nested too deeply") from None
    except ValueError as error:
        # Not a TOMLDecodeError: an integer of more digits than Python converts, for one.
        raise ConfigError(f"{source}: not valid TOML: {str(error)[:100]}") from None


def _parse_in_pieces(data: bytes, source: str, secrets: bool = True) -> AccountRegistry | None:
    """The registry of a file that is a list of ``[[accounts]]`` tables, decoded and parsed a
    few hundred tables at a time; None when the file is anything else, or does not decode or
    parse (then tomllib parses it whole and says exactly what is wrong, as it always has).

    Parsed whole, a hundred thousand accounts are a few hundred thousand Python objects at once,
    freed as soon as the accounts are built; the accounts, built among them, keep the memory
    they were spread over from being returned (and the file's text, as large, keeps the C heap
    from shrinking). In pieces, what is decoded and parsed never grows past one piece. Cutting
    before a header line is exact: where that line was inside a multi-line string, the piece
    before the cut ends in an open string and does not parse, which sends the file to the whole
    parse. The pieces are parsed by rtoml (Rust), several times quicker than tomllib."""
    data = data.removeprefix(codecs.BOM_UTF8)
    starts = [match.start() + 1 for match in _ACCOUNT_HEADER.finditer(data)]
    newline = data.find(b"\n")
    if _ACCOUNT_HEADER.match(b"\n" + (data if newline < 0 else data[:newline])):
        starts.insert(0, 0)  # the first line, with no line break before it
    if not starts or _parsed_piece(data[: starts[0]]) != {}:  # comments alone before them
        return None
    accounts = _Accounts(source, secrets)
    for first in range(0, len(starts), _PIECE):
        ends = starts[first + _PIECE] if first + _PIECE < len(starts) else len(data)
        tables = _parsed_piece(data[starts[first] : ends])
        raw_accounts = tables.pop("accounts", None) if tables is not None else None
        if tables or not isinstance(raw_accounts, list):
            return None
        for raw in raw_accounts:
            accounts.add(raw)
    return accounts.registry()


def _parsed_piece(data: bytes) -> dict[str, Any] | None:
    try:
        return rtoml.loads(data.decode("utf-8"))
    except Exception:  # whatever it is, the whole parse says it in its own words
        return None


def load_accounts(path: Path | str, *, secrets: bool = True) -> AccountRegistry:
    path = Path(path)
    try:
        data = read_bounded(path, ACCOUNTS_FILE_LIMIT)
    except FileTooLarge as problem:
        raise ConfigError(
            f"ARCHIVER_ACCOUNTS_FILE: {problem} (room for {MAX_ACCOUNTS:,} accounts of "
            f"{ACCOUNT_BYTES:,} bytes)"
        ) from None
    except FileProblem as problem:
        if not path.exists():
            raise ConfigError(
                f"ARCHIVER_ACCOUNTS_FILE: {path} does not exist (see config/accounts.example.toml)"
            ) from None
        raise ConfigError(f"ARCHIVER_ACCOUNTS_FILE: {problem}") from None
    registry = _parse_in_pieces(data, str(path), secrets)
    if registry is None:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text (byte {error.start + 1} is not)") from None
        registry = parse_accounts(_parse_toml(text, str(path)), source=str(path), secrets=secrets)
    return registry
