"""How a sweep finds an account's chats and when each was last active, one finder per provider
(``FINDERS``), both streaming, so memory stays flat however many chats an account has.

- **Wassenger** lists a device's chats oldest activity first, a page at a time; past the first
  chat newer than the cutoff every chat is active, and the finder goes on only while the sweep's
  safety bound needs a larger count of the device's chats (``enough``), so a small nightly sweep
  lists little more than its inactive chats.
- **GREEN-API** has no timestamps in getChats. lastIncomingMessages and lastOutgoingMessages over
  the threshold window name every chat active in it, so getChats minus those chats are the
  inactive ones. Those windows hold at most 10,000 messages each; when one is full, older
  activity inside the window may be missing. Then the sweep relies on getChats' documented
  order (newest activity first): the chats after the last one seen in the windows are probed by
  binary search with getChatHistory (about 17 probes for 100,000 chats) to find the first chat
  older than the cutoff, and every chat from there on is inactive. If the order were ever not
  what GREEN-API documents, the windows' chats would not all come first and the search would
  find nothing to archive: it fails safe.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Protocol

import httpx

from config import GREEN_API, WASSENGER, Account, SweepPolicy
from tasks.providers import (
    MESSAGE_WINDOW_CAP,
    ChatInfo,
    GreenApiAdapter,
    GreenApiListings,
    WassengerAdapter,
    WassengerListings,
)
from tasks.sweep.calls import ListingCalls

WASSENGER_PAGE_SIZE = 100  # the maximum is unconfirmed (tasks/providers/FACTS.md); 100 works
# "Active, exact time unknown": a chat known to be newer than the cutoff.
ACTIVE = math.inf


class Finder(Protocol):
    def chats(
        self,
        calls: ListingCalls,
        client: httpx.Client,
        account: Account,
        policy: SweepPolicy,
        cutoff: float,
        enough: Callable[[], bool],
    ) -> Iterator[ChatInfo]:
        """Every chat the sweep must look at, with its last activity where known. A finder that
        knows every chat from some point on is active may stop there once ``enough()``."""


class WassengerFinder:
    def __init__(self) -> None:
        self.listings = WassengerListings(WassengerAdapter())

    def chats(
        self,
        calls: ListingCalls,
        client: httpx.Client,
        account: Account,
        policy: SweepPolicy,
        cutoff: float,
        enough: Callable[[], bool],
    ) -> Iterator[ChatInfo]:
        page = 0
        past_cutoff = False
        while True:
            chats = calls.call(
                "listChats",
                partial(
                    self.listings.chats_page,
                    client,
                    account,
                    page,
                    WASSENGER_PAGE_SIZE,
                    policy.statuses,
                ),
            )
            for chat in chats:
                yield chat
                # Oldest first: every chat after the first one newer than the cutoff is newer
                # still, and is listed only to count the device's chats for the bound.
                if chat.last_activity is not None and chat.last_activity > cutoff:
                    past_cutoff = True
                if past_cutoff and enough():
                    return
            if len(chats) < WASSENGER_PAGE_SIZE:
                return
            page += 1


class GreenApiFinder:
    def __init__(self) -> None:
        self.listings = GreenApiListings(GreenApiAdapter())

    def chats(
        self,
        calls: ListingCalls,
        client: httpx.Client,
        account: Account,
        policy: SweepPolicy,
        cutoff: float,
        enough: Callable[[], bool],
    ) -> Iterator[ChatInfo]:
        listings = self.listings
        minutes = math.ceil(policy.inactive_after / 60)
        recent: dict[str, float] = {}
        window_full = False
        for method in ("lastIncomingMessages", "lastOutgoingMessages"):
            messages = 0
            for chat_id, at in calls.stream(
                method, partial(listings.recent_messages, client, account, method, minutes)
            ):
                messages += 1
                recent[chat_id] = max(at, recent.get(chat_id, 0.0))
            window_full |= messages >= MESSAGE_WINDOW_CAP

        def all_chats() -> Iterator[ChatInfo]:
            return calls.stream("getChats", lambda: listings.chats(client, account))

        if not window_full:
            # The windows are complete: a chat in neither had no message since the cutoff.
            for chat in all_chats():
                yield replace(chat, last_activity=recent.get(chat.id))
            return
        total, last_seen = 0, -1
        for index, chat in enumerate(all_chats()):
            total = index + 1
            if chat.id in recent:
                last_seen = index
        boundary = self._activity_boundary(calls, client, account, last_seen + 1, total, cutoff)
        for index, chat in enumerate(all_chats()):
            yield replace(
                chat, last_activity=recent.get(chat.id, ACTIVE if index < boundary else None)
            )

    def _activity_boundary(
        self,
        calls: ListingCalls,
        client: httpx.Client,
        account: Account,
        low: int,
        high: int,
        cutoff: float,
    ) -> int:
        """The index of the first chat (in getChats order) with no message since the cutoff,
        knowing that chats before `low` are active. Binary search with getChatHistory."""
        listings = self.listings
        while low < high:
            middle = (low + high) // 2
            # getChats?count=n answers the n most active chats: the last is chat number n - 1.
            last = deque(
                calls.stream(
                    "getChats", partial(listings.chats, client, account, count=middle + 1)
                ),
                maxlen=1,
            )
            if not last:
                break
            newest = calls.call(
                "getChatHistory",
                partial(listings.newest_message_at, client, account, last[0].id),
            )
            if newest is not None and newest > cutoff:
                low = middle + 1
            else:
                high = middle
        return low


FINDERS: dict[str, Finder] = {GREEN_API: GreenApiFinder(), WASSENGER: WassengerFinder()}
