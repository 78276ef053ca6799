"""A small client for the simulator's `/_sim` admin API, for tests, the demo and benchmarks."""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx


class SimulatorError(RuntimeError):
    """The admin API refused a request; the message is its `error` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"simulator answered {status}: {message}")
        self.status = status
        self.message = message


class SimulatorClient:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    # ----- plumbing ---------------------------------------------------------------------------

    def _call(self, verb: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(verb, path, **kwargs)
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise SimulatorError(response.status_code, str(message))
        return response.json()

    @staticmethod
    def _account(provider: str, account_id: str) -> str:
        return f"/_sim/accounts/{quote(provider, safe='')}/{quote(str(account_id), safe='')}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----- accounts ---------------------------------------------------------------------------

    def put_account(self, provider: str, account_id: str, **spec: Any) -> dict[str, Any]:
        """Create or replace an account: token, status, rate_limits, retry_after, faults, chats,
        generate, settings, journals."""
        return self._call("PUT", self._account(provider, account_id), json=spec)

    def patch_account(self, provider: str, account_id: str, **changes: Any) -> dict[str, Any]:
        """Change token, status, faults, rate_limits, retry_after, settings or journals of an
        account."""
        return self._call("PATCH", self._account(provider, account_id), json=changes)

    def set_status(
        self, provider: str, account_id: str, status: str, seconds: float | None = None
    ) -> dict[str, Any]:
        """Put the account in a state (``sleep_mode``, ``starting``, ``not_operative``...), for
        ``seconds`` when given: it is ``authorized`` again after that, by itself."""
        changes: dict[str, Any] = {"status": status}
        if seconds is not None:
            changes["status_seconds"] = seconds
        return self.patch_account(provider, account_id, **changes)

    def false_already_archived(
        self, provider: str, account_id: str, count: int = 0, chats: list[str] | None = None
    ) -> dict[str, Any]:
        """The next ``count`` archive calls, and every one for ``chats``, answer "already
        archived" without archiving (GREEN-API's #488/#744)."""
        faults = {"false_already_archived": count, "false_already_archived_chats": chats or []}
        return self.patch_account(provider, account_id, faults=faults)

    def account(self, provider: str, account_id: str) -> dict[str, Any]:
        return self._call("GET", self._account(provider, account_id))

    def accounts(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_sim/accounts")

    def delete_account(self, provider: str, account_id: str) -> None:
        self._call("DELETE", self._account(provider, account_id))

    def delete_accounts(self) -> None:
        self._call("DELETE", "/_sim/accounts")

    def add_chats(
        self,
        provider: str,
        account_id: str,
        chats: list[dict[str, Any]] | None = None,
        generate: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"chats": chats or []}
        if generate:
            body["generate"] = generate
        return self._call("POST", self._account(provider, account_id) + "/chats", json=body)

    def load_scenario(self, scenario: dict[str, Any]) -> int:
        return int(self._call("POST", "/_sim/scenario", json=scenario)["accounts"])

    # ----- truth ------------------------------------------------------------------------------

    def chat(self, provider: str, account_id: str, chat_id: str) -> dict[str, Any]:
        path = self._account(provider, account_id) + "/chats/" + quote(chat_id, safe="")
        return self._call("GET", path)

    def summary(self, provider: str, account_id: str, days: float | None = None) -> dict[str, Any]:
        params = {} if days is None else {"days": days}
        return self._call("GET", self._account(provider, account_id) + "/summary", params=params)

    def inactive(self, provider: str, account_id: str, days: float) -> list[str]:
        path = self._account(provider, account_id) + "/inactive"
        return list(self._call("GET", path, params={"days": days})["chat_ids"])

    # ----- counters ---------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/counters")

    def undocumented_calls(self) -> dict[str, int]:
        """Requests to paths the providers do not document, by verb and (masked) path."""
        return dict(self.counters()["undocumented"])

    def reset_counters(self) -> None:
        self._call("POST", "/_sim/counters/reset")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/health")
