"""The dead-letter store: durable entries, filters, replay that never loses an entry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import CANARY, Env
from worker.consumer import dead_letter_message
from worker.deadletters import DeadLetter, DeadLetterStore


def entry(
    reason: str,
    account: str = "7105187566",
    chat: str = "79001234567@c.us",
    created: float = 1000.0,
) -> DeadLetter:
    return DeadLetter(
        reason=reason,
        job={"provider": "green-api", "account": account, "chat_id": chat, "source": "test"},
        detail=f"{reason} happened",
        http_status=400,
        attempts=1,
        created_at=created,
    )


@pytest.fixture
def store(archiver_env: Env) -> DeadLetterStore:
    return archiver_env.services.dead_letters


def test_add_get_and_list_newest_first_with_filters(store: DeadLetterStore) -> None:
    first = store.add(entry("chat_not_found", created=1.0))
    second = store.add(entry("no_messages", account="7105000000", created=2.0))
    third = store.add(entry("chat_not_found", created=3.0))
    assert len(store) == 3
    fetched = store.get(first)
    assert fetched is not None and fetched.reason == "chat_not_found" and fetched.created_at == 1.0
    assert [e.id for e in store.iter()] == [third, second, first]
    assert [e.id for e in store.iter(reason="chat_not_found")] == [third, first]
    assert [e.id for e in store.iter(account="green-api:7105000000")] == [second]
    assert [e.id for e in store.iter(limit=2)] == [third, second]
    assert store.counts() == {
        ("chat_not_found", "green-api:7105187566"): 2,
        ("no_messages", "green-api:7105000000"): 1,
    }
    assert store.get("missing") is None


def test_many_entries_page_through(store: DeadLetterStore) -> None:
    for number in range(1203):
        store.add(entry("chat_not_found", chat=f"7900{number:07d}@c.us", created=float(number)))
    assert sum(1 for _ in store.iter()) == 1203
    assert len(store) == 1203


def test_replay_removes_only_what_was_enqueued(store: DeadLetterStore) -> None:
    good = store.add(entry("chat_not_found"))
    bad = store.add(
        DeadLetter(
            reason="invalid_request", job={"provider": "green-api"}, detail="account: missing"
        )
    )
    enqueued: list[dict] = []

    def enqueue(job: dict) -> str:
        if "chat_id" not in job:
            raise ValueError("chat_id: missing")
        enqueued.append(job)
        return "new-task"

    report = store.replay(store.iter(), enqueue)
    assert report.enqueued == [(good, "new-task")]
    assert report.refused == [(bad, "chat_id: missing")]
    assert enqueued == [entry("chat_not_found").job]
    assert store.get(good) is None
    assert store.get(bad) is not None  # still invalid: kept, reported


def test_enqueue_failure_keeps_the_entry(store: DeadLetterStore) -> None:
    kept = store.add(entry("chat_not_found"))

    def broken(job: dict) -> str:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        store.replay(store.iter(), broken)
    assert store.get(kept) is not None


def test_remove_keeps_the_counts_exact(store: DeadLetterStore) -> None:
    ids = [store.add(entry("chat_not_found")) for _ in range(3)]
    assert store.remove(ids[:2]) == 2
    assert store.remove(ids[:2]) == 0  # already gone: counted once only
    assert [e.id for e in store.iter()] == [ids[2]]
    assert store.remove([]) == 0
    assert store.counts() == {("chat_not_found", "green-api:7105187566"): 1}


def test_secrets_are_redacted_on_the_way_in(store: DeadLetterStore) -> None:
    leaky = DeadLetter(
        reason="internal_error",
        job={},
        detail=f"failed with {CANARY}",
        excerpt=f"https://h/waInstance1/archiveChat/{CANARY}",
    )
    entry_id = store.add(leaky)
    stored = store.get(entry_id)
    assert stored is not None and CANARY not in stored.detail + stored.excerpt


def test_a_malformed_message_never_leaves_half_a_token_in_its_excerpt(archiver_env: Env) -> None:
    # The token straddles the excerpt's length: cutting before redacting would keep its start.
    body = ("x" * 190 + f" {CANARY} " + "y" * 50).encode()
    message = SimpleNamespace(body=body, headers={"id": "raw-1"})
    dead_letter_message(message, "undecodable message (ValueError)")  # type: ignore[arg-type]
    [stored] = list(archiver_env.services.dead_letters.iter())
    assert stored.task_id == "raw-1" and stored.reason == "invalid_request"
    assert len(stored.excerpt) <= 200 and CANARY[:8] not in stored.excerpt
