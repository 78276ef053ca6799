"""What we know about each provider, as data: id formats, default URLs, default rate limits.

Everything here comes from ../shared/providers.md. Where a fact is unconfirmed (Wassenger's limits,
whether GREEN-API accepts ``@lid`` chats) this table is the one place to correct it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

GREEN_API = "green-api"
WASSENGER = "wassenger"

# Chat id shapes shared by both providers: person, group (new and old style), hidden-number id.
_PERSON = r"\d{5,20}@c\.us"
_GROUP = r"\d{5,25}(?:-\d{5,12})?@g\.us"
_LID = r"\d{5,25}@lid"
_CHANNEL = r"\d{5,25}@newsletter"


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    # idInstance is a digit string announced to grow from 10 to 12 digits: do not cap it at 10.
    account_id_pattern: re.Pattern[str]
    account_id_hint: str
    chat_id_pattern: re.Pattern[str]
    chat_id_hint: str
    default_api_url: str | None
    # Calls per second the provider allows, per account and per method. The limiter spaces calls
    # a little under these (see worker/limiter.py) because window semantics are undocumented.
    method_rates: dict[str, str] = field(default_factory=dict)
    # The method that archives a chat: the one an account's `rate_limit` setting overrides.
    archive_method: str = "archive"


PROVIDERS: dict[str, ProviderSpec] = {
    GREEN_API: ProviderSpec(
        name=GREEN_API,
        account_id_pattern=re.compile(r"^\d{6,20}$"),
        account_id_hint="idInstance, digits only (e.g. 7105187566)",
        chat_id_pattern=re.compile(rf"^(?:{_PERSON}|{_GROUP}|{_LID})$"),
        chat_id_hint="79001234567@c.us, 120363043968066561@g.us or 123456789012345@lid",
        # apiUrl is per instance and must not be derived from the id: no default.
        default_api_url=None,
        method_rates={
            "archiveChat": "10/s",
            "unarchiveChat": "10/s",
            # getChats is not in GREEN-API's table: assume it shares the listing methods' 1/s.
            "getChats": "1/s",
            "lastIncomingMessages": "1/s",
            "lastOutgoingMessages": "1/s",
            "getChatHistory": "1/s",
            "getStateInstance": "1/s",
            "getSettings": "1/s",
        },
        archive_method="archiveChat",
    ),
    WASSENGER: ProviderSpec(
        name=WASSENGER,
        account_id_pattern=re.compile(r"^[0-9A-Fa-f]{24}$"),
        account_id_hint="device id, 24 hex characters (e.g. 61b37a069cba0c15d6c81c8e)",
        chat_id_pattern=re.compile(rf"^(?:{_PERSON}|{_GROUP}|{_LID}|{_CHANNEL})$"),
        chat_id_hint="447362053576@c.us, 44736205357600000000@g.us, ...@lid or ...@newsletter",
        default_api_url="https://api.wassenger.com",
        # Wassenger documents no numeric limits: start conservative, override per device.
        method_rates={
            "archive": "5/s",
            "unarchive": "5/s",
            "listChats": "2/s",
            "listDevices": "1/s",
        },
        archive_method="archive",
    ),
}


class UnknownProvider(ValueError):
    pass


def provider_spec(name: str) -> ProviderSpec:
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise UnknownProvider(f"unknown provider {name!r} (expected one of: {known})") from None
