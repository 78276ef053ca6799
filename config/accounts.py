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

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from config.errors import ConfigError, UserError, first_pydantic_error, location, show
from config.files import PATH_LIMIT, FileProblem, read_bounded
from config.providers import PROVIDERS, ProviderSpec, provider_spec
from config.secrets import Secret
from config.sweep import SweepEntry, SweepPolicy
from config.units import Rate, parse_rate
from config.urls import check_api_url

# A thousand accounts take about 200 KB of TOML: a file larger than a megabyte is not one.
ACCOUNTS_FILE_LIMIT = 1024 * 1024
TOKEN_FILE_LIMIT = 4096
# GREEN-API tokens are 50 characters, Wassenger API keys longer. Shorter values could not be
# told from ordinary words when redacting (config/secrets.py), longer ones are not tokens.
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 1024


@dataclass(frozen=True)
class Account:
    provider: str
    id: str  # normalised (ProviderSpec.normalise_account_id)
    api_url: str  # checked and normalised (config/urls.py)
    token: Secret = field(repr=False)
    # Calls allowed per method (every method the provider has a rate for).
    rates: dict[str, Rate] = field(default_factory=dict)
    name: str = ""
    sweep: SweepPolicy | None = None  # None: never swept
    # The account's api_url may be on a private network (see config/urls.py).
    allow_private: bool = False

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
    ``" 61B37A..."`` finds the device written ``61b37a...``."""

    def __init__(self, accounts: list[Account] | tuple[Account, ...] = ()) -> None:
        self._by_key: dict[tuple[str, str], Account] = {}
        for account in accounts:
            self._by_key[(account.provider, account.id)] = account

    def get(self, provider: str, account_id: str) -> Account:
        account = self.find(provider, account_id)
        if account is None:
            raise UnknownAccount(f"no {provider} account {show(account_id)} in the accounts file")
        return account

    def find(self, provider: str, account_id: str) -> Account | None:
        key = _normalised_key(provider, account_id)
        return self._by_key.get(key) if key is not None else None

    def __iter__(self) -> Iterator[Account]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)


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


def _token_from_env(name: str) -> Secret:
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
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"token_env: environment variable {name} is not set")
    problem = _token_problem(value)
    if problem is not None:
        raise ValueError(f"token_env: the value of {name} {problem}")
    return Secret(value)


def _token_from_file(path: str) -> Secret:
    if _looks_like_a_token(path) and not os.path.exists(path):
        raise ValueError(
            "token_file: holds what looks like a token, not a path (not shown): put the "
            "token in a file and name that file here"
        )
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
    rate_limits: dict[str, StrictStr] = {}
    name: _Name = ""
    sweep: SweepEntry | None = None

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


def _build_account(entry: _AccountEntry) -> Account:
    spec = provider_spec(entry.provider)
    try:
        account_id = spec.normalise_account_id(entry.id)
    except ValueError as error:
        raise ValueError(f"id: {error}") from None
    api_url = entry.api_url or spec.default_api_url
    if api_url is None:
        raise ValueError(
            f"api_url: required for {spec.name} (the instance's apiUrl from the console)"
        )
    try:
        api_url = check_api_url(api_url, allow_private=entry.allow_private)
    except ValueError as error:
        raise ValueError(f"api_url: {error}") from None
    rates = {method: parse_rate(text) for method, text in spec.method_rates.items()}
    for method, text in entry.rate_limits.items():
        where = f"rate_limits.{location([method], _looks_like_a_token)}"
        if method not in rates:
            known = ", ".join(sorted(rates))
            raise ValueError(f"{where}: unknown {spec.name} method (known: {known})")
        try:
            rates[method] = parse_rate(text)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    if entry.rate_limit is not None:
        rates[spec.archive_method] = parse_rate(entry.rate_limit)
    if (entry.token_env is None) == (entry.token_file is None):
        raise ValueError("token_env or token_file: give exactly one of them")
    if entry.token_env is not None:
        token = _token_from_env(entry.token_env)
    else:
        token = _token_from_file(entry.token_file or "")
    return Account(
        provider=spec.name,
        id=account_id,
        api_url=api_url,
        token=token,
        rates=rates,
        name=entry.name,
        sweep=entry.sweep.policy(spec.name) if entry.sweep else None,
        allow_private=entry.allow_private,
    )


# -- the file -------------------------------------------------------------------------------


def parse_accounts(data: Mapping[str, Any], source: str = "accounts file") -> AccountRegistry:
    """Build the registry from parsed TOML; raise ConfigError naming the account and field."""
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
    accounts: list[Account] = []
    seen: dict[tuple[str, str], int] = {}
    for index, raw in enumerate(raw_accounts, start=1):
        label = f"{source}: {_entry_label(index, raw)}"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{label}: must be a table of keys (provider, id, ...)")
        try:
            entry = _AccountEntry.model_validate(raw)
            account = _build_account(entry)
        except ValidationError as error:
            errors = error.errors()
            line = first_pydantic_error(errors, prefix=f"{label}: ", hide=_looks_like_a_token)
            raise ConfigError(line) from None
        except ValueError as error:
            raise ConfigError(f"{label}: {error}") from None
        ident = (account.provider, account.id)
        if ident in seen:
            raise ConfigError(f"{label}: id: duplicate of account {seen[ident]}")
        seen[ident] = index
        accounts.append(account)
    return AccountRegistry(accounts)


def load_accounts(path: Path | str) -> AccountRegistry:
    path = Path(path)
    try:
        data = read_bounded(path, ACCOUNTS_FILE_LIMIT)
    except FileProblem as problem:
        if not path.exists():
            raise ConfigError(
                f"ARCHIVER_ACCOUNTS_FILE: {path} does not exist (see config/accounts.example.toml)"
            ) from None
        raise ConfigError(f"ARCHIVER_ACCOUNTS_FILE: {problem}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start + 1} is not)") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    except ValueError as error:
        # Not a TOMLDecodeError: an integer of more digits than Python converts, for one.
        raise ConfigError(f"{path}: not valid TOML: {str(error)[:100]}") from None
    return parse_accounts(document, source=str(path))
