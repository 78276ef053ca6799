"""Configuration: settings from the environment and the accounts registry.

Imports nothing of ours: it is the bottom layer (config ← worker ← tasks).
"""

from config.accounts import Account, AccountRegistry, UnknownAccount, load_accounts, parse_accounts
from config.errors import ArchiverError, ConfigError, UserError
from config.providers import GREEN_API, PROVIDERS, WASSENGER, ProviderSpec, provider_spec
from config.secrets import Secret, excerpt, redact
from config.settings import Settings, get_settings, load_settings
from config.sweep import SweepPolicy
from config.units import Rate, parse_duration, parse_rate

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
