"""Configuration: settings from the environment and the accounts registry.

Imports nothing of ours: it is the bottom layer (config ← worker ← tasks). The names below are
loaded on first use (PEP 562), so ``import config.errors`` costs only that module.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from config.accounts import (
        Account,
        AccountRegistry,
        UnknownAccount,
        load_accounts,
        parse_accounts,
    )
    from config.errors import ArchiverError, ConfigError, UserError
    from config.providers import GREEN_API, PROVIDERS, WASSENGER, ProviderSpec, provider_spec
    from config.secrets import Secret, excerpt, redact
    from config.settings import Settings, get_settings, load_settings
    from config.sweep import SweepPolicy
    from config.units import Rate, parse_duration, parse_rate

# Each public name and the module that defines it.
_HOMES = {
    "accounts": ["Account", "AccountRegistry", "UnknownAccount", "load_accounts", "parse_accounts"],
    "errors": ["ArchiverError", "ConfigError", "UserError"],
    "providers": ["GREEN_API", "PROVIDERS", "WASSENGER", "ProviderSpec", "provider_spec"],
    "secrets": ["Secret", "excerpt", "redact"],
    "settings": ["Settings", "get_settings", "load_settings"],
    "sweep": ["SweepPolicy"],
    "units": ["Rate", "parse_duration", "parse_rate"],
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "GREEN_API",
    "PROVIDERS",
    "WASSENGER",
    "Account",
    "AccountRegistry",
    "ArchiverError",
    "ConfigError",
    "ProviderSpec",
    "Rate",
    "Secret",
    "Settings",
    "SweepPolicy",
    "UnknownAccount",
    "UserError",
    "excerpt",
    "get_settings",
    "load_accounts",
    "load_settings",
    "parse_accounts",
    "parse_duration",
    "parse_rate",
    "provider_spec",
    "redact",
]


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'config' has no attribute {name!r}")
    return getattr(import_module(f"config.{module}"), name)
