"""The accounts registry: which GREEN-API instances and Wassenger devices we archive through.

The accounts file (TOML) names where each secret comes from (an environment variable or a file),
never the secret itself. Everything is checked when the file is loaded, so a wrong file stops a
worker at start with one line naming the account and the field, not at its first job.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError, field_validator

from config.errors import ConfigError, first_pydantic_error
from config.providers import PROVIDERS, ProviderSpec, provider_spec
from config.secrets import Secret
from config.sweep import SweepEntry, SweepPolicy
from config.units import Rate, parse_rate


@dataclass(frozen=True)
class Account:
    provider: str
    id: str
    api_url: str
    token: Secret = field(repr=False)
    # Calls allowed per method (every method the provider has a rate for).
    rates: dict[str, Rate] = field(default_factory=dict)
    name: str = ""
    sweep: SweepPolicy | None = None  # None: never swept

    @property
    def key(self) -> str:
        """``provider:id``: how logs, metrics, Redis keys and the CLI name an account."""
        return f"{self.provider}:{self.id}"

    @property
    def spec(self) -> ProviderSpec:
        return PROVIDERS[self.provider]

    def rate(self, method: str) -> Rate:
        return self.rates[method]


class UnknownAccount(LookupError):
    pass


class AccountRegistry:
    def __init__(self, accounts: list[Account] | tuple[Account, ...] = ()) -> None:
        self._by_key: dict[tuple[str, str], Account] = {}
        for account in accounts:
            self._by_key[(account.provider, account.id)] = account

    def get(self, provider: str, account_id: str) -> Account:
        try:
            return self._by_key[(provider, account_id)]
        except KeyError:
            raise UnknownAccount(
                f"no {provider} account {account_id!r} in the accounts file"
            ) from None

    def find(self, provider: str, account_id: str) -> Account | None:
        return self._by_key.get((provider, account_id))

    def __iter__(self) -> Iterator[Account]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)


# Upper case, as environment variables are named: the tokens of both providers are lower-case
# hex, so a token pasted in place of a name never passes for one.
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class _AccountEntry(BaseModel):
    """One ``[[accounts]]`` table as written. Unknown keys are refused: a typo must not pass."""

    model_config = ConfigDict(extra="forbid")

    provider: StrictStr
    # Strict: an unquoted idInstance would arrive as an integer and lose leading zeros.
    id: StrictStr
    api_url: StrictStr | None = None
    token_env: StrictStr | None = None
    token_file: StrictStr | None = None
    # The archive method's limit; `rate_limits` sets any method by name.
    rate_limit: StrictStr | None = None
    rate_limits: dict[str, StrictStr] = {}
    name: StrictStr = ""
    sweep: SweepEntry | None = None

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        provider_spec(value)
        return value

    @field_validator("token_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        # Never echo the value: a token pasted here instead of a variable's name is a secret.
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(
                "must name an environment variable (A-Z, 0-9, _), not hold the token itself"
            )
        return value

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/") if value else value

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value


def _entry_label(index: int, raw: dict[str, Any]) -> str:
    provider, account_id = raw.get("provider"), raw.get("id")
    if isinstance(provider, str) and isinstance(account_id, str | int):
        return f"account {index} ({provider} {account_id})"
    return f"account {index}"


def _read_secret(entry: _AccountEntry) -> Secret:
    if (entry.token_env is None) == (entry.token_file is None):
        raise ValueError("token_env or token_file: give exactly one of them")
    if entry.token_env is not None:
        value = os.environ.get(entry.token_env, "").strip()
        if not value:
            raise ValueError(f"token_env: environment variable {entry.token_env} is not set")
        return Secret(value)
    path = Path(entry.token_file or "")
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ValueError(f"token_file: cannot read {path}: {error.strerror}") from None
    if not value:
        raise ValueError(f"token_file: {path} is empty")
    return Secret(value)


def _build_account(entry: _AccountEntry) -> Account:
    spec = provider_spec(entry.provider)
    if not spec.account_id_pattern.match(entry.id):
        raise ValueError(f"id: {entry.id!r} is not a {spec.name} {spec.account_id_hint}")
    api_url = entry.api_url or spec.default_api_url
    if api_url is None:
        raise ValueError(
            f"api_url: required for {spec.name} (the instance's apiUrl from the console)"
        )
    rates = {method: parse_rate(text) for method, text in spec.method_rates.items()}
    for method, text in entry.rate_limits.items():
        if method not in rates:
            known = ", ".join(sorted(rates))
            raise ValueError(f"rate_limits.{method}: unknown {spec.name} method (known: {known})")
        try:
            rates[method] = parse_rate(text)
        except ValueError as error:
            raise ValueError(f"rate_limits.{method}: {error}") from None
    if entry.rate_limit is not None:
        rates[spec.archive_method] = parse_rate(entry.rate_limit)
    return Account(
        provider=spec.name,
        id=entry.id,
        api_url=api_url,
        token=_read_secret(entry),
        rates=rates,
        name=entry.name,
        sweep=entry.sweep.policy(spec.name) if entry.sweep else None,
    )


def parse_accounts(data: dict[str, Any], source: str = "accounts file") -> AccountRegistry:
    """Build the registry from parsed TOML; raise ConfigError naming the account and field."""
    unknown = set(data) - {"accounts"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key {sorted(unknown)[0]!r} (expected [[accounts]])"
        )
    raw_accounts = data.get("accounts", [])
    if not isinstance(raw_accounts, list):
        raise ConfigError(f"{source}: 'accounts' must be an array of tables ([[accounts]])")
    accounts: list[Account] = []
    seen: dict[tuple[str, str], int] = {}
    for index, raw in enumerate(raw_accounts, start=1):
        label = f"{source}: {_entry_label(index, raw)}"
        try:
            entry = _AccountEntry.model_validate(raw)
            account = _build_account(entry)
        except ValidationError as error:
            raise ConfigError(first_pydantic_error(error.errors(), prefix=f"{label}: ")) from None
        except ValueError as error:
            raise ConfigError(f"{label}: {error}") from None
        key = (account.provider, account.id)
        if key in seen:
            raise ConfigError(f"{label}: id: duplicate of account {seen[key]}")
        seen[key] = index
        accounts.append(account)
    return AccountRegistry(accounts)


def load_accounts(path: Path | str) -> AccountRegistry:
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"ARCHIVER_ACCOUNTS_FILE: {path} does not exist (see config/accounts.example.toml)"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_accounts(data, source=str(path))
