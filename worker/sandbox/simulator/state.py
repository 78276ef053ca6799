"""In-memory state of the provider simulator: accounts, their chats, rate limits and faults.

Pure logic, no HTTP: the provider modules read and change this state and turn the outcome into
answers. One `SimulatorState` is shared by the server's IOLoop thread and by whoever started it
(a test poking `handle.state`), so every public method takes `SimulatorState.lock`.

Chat objects are replaced, not edited, when an admin call changes them; only `archived` is flipped
in place (by archive calls). Listing indexes and cached JSON fragments rely on that.

`generate` (see `generate_chats`) builds many chats deterministically. With `count` chats:
- the index i (0..count-1) picks the id: users `79{i:011d}@c.us`, groups `120363{i:012d}@g.us`,
  channels `120363{i:012d}@newsletter`;
- `random.Random(seed)` then draws, in this order, exactly round(count*ratio) indices each with
  `rng.sample(range(count), k)`: groups (group_ratio), then channels among the rest
  (channel_ratio), then inactive chats (inactive_ratio), then archived chats (archived_ratio),
  then chats without any incoming message (no_incoming_ratio);
- an inactive chat's last activity lies between `inactive_days` days + 1 minute and
  2*`inactive_days` days + 1 minute before the generation time; an active chat's lies within the
  last `active_days` days. So for any threshold D with active_days < D <= inactive_days the
  chats older than D days are exactly the inactive ones.
`inactive_chat_ids(...)` and the admin `/inactive` endpoint give the exact set at any time.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import re
import threading
import time
import tomllib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from worker.sandbox.simulator.counters import Counters, MethodCounter, SlidingWindow
from worker.sandbox.simulator.echo import ECHO_FORMS
from worker.sandbox.simulator.journals import Journals, check_settings

GREEN_API = "green-api"
WASSENGER = "wassenger"
PROVIDERS = (GREEN_API, WASSENGER)

STATUSES = (
    "authorized",
    "not_authorized",
    "starting",
    "expired",
    "deleted",
    "quota_exceeded",
    "device_unregistered",
    "plan_required",
    # GREEN-API's getStateInstance values sleepMode and blocked.
    "sleep_mode",
    "blocked",
    # A Wassenger device that is not operative (its session offline).
    "not_operative",
)
# Statuses that exist for one provider only.
PROVIDER_ONLY = {"sleep_mode": "green-api", "blocked": "green-api", "not_operative": "wassenger"}
KINDS = ("user", "group", "channel")

# Calls per sliding second, from tasks/providers/FACTS.md. None or 0 disables the limit.
DEFAULT_RATE_LIMITS: dict[str, dict[str, int | None]] = {
    GREEN_API: {
        "archiveChat": 10,
        "unarchiveChat": 10,
        "getChats": 1,
        "lastIncomingMessages": 1,
        "lastOutgoingMessages": 1,
        "getChatHistory": 1,
        "getStateInstance": 1,
        "getSettings": 1,
        "getContactInfo": 1,
    },
    WASSENGER: {"archive": 10, "unarchive": 10, "getChat": 5, "listChats": 5, "listDevices": 5},
}

DEFAULT_ERROR_STATUSES = (500, 502, 503)

_GREEN_ID = re.compile(r"\d{1,20}")
_WASSENGER_ID = re.compile(r"[0-9a-fA-F]{24}")
DAY = 86400.0


class SpecError(ValueError):
    """An admin request or scenario described an account or chat the simulator cannot hold."""


def account_label(provider: str, account_id: str) -> str:
    return f"{provider}:{account_id}"


def normalise_account_id(provider: str, account_id: str) -> str:
    if provider == GREEN_API:
        if not _GREEN_ID.fullmatch(account_id):
            raise SpecError("a GREEN-API idInstance is a string of digits")
        return account_id
    if provider == WASSENGER:
        if not _WASSENGER_ID.fullmatch(account_id):
            raise SpecError("a Wassenger device id is 24 hexadecimal characters")
        # Device ids are hex: compare them case-insensitively by storing one spelling.
        return account_id.lower()
    raise SpecError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")


def kind_from_id(chat_id: str) -> str:
    if chat_id.endswith("@g.us"):
        return "group"
    if chat_id.endswith("@newsletter"):
        return "channel"
    return "user"


def _timestamp(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise SpecError(f"{what} must be a unix time or an ISO 8601 string")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise SpecError(f"{what}: {exc}") from None
    raise SpecError(f"{what} must be a unix time or an ISO 8601 string")


@dataclass(slots=True)
class Chat:
    id: str
    kind: str = "user"
    archived: bool = False
    has_incoming: bool = True
    last_incoming: float | None = None
    last_outgoing: float | None = None
    unread: int = 0
    status: str = "active"
    labels: list[str] = field(default_factory=list)
    name: str = ""
    # getChats entry up to the archive flag; safe to cache because only `archived` mutates.
    green_prefix: str | None = field(default=None, repr=False, compare=False)

    @property
    def last_activity(self) -> float | None:
        incoming = self.last_incoming if self.has_incoming else None
        if incoming is None:
            return self.last_outgoing
        if self.last_outgoing is None:
            return incoming
        return max(incoming, self.last_outgoing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "archived": self.archived,
            "has_incoming": self.has_incoming,
            "last_incoming": self.last_incoming,
            "last_outgoing": self.last_outgoing,
            "last_activity": self.last_activity,
            "unread": self.unread,
            "status": self.status,
            "labels": list(self.labels),
            "name": self.name,
        }


_CHAT_KEYS = {
    "id",
    "kind",
    "archived",
    "has_incoming",
    "last_incoming",
    "last_outgoing",
    "last_incoming_days_ago",
    "last_outgoing_days_ago",
    "unread",
    "status",
    "labels",
    "name",
}


def parse_chat(spec: dict[str, Any], now: float | None = None) -> Chat:
    """Build a chat from its admin/scenario description.

    `last_incoming_days_ago` / `last_outgoing_days_ago` exist so scenario files can describe ages
    that stay true whenever they are loaded; absolute unix times would go stale.
    """
    if not isinstance(spec, dict):
        raise SpecError("a chat is a JSON object")
    unknown = set(spec) - _CHAT_KEYS
    if unknown:
        raise SpecError(f"unknown chat fields: {', '.join(sorted(unknown))}")
    chat_id = spec.get("id")
    if not isinstance(chat_id, str) or not chat_id:
        raise SpecError("a chat needs a string id")
    now = time.time() if now is None else now
    kind = spec.get("kind") or kind_from_id(chat_id)
    if kind not in KINDS:
        raise SpecError(f"chat kind must be one of {', '.join(KINDS)}")
    last_incoming = _timestamp(spec.get("last_incoming"), "last_incoming")
    last_outgoing = _timestamp(spec.get("last_outgoing"), "last_outgoing")
    if spec.get("last_incoming_days_ago") is not None:
        last_incoming = now - float(spec["last_incoming_days_ago"]) * DAY
    if spec.get("last_outgoing_days_ago") is not None:
        last_outgoing = now - float(spec["last_outgoing_days_ago"]) * DAY
    labels = spec.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise SpecError("labels must be a list of strings")
    return Chat(
        id=chat_id,
        kind=kind,
        archived=bool(spec.get("archived", False)),
        has_incoming=bool(spec.get("has_incoming", True)),
        last_incoming=last_incoming,
        last_outgoing=last_outgoing,
        unread=int(spec.get("unread", 0)),
        status=str(spec.get("status", "active")),
        labels=list(labels),
        name=str(spec.get("name") or chat_id.split("@", 1)[0]),
    )


_GENERATE_KEYS = {
    "count",
    "inactive_ratio",
    "inactive_days",
    "active_days",
    "group_ratio",
    "channel_ratio",
    "archived_ratio",
    "no_incoming_ratio",
    "seed",
}


def _ratio(spec: dict[str, Any], key: str, default: float) -> float:
    value = float(spec.get(key, default))
    if not 0.0 <= value <= 1.0:
        raise SpecError(f"generate.{key} must be between 0 and 1")
    return value


def generate_chats(spec: dict[str, Any], now: float | None = None) -> list[Chat]:
    """Deterministic bulk chats; the rules are in the module docstring."""
    unknown = set(spec) - _GENERATE_KEYS
    if unknown:
        raise SpecError(f"unknown generate fields: {', '.join(sorted(unknown))}")
    count = int(spec.get("count", 0))
    if count < 0:
        raise SpecError("generate.count must be >= 0")
    inactive_ratio = _ratio(spec, "inactive_ratio", 0.2)
    group_ratio = _ratio(spec, "group_ratio", 0.1)
    channel_ratio = _ratio(spec, "channel_ratio", 0.0)
    archived_ratio = _ratio(spec, "archived_ratio", 0.0)
    no_incoming_ratio = _ratio(spec, "no_incoming_ratio", 0.0)
    inactive_days = float(spec.get("inactive_days", 45))
    active_days = float(spec.get("active_days", 2))
    if inactive_days <= 0 or active_days <= 0:
        raise SpecError("generate.inactive_days and generate.active_days must be > 0")
    now = time.time() if now is None else now
    rng = random.Random(spec.get("seed", 1))

    indices = range(count)
    groups = set(rng.sample(indices, round(count * group_ratio)))
    rest = [i for i in indices if i not in groups]
    channels = set(rng.sample(rest, min(len(rest), round(count * channel_ratio))))
    inactive = set(rng.sample(indices, round(count * inactive_ratio)))
    archived = set(rng.sample(indices, round(count * archived_ratio)))
    no_incoming = set(rng.sample(indices, round(count * no_incoming_ratio)))

    old_from = inactive_days * DAY + 60.0
    old_span = inactive_days * DAY
    recent_span = active_days * DAY
    draw = rng.random
    chats: list[Chat] = []
    append = chats.append
    for i in indices:
        green_type = "user"
        if i in groups:
            kind, chat_id, name = "group", f"120363{i:012d}@g.us", f"Group {i}"
            green_type = "group"
        elif i in channels:
            kind, chat_id, name = "channel", f"120363{i:012d}@newsletter", f"Channel {i}"
        else:
            kind, chat_id, name = "user", f"79{i:011d}@c.us", f"Contact {i}"
        last = now - (old_from + draw() * old_span if i in inactive else draw() * recent_span)
        # The outgoing reply, when any, came a little before the last incoming message.
        reply_gap = draw() * 3600.0
        is_archived = i in archived
        if i in no_incoming:
            has_incoming, last_in, last_out = False, None, last
        else:
            has_incoming, last_in, last_out = True, last, last - reply_gap
        append(
            Chat(
                chat_id,
                kind,
                is_archived,
                has_incoming,
                last_in,
                last_out,
                0 if is_archived else i % 4,
                "active",
                [],
                name,
                # Generated ids and names need no JSON escaping; this saves the first getChats
                # of a 100,000-chat account a third of a second.
                f'{{"id":"{chat_id}","name":"{name}","type":"{green_type}","archive":',
            )
        )
    return chats


@dataclass(slots=True)
class Faults:
    """Injected misbehaviour. All of it applies to archive/unarchive calls only, except
    `outage_until` (every call of the account) and `latency_ms` (every answer of the account)."""

    error_ratio: float = 0.0
    error_statuses: list[int] = field(default_factory=lambda: list(DEFAULT_ERROR_STATUSES))
    fail_next: deque[int] = field(default_factory=deque)
    # Forms of simulator/echo.py: the next archive calls answer 400 quoting the request.
    echo_next: deque[str] = field(default_factory=deque)
    # GREEN-API's known false "already archived" (green-api/issues #488, #744): the next N
    # archive calls, and every archive call for these chats, answer "already archived" and
    # leave the chat as it is.
    false_already_archived: int = 0
    false_already_archived_chats: set[str] = field(default_factory=set)
    outage_until: float | None = None
    latency_ms: float = 0.0
    timeout_after_success_ms: float = 0.0
    seed: int | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)

    KEYS = frozenset(
        {
            "error_ratio",
            "error_statuses",
            "fail_next",
            "echo_next",
            "false_already_archived",
            "false_already_archived_chats",
            "outage_until",
            "outage_seconds",
            "latency_ms",
            "timeout_after_success_ms",
            "seed",
        }
    )

    def update(self, spec: dict[str, Any], now: float) -> None:
        if not isinstance(spec, dict):
            raise SpecError("faults is a JSON object")
        unknown = set(spec) - self.KEYS
        if unknown:
            raise SpecError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        if "error_ratio" in spec:
            ratio = float(spec["error_ratio"] or 0.0)
            if not 0.0 <= ratio <= 1.0:
                raise SpecError("faults.error_ratio must be between 0 and 1")
            self.error_ratio = ratio
        if "error_statuses" in spec:
            statuses = [_http_status(s) for s in spec["error_statuses"] or []]
            self.error_statuses = statuses or list(DEFAULT_ERROR_STATUSES)
        if "fail_next" in spec:
            self.fail_next = deque(_http_status(s) for s in spec["fail_next"] or [])
        if "echo_next" in spec:
            forms = spec["echo_next"] or []
            if not isinstance(forms, list) or not all(form in ECHO_FORMS for form in forms):
                raise SpecError(f"faults.echo_next is a list of: {', '.join(ECHO_FORMS)}")
            self.echo_next = deque(forms)
        if "false_already_archived" in spec:
            count = int(spec["false_already_archived"] or 0)
            if count < 0:
                raise SpecError("faults.false_already_archived is a count >= 0")
            self.false_already_archived = count
        if "false_already_archived_chats" in spec:
            chats = spec["false_already_archived_chats"] or []
            if not isinstance(chats, list) or not all(isinstance(c, str) for c in chats):
                raise SpecError("faults.false_already_archived_chats is a list of chat ids")
            self.false_already_archived_chats = set(chats)
        if "outage_until" in spec:
            until = spec["outage_until"]
            self.outage_until = None if until is None else float(until)
        if "outage_seconds" in spec:
            seconds = spec["outage_seconds"]
            self.outage_until = None if not seconds else now + float(seconds)
        if "latency_ms" in spec:
            self.latency_ms = max(0.0, float(spec["latency_ms"] or 0.0))
        if "timeout_after_success_ms" in spec:
            self.timeout_after_success_ms = max(0.0, float(spec["timeout_after_success_ms"] or 0))
        if "seed" in spec:
            self.seed = None if spec["seed"] is None else int(spec["seed"])
            self.rng = random.Random(self.seed)

    def in_outage(self, now: float) -> bool:
        return self.outage_until is not None and now < self.outage_until

    def next_echo(self) -> str | None:
        """The form an archive call must echo its request in, or None."""
        return self.echo_next.popleft() if self.echo_next else None

    def falsely_already_archived(self, chat_id: str) -> bool:
        """Whether this archive call must answer "already archived" without archiving."""
        if chat_id in self.false_already_archived_chats:
            return True
        if self.false_already_archived > 0:
            self.false_already_archived -= 1
            return True
        return False

    def next_failure(self) -> int | None:
        """The status an archive call must fail with, or None to let it through."""
        if self.fail_next:
            return self.fail_next.popleft()
        if self.error_ratio and self.rng.random() < self.error_ratio:
            return self.rng.choice(self.error_statuses)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "error_ratio": self.error_ratio,
            "error_statuses": list(self.error_statuses),
            "fail_next": list(self.fail_next),
            "echo_next": list(self.echo_next),
            "false_already_archived": self.false_already_archived,
            "false_already_archived_chats": sorted(self.false_already_archived_chats),
            "outage_until": self.outage_until,
            "latency_ms": self.latency_ms,
            "timeout_after_success_ms": self.timeout_after_success_ms,
            "seed": self.seed,
        }


def _chat_id(chat: Chat) -> str:
    return chat.id


def _neg_incoming(chat: Chat) -> float:
    return -chat.last_incoming  # type: ignore[operator]


def _neg_outgoing(chat: Chat) -> float:
    return -chat.last_outgoing  # type: ignore[operator]


def _http_status(value: Any) -> int:
    status = int(value)
    if not 100 <= status <= 599:
        raise SpecError(f"{value!r} is not an HTTP status")
    return status


class ChatIndex:
    """Orders the listings need, built on first use after the chat set changed."""

    def __init__(self, chats: Iterable[Chat]) -> None:
        # Sort by id once, then by one float per chat: the sort is stable, so ties keep id order
        # and every listing is deterministic, without building a tuple key per chat.
        by_id = sorted(chats, key=_chat_id)
        activity = [chat.last_activity for chat in by_id]
        ranks = range(len(by_id))

        # Wassenger: chats never active sort as the oldest. Descending is the exact reverse, so a
        # page of either order is stable while the chat set does not change.
        oldest_key = [-math.inf if ts is None else ts for ts in activity]
        self.wassenger_asc: list[Chat] = [
            by_id[i] for i in sorted(ranks, key=oldest_key.__getitem__)
        ]
        # GREEN-API never lists channels, and orders by activity without exposing timestamps.
        recent_key = [math.inf if ts is None else -ts for ts in activity]
        self.green_by_activity: list[Chat] = [
            by_id[i]
            for i in sorted(ranks, key=recent_key.__getitem__)
            if by_id[i].kind != "channel"
        ]
        visible = [chat for chat in by_id if chat.kind != "channel"]
        self.incoming: list[Chat] = sorted(
            (c for c in visible if c.has_incoming and c.last_incoming is not None),
            key=_neg_incoming,
        )
        self.incoming_keys: list[float] = [_neg_incoming(c) for c in self.incoming]
        self.outgoing: list[Chat] = sorted(
            (c for c in visible if c.last_outgoing is not None), key=_neg_outgoing
        )
        self.outgoing_keys: list[float] = [_neg_outgoing(c) for c in self.outgoing]
        self.filtered: dict[tuple[Any, ...], list[Chat]] = {}

    def window(self, direction: str, since: float, until: float = math.inf) -> list[Chat]:
        """Chats whose last message of `direction` is at or after `since` and before `until`,
        newest first."""
        if direction == "incoming":
            chats, keys = self.incoming, self.incoming_keys
        else:
            chats, keys = self.outgoing, self.outgoing_keys
        return chats[bisect.bisect_right(keys, -until) : bisect.bisect_right(keys, -since)]

    def wassenger_view(
        self, descending: bool, statuses: frozenset[str] | None, types: frozenset[str] | None
    ) -> list[Chat]:
        key = (descending, statuses, types)
        view = self.filtered.get(key)
        if view is None:
            chats: Iterable[Chat] = self.wassenger_asc
            if descending:
                chats = reversed(self.wassenger_asc)
            if statuses is not None:
                chats = [c for c in chats if c.status in statuses]
            if types is not None:
                chats = [c for c in chats if WASSENGER_TYPES[c.kind] in types]
            view = list(chats)
            if len(self.filtered) >= 64:
                self.filtered.clear()
            self.filtered[key] = view
        return view


WASSENGER_TYPES = {"user": "chat", "group": "group", "channel": "channel"}


@dataclass
class Account:
    provider: str
    id: str
    token: str
    status: str = "authorized"
    # A status set for a while (`status_seconds`): the account is authorized again after this.
    status_until: float | None = None
    chats: dict[str, Chat] = field(default_factory=dict)
    rate_limits: dict[str, int | None] = field(default_factory=dict)
    retry_after: float | None = None
    faults: Faults = field(default_factory=Faults)
    settings: dict[str, Any] = field(default_factory=dict)
    journals: Journals = field(default_factory=Journals)
    limiter: dict[str, SlidingWindow] = field(default_factory=dict, repr=False)
    _index: ChatIndex | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return account_label(self.provider, self.id)

    @property
    def index(self) -> ChatIndex:
        if self._index is None:
            self._index = ChatIndex(self.chats.values())
        return self._index

    def build_index(self) -> ChatIndex:
        return self.index

    def current_status(self, now: float) -> str:
        """The status now: a timed one ends by itself (an instance wakes up, a device comes
        back), as the provider's own would."""
        if self.status_until is not None and now >= self.status_until:
            self.status, self.status_until = "authorized", None
        return self.status

    def chats_changed(self) -> None:
        self._index = None

    def put_chats(self, chats: Iterable[Chat]) -> int:
        added = 0
        store = self.chats
        for chat in chats:
            store[chat.id] = chat
            added += 1
        self.chats_changed()
        return added

    def info(self) -> dict[str, Any]:
        # Never the token: admin answers end up in test logs.
        return {
            "provider": self.provider,
            "id": self.id,
            "status": self.current_status(time.time()),
            "status_until": self.status_until,
            "chats": len(self.chats),
            "rate_limits": dict(self.rate_limits),
            "retry_after": self.retry_after,
            "faults": self.faults.to_dict(),
            "settings": dict(self.settings),
            "journals": self.journals.to_dict(),
        }


_ACCOUNT_KEYS = {
    "provider",
    "id",
    "token",
    "status",
    "status_seconds",
    "rate_limits",
    "retry_after",
    "faults",
    "chats",
    "generate",
    "settings",
    "journals",
}


def _rate_limits(provider: str, spec: Any) -> dict[str, int | None]:
    if not isinstance(spec, dict):
        raise SpecError("rate_limits is an object of method name to calls per second")
    known = DEFAULT_RATE_LIMITS[provider]
    limits: dict[str, int | None] = {}
    for method, value in spec.items():
        if method not in known:
            raise SpecError(f"{provider} has no rate-limited method {method!r}")
        limit = None if value is None else int(value)
        if limit is not None and limit < 0:
            raise SpecError("a rate limit is >= 0 (0 or null: unlimited)")
        limits[method] = limit or None
    return limits


class SimulatorState:
    """Every account of both providers, plus the call counters."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.accounts: dict[tuple[str, str], Account] = {}
        self.counters = Counters()
        # Wassenger authenticates by API key first; this finds a key's devices without a scan.
        self._wassenger_tokens: dict[str, list[Account]] = {}

    # ----- accounts -------------------------------------------------------------------------

    def put_account(self, provider: str, account_id: str, spec: dict[str, Any]) -> Account:
        if not isinstance(spec, dict):
            raise SpecError("an account is a JSON object")
        unknown = set(spec) - _ACCOUNT_KEYS
        if unknown:
            raise SpecError(f"unknown account fields: {', '.join(sorted(unknown))}")
        account_id = normalise_account_id(provider, account_id)
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            raise SpecError("an account needs a non-empty string token")
        now = time.time()
        account = Account(provider=provider, id=account_id, token=token)
        account.rate_limits = dict(DEFAULT_RATE_LIMITS[provider])
        settings = spec.get("settings")
        account.journals.created(settings if isinstance(settings, dict) else {}, now)
        self._apply_changes(account, spec, now)
        chats: list[Chat] = []
        if spec.get("generate"):
            chats.extend(generate_chats(spec["generate"], now))
        for chat_spec in spec.get("chats") or []:
            chats.append(parse_chat(chat_spec, now))
        account.put_chats(chats)
        # Sort now, outside the lock, rather than stall the first listing call of a big account.
        account.build_index()
        with self.lock:
            self.accounts[(provider, account_id)] = account
            self._reindex_tokens()
        return account

    def patch_account(self, provider: str, account_id: str, changes: dict[str, Any]) -> Account:
        if not isinstance(changes, dict):
            raise SpecError("a patch is a JSON object")
        allowed = {
            "token",
            "status",
            "status_seconds",
            "rate_limits",
            "retry_after",
            "faults",
            "settings",
            "journals",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise SpecError(f"fields a patch cannot change: {', '.join(sorted(unknown))}")
        if "token" in changes:
            token = changes["token"]
            if not isinstance(token, str) or not token:
                raise SpecError("token must be a non-empty string")
        now = time.time()
        with self.lock:
            account = self._require(provider, account_id)
            # Validate on a scratch account first so a bad patch changes nothing at all.
            scratch = Account(provider=account.provider, id=account.id, token=account.token)
            scratch.rate_limits = dict(account.rate_limits)
            self._apply_changes(scratch, changes, now)
            if "token" in changes:
                account.token = changes["token"]
            self._apply_changes(account, changes, now)
            self._reindex_tokens()
            return account

    def _apply_changes(self, account: Account, spec: dict[str, Any], now: float) -> None:
        if "status_seconds" in spec and "status" not in spec:
            raise SpecError("status_seconds goes with a status")
        if "status" in spec:
            status = spec["status"]
            if status not in STATUSES:
                raise SpecError(f"status must be one of {', '.join(STATUSES)}")
            only = PROVIDER_ONLY.get(status)
            if only is not None and only != account.provider:
                raise SpecError(f"status {status} is a {only} state")
            seconds = spec.get("status_seconds")
            if seconds is not None and (isinstance(seconds, bool) or float(seconds) <= 0):
                raise SpecError("status_seconds is a number of seconds > 0")
            account.status = status
            account.status_until = None if seconds is None else now + float(seconds)
        if "rate_limits" in spec:
            account.rate_limits.update(_rate_limits(account.provider, spec["rate_limits"] or {}))
        if "retry_after" in spec:
            value = spec["retry_after"]
            account.retry_after = None if value is None else max(0.0, float(value))
        if "faults" in spec:
            account.faults.update(spec["faults"] or {}, now)
        if "settings" in spec:
            settings = spec["settings"] or {}
            if not isinstance(settings, dict):
                raise SpecError("settings is a JSON object")
            check_settings(settings)
            before = dict(account.settings)
            account.settings.update(settings)
            account.journals.settings_changed(before, account.settings, now)
        if "journals" in spec:
            account.journals.update(spec["journals"] or {}, now)

    def add_chats(
        self,
        provider: str,
        account_id: str,
        chats: list[dict[str, Any]] | None = None,
        generate: dict[str, Any] | None = None,
    ) -> int:
        now = time.time()
        parsed: list[Chat] = generate_chats(generate, now) if generate else []
        parsed.extend(parse_chat(spec, now) for spec in chats or [])
        with self.lock:
            account = self._require(provider, account_id)
            account.put_chats(parsed)
            account.build_index()
            return len(parsed)

    def get(self, provider: str, account_id: str) -> Account | None:
        try:
            account_id = normalise_account_id(provider, account_id)
        except SpecError:
            return None
        return self.accounts.get((provider, account_id))

    def _require(self, provider: str, account_id: str) -> Account:
        account = self.get(provider, account_id)
        if account is None:
            raise KeyError(account_label(provider, account_id))
        return account

    def delete_account(self, provider: str, account_id: str) -> bool:
        with self.lock:
            account = self.get(provider, account_id)
            if account is None:
                return False
            del self.accounts[(account.provider, account.id)]
            self._reindex_tokens()
            return True

    def delete_all(self) -> None:
        with self.lock:
            self.accounts.clear()
            self._wassenger_tokens.clear()

    def _reindex_tokens(self) -> None:
        tokens: dict[str, list[Account]] = {}
        for (provider, _), account in sorted(self.accounts.items()):
            if provider == WASSENGER:
                tokens.setdefault(account.token, []).append(account)
        self._wassenger_tokens = tokens

    def wassenger_devices_for(self, token: str) -> list[Account]:
        return self._wassenger_tokens.get(token, [])

    def list_accounts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self.accounts[key].info() for key in sorted(self.accounts)]

    # ----- truth for tests --------------------------------------------------------------------

    def chat_state(self, provider: str, account_id: str, chat_id: str) -> dict[str, Any] | None:
        with self.lock:
            chat = self._require(provider, account_id).chats.get(chat_id)
            return None if chat is None else chat.to_dict()

    def inactive_chat_ids(
        self, provider: str, account_id: str, days: float, now: float | None = None
    ) -> list[str]:
        """Chats a sweep with this threshold must archive: not archived, not a channel, and last
        active before the cutoff or never."""
        cutoff = (time.time() if now is None else now) - days * DAY
        with self.lock:
            account = self._require(provider, account_id)
            return sorted(
                chat.id
                for chat in account.chats.values()
                if not chat.archived
                and chat.kind != "channel"
                and (chat.last_activity is None or chat.last_activity < cutoff)
            )

    def summary(
        self, provider: str, account_id: str, days: float | None = None, now: float | None = None
    ) -> dict[str, Any]:
        with self.lock:
            account = self._require(provider, account_id)
            by_kind = dict.fromkeys(KINDS, 0)
            archived = no_incoming = 0
            for chat in account.chats.values():
                by_kind[chat.kind] += 1
                archived += chat.archived
                no_incoming += not chat.has_incoming
            result: dict[str, Any] = {
                "provider": account.provider,
                "id": account.id,
                "status": account.current_status(time.time()),
                "chats": len(account.chats),
                "archived": archived,
                "not_archived": len(account.chats) - archived,
                "no_incoming": no_incoming,
                "by_kind": by_kind,
            }
        if days is not None:
            result["days"] = days
            result["inactive"] = len(self.inactive_chat_ids(provider, account_id, days, now))
        return result

    # ----- counters and the limiter -----------------------------------------------------------

    def counter(self, account: Account, method: str) -> MethodCounter:
        counter = self.counters.method(account.label, method)
        counter.calls += 1
        counter.last_at = time.time()
        return counter

    def admit(self, account: Account, method: str, counter: MethodCounter, now: float) -> bool:
        """Take a rate slot for one call, or count it as rate limited (it then takes no slot)."""
        window = account.limiter.get(method)
        if window is None:
            window = account.limiter[method] = SlidingWindow()
        if not window.fits(now, account.rate_limits.get(method)):
            counter.refused(window.ages(now))
            return False
        window.add(now)
        counter.accepted(now)
        return True

    def admit_all(
        self, accounts: list[Account], method: str, counters: list[MethodCounter], now: float
    ) -> bool:
        """All-or-nothing `admit` for a call charged to several accounts (Wassenger /devices)."""
        windows = []
        for account in accounts:
            window = account.limiter.get(method)
            if window is None:
                window = account.limiter[method] = SlidingWindow()
            windows.append(window)
        if not all(
            w.fits(now, a.rate_limits.get(method)) for w, a in zip(windows, accounts, strict=True)
        ):
            for counter in counters:
                counter.rate_limited += 1
            return False
        for window, counter in zip(windows, counters, strict=True):
            window.add(now)
            counter.accepted(now)
        return True

    def counters_snapshot(self) -> dict[str, Any]:
        with self.lock:
            return self.counters.snapshot()

    def reset_counters(self) -> None:
        with self.lock:
            self.counters.reset()

    # ----- scenarios --------------------------------------------------------------------------

    def apply_scenario(self, scenario: dict[str, Any]) -> int:
        """Create every account of a scenario (`{"accounts": [{provider, id, ...PUT body}]}`)."""
        accounts = scenario.get("accounts")
        if not isinstance(accounts, list):
            raise SpecError("a scenario is an object with an 'accounts' list")
        for entry in accounts:
            if not isinstance(entry, dict):
                raise SpecError("each scenario account is an object")
            spec = dict(entry)
            provider = spec.pop("provider", None)
            account_id = spec.pop("id", None)
            if not isinstance(provider, str) or account_id is None:
                raise SpecError("each scenario account needs provider and id")
            self.put_account(provider, str(account_id), spec)
        return len(accounts)


def load_scenario(path: str | Path) -> dict[str, Any]:
    """Read a scenario file: TOML when it ends in .toml, JSON otherwise."""
    path = Path(path)
    raw = path.read_bytes()
    is_toml = path.suffix.lower() == ".toml"
    data = tomllib.loads(raw.decode()) if is_toml else json.loads(raw)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a scenario is an object with an 'accounts' list")
    return data


def retry_after_header(seconds: float) -> str:
    # The header carries whole seconds; rounding down could invite a retry that is still too early.
    return str(math.ceil(seconds))
