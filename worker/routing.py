"""One Celery queue per account, so one account's backlog never stands in front of another's.

With a single FIFO queue, a job for an idle account waits behind every job of a busy one, however
good the limiter is. Each configured account therefore has its own queue,
``{queue}.{provider}.{id}`` (e.g. ``archive.green-api.7105187566``), and workers consume all
of them plus the intake queue ``{queue}``. kombu's Redis transport reads several queues
round-robin (the queue that just delivered goes to the back of its BRPOP list), so a free
worker slot serves each account with work in turn.

Our producers route straight to the account's queue when the account is in their accounts file.
Jobs that arrive on the intake queue (from ``send_task`` in another language, or for an account
the producer does not know) are run at once when the account has a permit free, and otherwise
forwarded to the account's queue by the worker (tasks/archive.py).
"""

from __future__ import annotations

from config import AccountRegistry


def account_queue(intake: str, provider: str, account_id: str) -> str:
    return f"{intake}.{provider}.{account_id}"


def queue_for(intake: str, registry: AccountRegistry | None, provider: str, account_id: str) -> str:
    """The account's queue when the account is configured, else the intake queue."""
    if registry is not None and registry.find(provider, account_id) is not None:
        return account_queue(intake, provider, account_id)
    return intake


def account_queues(intake: str, accounts: AccountRegistry) -> list[str]:
    return [account_queue(intake, account.provider, account.id) for account in accounts]
