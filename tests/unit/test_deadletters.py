"""The dead-letter store: durable entries, filters, replay that never loses an entry."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CANARY, KEYS, Env
from worker.consumer import dead_letter_message
from worker.stores import deadletters
from worker.stores.deadletters import CorruptEntry, DeadLetter, DeadLetterStore


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
    fetched = store.read(first)
    assert fetched is not None and fetched.reason == "chat_not_found" and fetched.created_at == 1.0
    assert [e.id for e in store.iter()] == [third, second, first]
    assert [e.id for e in store.iter(reason="chat_not_found")] == [third, first]
    assert [e.id for e in store.iter(account="green-api:7105000000")] == [second]
    assert [e.id for e in store.iter(limit=2)] == [third, second]
    assert store.counts() == {
        ("chat_not_found", "green-api:7105187566"): 2,
        ("no_messages", "green-api:7105000000"): 1,
    }
    assert store.read("missing") is None


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
    assert store.read(good) is None
    assert store.read(bad) is not None  # still invalid: kept, reported


def test_enqueue_failure_keeps_the_entry(store: DeadLetterStore) -> None:
    kept = store.add(entry("chat_not_found"))

    def broken(job: dict) -> str:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        store.replay(store.iter(), broken)
    assert store.read(kept) is not None


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
    stored = store.read(entry_id)
    assert stored is not None and CANARY not in stored.detail + stored.excerpt


def test_a_malformed_message_never_leaves_half_a_token_in_its_excerpt(archiver_env: Env) -> None:
    # The token straddles the excerpt's length: cutting before redacting would keep its start.
    body = ("x" * 190 + f" {CANARY} " + "y" * 50).encode()
    message = SimpleNamespace(body=body, headers={"id": "raw-1"})
    dead_letter_message(message, "undecodable message (ValueError)")  # type: ignore[arg-type]
    [stored] = list(archiver_env.services.dead_letters.iter())
    assert stored.task_id == "raw-1" and stored.reason == "invalid_request"
    assert len(stored.excerpt) <= 200 and CANARY[:8] not in stored.excerpt


# --- always valid: fields cleaned before serializing, caps, tolerant reading ----------------------

# Excerpts a provider answer or a malformed message can really carry: GREEN-API paths (the token
# segment is a secret shape) next to quotes and backslashes, which JSON escapes with a backslash
# that a shape redacting the serialized text would swallow.
AWKWARD_EXCERPTS = [
    f'POST /waInstance1101000001/archiveChat/{CANARY}" HTTP/1.1',
    f'{{"url": "https://h/waInstance1101000001/archiveChat/{CANARY}\\"", "x": "\\\\"}}',
    f"/waInstance1/getChats/{CANARY}\\",
    '/waInstance1/archiveChat/\\"',
    f"token: \"{CANARY}\\\" authorization='{CANARY}'",
    'say "hi" \\ back\\slash \\\\ and \\u0041 and \\"quoted\\"',
    "lone surrogate \ud800 and \udfff, emoji \U0001f600, nul \x00, newline\nend",
]


def stored_text(archiver_env: Env, entry_id: str) -> str:
    return archiver_env.redis.hget(KEYS.dlq_entries, entry_id)


@pytest.mark.parametrize("excerpt", AWKWARD_EXCERPTS)
def test_an_entry_stays_json_whatever_its_excerpt_quotes(
    archiver_env: Env, store: DeadLetterStore, excerpt: str
) -> None:
    entry_id = store.add(
        DeadLetter(
            reason="unexpected_response",
            job={"provider": "green-api", "account": "1101000001", "chat_id": "7@c.us"},
            detail=f"HTTP 400 from /waInstance1101000001/archiveChat/{CANARY}",
            excerpt=excerpt,
        )
    )
    text = stored_text(archiver_env, entry_id)
    json.loads(text)  # valid JSON: the old store broke here
    stored = store.read(entry_id)
    assert stored is not None and stored.reason == "unexpected_response"
    assert CANARY not in text and CANARY not in stored.excerpt + stored.detail
    assert [e.id for e in store.iter()] == [entry_id]


def test_lone_surrogates_in_any_field_are_stored_as_escapes(
    archiver_env: Env, store: DeadLetterStore
) -> None:
    odd = "\ud800"
    entry_id = store.add(
        DeadLetter(
            reason="invalid_request",
            job={"provider": "green-api", "account": "1101000001", "chat_id": f"7900{odd}@c.us"},
            detail=f"chat_id {odd}",
            excerpt=f"body {odd}",
            worker=f"host{odd}",
            task_id=f"task{odd}",
        )
    )
    stored = store.read(entry_id)
    assert stored is not None
    assert stored.job["chat_id"] == "7900\\ud800@c.us"  # the escape as text: printable
    assert (stored.detail, stored.excerpt) == ("chat_id \\ud800", "body \\ud800")
    assert (stored.worker, stored.task_id) == ("host\\ud800", "task\\ud800")
    stored_text(archiver_env, entry_id).encode("utf-8")  # strict UTF-8 all the way


def test_every_field_is_capped(archiver_env: Env, store: DeadLetterStore) -> None:
    huge = "9" * 1_000_000
    wide = {f"k{n}": n for n in range(1000)}
    deep: dict = {"leaf": "x"}
    for _ in range(50):
        deep = {"d": deep}
    entry_id = store.add(
        DeadLetter(
            reason="invalid_request" * 10,
            job={
                "provider": "green-api",
                "account": "1101000001",
                "chat_id": huge + "@c.us",
                "wide": wide,
                "deep": deep,
                "many": [huge] * 100,
                "big_int": 10**5000,
            },
            detail=huge,
            excerpt=huge,
            worker=huge,
            task_id=huge,
        )
    )
    text = stored_text(archiver_env, entry_id)
    assert len(text) < 8_000, len(text)  # from a 100 MB entry
    stored = store.read(entry_id)
    assert stored is not None
    assert len(stored.job["chat_id"]) == deadletters.JOB_STRING_LIMIT
    assert stored.job["chat_id"].endswith(deadletters.CUT)
    assert len(stored.detail) == deadletters.DETAIL_LIMIT
    assert len(stored.excerpt) == deadletters.EXCERPT_LIMIT
    assert len(stored.worker) == deadletters.WORKER_LIMIT
    assert len(stored.reason) == deadletters.REASON_LIMIT
    assert stored.task_id is not None and len(stored.task_id) == deadletters.TASK_ID_LIMIT
    assert len(stored.job["wide"]) == deadletters.JOB_ITEMS_LIMIT + 1  # and a "… N more" item
    # the counts field is built from the capped entry, not from the megabyte
    [(reason, account)] = store.counts()
    assert len(account) < 300 and len(reason) == deadletters.REASON_LIMIT


def test_redaction_runs_on_fields_inside_the_job_too(store: DeadLetterStore) -> None:
    entry_id = store.add(
        DeadLetter(
            reason="invalid_request",
            job={"provider": "green-api", "extra": {"url": f"/waInstance1/archiveChat/{CANARY}"}},
            detail="",
        )
    )
    stored = store.read(entry_id)
    assert stored is not None
    assert stored.job["extra"]["url"] == "/waInstance1/archiveChat/***"


def old_version_entry(entry: DeadLetter) -> str:
    """What the store wrote before: redact() run on the JSON text. The redaction of that version
    masked a GREEN-API path's token up to the next quote, backslash included (`.../archiveChat/
    abcdefgh\\"` became `.../archiveChat/***"`), which left the excerpt's quote unescaped:
    reproduced here as that version's pattern did it."""
    text = json.dumps(asdict(entry), sort_keys=True, default=str)
    return re.sub(r"(/waInstance\d+/[A-Za-z]+/)[^/?#\s\"'<>]+", r"\g<1>***", text)


def store_like_the_old_version(archiver_env: Env, entry: DeadLetter) -> str:
    text = old_version_entry(entry)
    pipe = archiver_env.redis.pipeline(transaction=True)
    pipe.hset(KEYS.dlq_entries, entry.id, text)
    pipe.zadd(KEYS.dlq_index, {entry.id: entry.created_at})
    pipe.hincrby(KEYS.dlq_counts, f"{entry.reason}|{entry.account}", 1)
    pipe.execute()
    return entry.id


def test_a_corrupt_entry_from_an_older_version_is_reported_never_fatal(
    archiver_env: Env, store: DeadLetterStore
) -> None:
    broken = DeadLetter(
        reason="unexpected_response",
        job={"provider": "green-api", "account": "1101000001", "chat_id": "79001000001@c.us"},
        detail="HTTP 400",
        excerpt='POST /waInstance1101000001/archiveChat/abcdefgh" HTTP/1.1',
        created_at=2.0,
    )
    with pytest.raises(ValueError, match="Expecting"):
        json.loads(old_version_entry(broken))  # the bug this store no longer has
    corrupt_id = store_like_the_old_version(archiver_env, broken)
    good = store.add(entry("chat_not_found", created=1.0))

    seen: list[CorruptEntry] = []
    assert [e.id for e in store.iter(on_corrupt=seen.append)] == [good]
    [report] = seen
    assert report.id == corrupt_id and "JSONDecodeError" in report.error
    assert "\n" not in report.summary()
    found = store.read(corrupt_id)
    assert isinstance(found, CorruptEntry) and found.stored.startswith('{"attempts"')

    # Removing it takes its count with it: the count field is read from its text.
    assert store.counts()[("unexpected_response", "green-api:1101000001")] == 1
    assert store.remove([corrupt_id]) == 1
    assert ("unexpected_response", "green-api:1101000001") not in store.counts()
    assert store.read(corrupt_id) is None and len(store) == 1


def test_entries_that_parse_but_are_not_entries_are_corrupt(
    archiver_env: Env, store: DeadLetterStore
) -> None:
    for entry_id, text in {
        "aaaaaa01": "[1, 2]",
        "aaaaaa02": '{"reason": "x"}',  # required fields missing
        "aaaaaa03": '{"reason": "x", "job": [], "detail": ""}',
        "aaaaaa04": "[" * 100_000,  # deeper than the JSON parser recurses
    }.items():
        archiver_env.redis.hset(KEYS.dlq_entries, entry_id, text)
        archiver_env.redis.zadd(KEYS.dlq_index, {entry_id: 1})
    seen: list[CorruptEntry] = []
    assert list(store.iter(on_corrupt=seen.append)) == []
    assert sorted(c.id for c in seen) == ["aaaaaa01", "aaaaaa02", "aaaaaa03", "aaaaaa04"]
    assert all(len(c.stored) <= 2000 for c in seen)
    assert store.remove(["aaaaaa01", "aaaaaa02", "aaaaaa03", "aaaaaa04"]) == 4


def test_find_an_id_by_prefix_without_a_scan(archiver_env: Env, store: DeadLetterStore) -> None:
    ids = [
        store.add(replace(entry("chat_not_found"), id=entry_id))
        for entry_id in ("abcdef01aa", "abcdef02bb", "abcdef02cc", "123456ffff")
    ]
    assert store.find("abcdef") == (3, ids[:3])
    assert store.find("abcdef02", limit=1) == (2, ["abcdef02bb"])
    assert store.find("123456") == (1, ["123456ffff"])
    assert store.find("99") == (0, [])
    assert store.unique_prefix_length(["123456ffff"], minimum=4) == 4
    assert store.unique_prefix_length(ids, minimum=4) == 9  # abcdef02b vs abcdef02c
    store.remove(["abcdef02cc"])
    assert store.find("abcdef02") == (1, ["abcdef02bb"])
    assert store.unique_prefix_length(["abcdef02bb"], minimum=4) == 8


def test_a_store_written_before_the_id_set_gets_it_rebuilt(
    archiver_env: Env, store: DeadLetterStore
) -> None:
    ids = [store.add(entry("chat_not_found", created=float(n))) for n in range(5)]
    archiver_env.redis.delete(KEYS.dlq_ids)  # as an older version left the store
    assert store.find(ids[3][:12]) == (1, [ids[3]])
    assert archiver_env.redis.zcard(KEYS.dlq_ids) == 5
    assert set(archiver_env.redis.zrange(KEYS.dlq_ids, 0, -1, withscores=True)) == {
        (i, 0.0) for i in ids
    }


@settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written to .hypothesis/ in the repository
    suppress_health_check=list(HealthCheck),
)
@given(
    text=st.lists(
        st.text(st.characters(exclude_categories=()), max_size=20)  # surrogates included
        | st.sampled_from(["\ud800", "\udfff", '"', "\\", "/waInstance1/archiveChat/", "token:"]),
        max_size=15,
    ).map("".join),
    job=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=10), children, max_size=5)
        ),
        max_leaves=30,
    ),
)
def test_any_text_in_any_field_round_trips_as_valid_json(
    store: DeadLetterStore, text: str, job: object
) -> None:
    entry_id = store.add(
        DeadLetter(
            reason=text,
            job={"chat_id": text, "extra": job},  # type: ignore[dict-item]
            detail=text,
            excerpt=text + f"/waInstance1/archiveChat/{text}",
            worker=text,
            task_id=text,
        )
    )
    stored = store.read(entry_id)
    assert stored is not None
    json.dumps(asdict(stored), allow_nan=False).encode("utf-8")
    store.remove([entry_id])
