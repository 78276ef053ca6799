"""The simulator's own control API under `/_sim`: JSON in, JSON out, no authentication.

    GET    /_sim/health                                   {"ok": true}
    GET    /_sim/accounts                                 [account info, ...]
    DELETE /_sim/accounts                                 remove every account
    PUT    /_sim/accounts/{provider}/{id}                 create or replace (body: account spec)
    PATCH  /_sim/accounts/{provider}/{id}                 token, status (+ status_seconds: the
                                                          state ends after that long), faults,
                                                          rate_limits, retry_after, settings,
                                                          journals (simulator/journals.py)
    GET    /_sim/accounts/{provider}/{id}                 account info
    DELETE /_sim/accounts/{provider}/{id}                 remove one account
    POST   /_sim/accounts/{provider}/{id}/chats           {"chats": [...], "generate": {...}}
                                                          or a bare list of chats; add or replace
    GET    /_sim/accounts/{provider}/{id}/chats/{chatId}  the chat's state
    GET    /_sim/accounts/{provider}/{id}/summary[?days=N]
    GET    /_sim/accounts/{provider}/{id}/inactive?days=N {"days": N, "chat_ids": [...]}
    POST   /_sim/scenario                                 {"accounts": [...]}: create them all
    GET    /_sim/counters                                 calls per account and method, and
                                                          per route: `routes` (documented) and
                                                          `undocumented` (any other path)
    POST   /_sim/counters/reset

Switches for the providers' awkward states, through PATCH:
    {"status": "sleep_mode", "status_seconds": 20}        GREEN-API asleep for 20 s (also
                                                          not_authorized, starting, blocked...;
                                                          Wassenger: not_operative...)
    {"faults": {"false_already_archived": 3}}             the next 3 archive calls answer
                                                          "already archived" and archive nothing
    {"faults": {"false_already_archived_chats": [id]}}    so does every archive call for these

Errors: 400 `{"error": "..."}` for a spec the simulator cannot hold, 404 `{"error": "..."}` for an
unknown account or chat. Account info never contains the token.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import tornado.web

from worker.sandbox.simulator.state import SimulatorState, SpecError

_ACCOUNT = r"/_sim/accounts/([^/]+)/([^/]+)"


class _AdminHandler(tornado.web.RequestHandler):
    state: SimulatorState

    def initialize(self, state: SimulatorState) -> None:
        self.state = state

    def check_xsrf_cookie(self) -> None:
        return None

    def reply(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(payload))

    def body_json(self) -> Any:
        if not self.request.body:
            return {}
        try:
            return json.loads(self.request.body)
        except ValueError as exc:
            raise tornado.web.HTTPError(400, reason="invalid JSON") from exc

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        message = self._reason
        if exc_info is not None:
            exc = exc_info[1]
            # SpecError is a ValueError; a bare ValueError/TypeError comes from a value that
            # would not convert (e.g. "latency_ms": "slow"): the request's fault either way.
            if isinstance(exc, ValueError | TypeError):
                status_code, message = 400, str(exc)
            elif isinstance(exc, KeyError):
                status_code, message = 404, f"unknown account {exc.args[0]}"
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": message}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Spec errors and unknown accounts are answers, not server faults worth a traceback.
        if isinstance(value, ValueError | TypeError | KeyError):
            return
        super().log_exception(typ, value, tb)


class HealthHandler(_AdminHandler):
    def get(self) -> None:
        self.reply({"ok": True})


class AccountsHandler(_AdminHandler):
    def get(self) -> None:
        self.reply(self.state.list_accounts())

    def delete(self) -> None:
        self.state.delete_all()
        self.reply({"ok": True})


class AccountHandler(_AdminHandler):
    def get(self, provider: str, account_id: str) -> None:
        with self.state.lock:
            account = self.state.get(provider, account_id)
            if account is None:
                raise KeyError(f"{provider}:{account_id}")
            self.reply(account.info())

    def put(self, provider: str, account_id: str) -> None:
        account = self.state.put_account(provider, account_id, self.body_json())
        with self.state.lock:
            self.reply(account.info())

    def patch(self, provider: str, account_id: str) -> None:
        account = self.state.patch_account(provider, account_id, self.body_json())
        with self.state.lock:
            self.reply(account.info())

    def delete(self, provider: str, account_id: str) -> None:
        if not self.state.delete_account(provider, account_id):
            raise KeyError(f"{provider}:{account_id}")
        self.reply({"ok": True})


class ChatsHandler(_AdminHandler):
    def post(self, provider: str, account_id: str) -> None:
        body = self.body_json()
        if isinstance(body, list):
            body = {"chats": body}
        if not isinstance(body, dict) or set(body) - {"chats", "generate"}:
            raise SpecError("expected {'chats': [...], 'generate': {...}} or a list of chats")
        added = self.state.add_chats(provider, account_id, body.get("chats"), body.get("generate"))
        with self.state.lock:
            total = len(self.state.get(provider, account_id).chats)  # type: ignore[union-attr]
        self.reply({"added": added, "chats": total})


class ChatHandler(_AdminHandler):
    def get(self, provider: str, account_id: str, chat_id: str) -> None:
        chat = self.state.chat_state(provider, account_id, unquote(chat_id))
        if chat is None:
            self.reply({"error": "unknown chat"}, 404)
            return
        self.reply(chat)


def _days(handler: _AdminHandler, required: bool) -> float | None:
    raw = handler.get_query_argument("days", None)
    if raw is None:
        if required:
            raise SpecError("days is required")
        return None
    try:
        return float(raw)
    except ValueError:
        raise SpecError("days must be a number") from None


class SummaryHandler(_AdminHandler):
    def get(self, provider: str, account_id: str) -> None:
        self.reply(self.state.summary(provider, account_id, _days(self, required=False)))


class InactiveHandler(_AdminHandler):
    def get(self, provider: str, account_id: str) -> None:
        days = _days(self, required=True)
        assert days is not None
        ids = self.state.inactive_chat_ids(provider, account_id, days)
        self.reply({"days": days, "chat_ids": ids})


class ScenarioHandler(_AdminHandler):
    def post(self) -> None:
        body = self.body_json()
        if not isinstance(body, dict):
            raise SpecError("a scenario is an object with an 'accounts' list")
        self.reply({"accounts": self.state.apply_scenario(body)})


class CountersHandler(_AdminHandler):
    def get(self) -> None:
        self.reply(self.state.counters_snapshot())


class CountersResetHandler(_AdminHandler):
    def post(self) -> None:
        self.state.reset_counters()
        self.reply({"ok": True})


def admin_routes(state: SimulatorState) -> list[tuple[str, type[_AdminHandler], dict[str, Any]]]:
    params = {"state": state}
    return [
        (r"/_sim/health", HealthHandler, params),
        (r"/_sim/accounts", AccountsHandler, params),
        (_ACCOUNT, AccountHandler, params),
        (_ACCOUNT + r"/chats", ChatsHandler, params),
        (_ACCOUNT + r"/chats/([^/]+)", ChatHandler, params),
        (_ACCOUNT + r"/summary", SummaryHandler, params),
        (_ACCOUNT + r"/inactive", InactiveHandler, params),
        (r"/_sim/scenario", ScenarioHandler, params),
        (r"/_sim/counters", CountersHandler, params),
        (r"/_sim/counters/reset", CountersResetHandler, params),
    ]
