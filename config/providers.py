"""What we know about each provider, as data: id formats, default URLs, default rate limits.

Everything here comes from tasks/providers/FACTS.md. Where a fact is unconfirmed (Wassenger's
limits, whether GREEN-API accepts ``@lid`` chats) this table is the one place to correct it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from config.errors import UserError, show

GREEN_API = "green-api"
WASSENGER = "wassenger"

# Chat id shapes shared by both providers: person, group (new and old style), hidden-number id.
# ASCII digits only, written [0-9]: \d also matches Arabic-Indic, fullwidth or Devanagari digits,
# which would pass our check and reach the provider. Patterns are matched whole (fullmatch,
# anchored \A...\Z): `$` would also match before a final newline.
_PERSON = r"[0-9]{5,20}@c\.us"
_GROUP = r"[0-9]{5,25}(?:-[0-9]{5,12})?@g\.us"
_LID = r"[0-9]{5,25}@lid"
_CHANNEL = r"[0-9]{5,25}@newsletter"


def _whole(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"\A(?:{pattern})\Z", re.ASCII)


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    # The normalised id (see normalise_account_id), matched whole.
    account_id_pattern: re.Pattern[str]
    account_id_hint: str
    # The normalised chat id (see normalise_chat_id), matched whole.
    chat_id_pattern: re.Pattern[str]
    chat_id_hint: str
    default_api_url: str | None
    # Calls per second the provider allows, per account and per method. The limiter spaces calls
    # a little under these (see worker/stores/limiter.py) because window semantics are undocumented.
    method_rates: dict[str, str] = field(default_factory=dict)
    # The method that archives a chat: the one an account's `rate_limit` setting overrides.
    archive_method: str = "archive"
    # The method that restores an archived chat (undo): limited on its own.
    unarchive_method: str = "unarchive"
    # Ids written in hex (Wassenger's device ids) name the same account in either case.
    account_id_case_insensitive: bool = False

    def normalise_account_id(self, raw: str) -> str:
        """The one spelling of an account id, or ValueError (one line) when it is not one.

        Surrounding whitespace is dropped (a CSV cell, a trailing newline) and hex ids are
        lower-cased, so ``X``, ``X\\n``, `` X`` and ``x`` are one account: one rate limit, one
        queue, one set of Redis keys. Nothing else is mapped: a look-alike digit or a leading
        zero is refused rather than guessed at.
        """
        value = raw.strip()
        # isascii first: lower() maps a few non-ASCII letters onto ASCII ones.
        if value.isascii() and self.account_id_case_insensitive:
            value = value.lower()
        if not value.isascii() or not self.account_id_pattern.fullmatch(value):
            raise ValueError(f"{show(raw)} is not a {self.name} {self.account_id_hint}")
        return value

    def normalise_chat_id(self, raw: str) -> str:
        """The one spelling of a chat id (surrounding whitespace dropped, suffix lower-cased),
        or ValueError (one line) when it is not one of the provider's shapes."""
        value = raw.strip()
        if value.isascii():
            value = value.lower()
        if not value.isascii() or not self.chat_id_pattern.fullmatch(value):
            raise ValueError(f"{show(raw)} is not a {self.name} chat id ({self.chat_id_hint})")
        return value


PROVIDERS: dict[str, ProviderSpec] = {
    GREEN_API: ProviderSpec(
        name=GREEN_API,
        # idInstance is a number GREEN-API issues: it never starts with 0. A leading zero is a
        # typo or a spreadsheet's doing, and "07105187566" next to "7105187566" would be two
        # accounts with two rate limits for one instance: refused, not stripped, because a
        # guess could as well pick the wrong instance. It is announced to grow from 10 to 12
        # digits: not capped at 10.
        account_id_pattern=_whole(r"[1-9][0-9]{5,19}"),
        account_id_hint="idInstance, ASCII digits with no leading zero (e.g. 7105187566)",
        chat_id_pattern=_whole(f"{_PERSON}|{_GROUP}|{_LID}"),
        chat_id_hint="79001234567@c.us, 120363043968066561@g.us or 123456789012345@lid",
        # apiUrl is per instance and must not be derived from the id: no default.
        default_api_url=None,
        # GREEN-API's ratelimiter page (FACTS.md), per instance and method.
        method_rates={
            "archiveChat": "10/s",
            "unarchiveChat": "10/s",
            # The read-back of `verify = true` (one chat's isArchive).
            "getContactInfo": "1/s",
            # getChats is not in GREEN-API's table: assume it shares the listing methods' 1/s.
            "getChats": "1/s",
            "lastIncomingMessages": "1/s",
            "lastOutgoingMessages": "1/s",
            "getChatHistory": "1/s",
            "getStateInstance": "1/s",
            "getSettings": "1/s",
        },
        archive_method="archiveChat",
        unarchive_method="unarchiveChat",
    ),
    WASSENGER: ProviderSpec(
        name=WASSENGER,
        # Matched after lower-casing (account_id_case_insensitive).
        account_id_pattern=_whole(r"[0-9a-f]{24}"),
        account_id_hint="device id, 24 hex characters (e.g. 61b37a069cba0c15d6c81c8e)",
        chat_id_pattern=_whole(f"{_PERSON}|{_GROUP}|{_LID}|{_CHANNEL}"),
        chat_id_hint="447362053576@c.us, 44736205357600000000@g.us, ...@lid or ...@newsletter",
        default_api_url="https://api.wassenger.com",
        # Wassenger documents no numeric limits: start conservative, override per device.
        method_rates={
            "archive": "5/s",
            "unarchive": "5/s",
            # One chat's record, the read-back of `verify = true`.
            "getChat": "2/s",
            "listChats": "2/s",
            "listDevices": "1/s",
        },
        archive_method="archive",
        account_id_case_insensitive=True,
    ),
}


class UnknownProvider(UserError, ValueError):
    pass


def provider_spec(name: str) -> ProviderSpec:
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise UnknownProvider(f"unknown provider {show(name)} (expected one of: {known})") from None
