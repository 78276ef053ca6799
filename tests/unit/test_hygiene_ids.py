"""Ids are ASCII digits (and Wassenger hex), matched whole, and normalised once, in
ArchiveJob.parse, which producers and workers share: every spelling of one account or chat is
one account, one rate limit, one queue and one "each chat once" mark, in both places."""

from __future__ import annotations

import httpx
import pytest
import respx

from config import PROVIDERS
from tasks.archive.runner import ArchiveRunner, Done, RunContext
from tests.conftest import CANARY, GREEN_ID, WASSENGER_ID, Env
from tests.support import JobDesk
from worker.contract.jobs import ArchiveJob, InvalidJob
from worker.producer import ArchiveProducer
from worker.stores.endings import Endings

CHAT = "79001234567@c.us"
GREEN_URL = f"http://provider.test/waInstance{GREEN_ID}/archiveChat/{CANARY}"


# Digits of other scripts, which \d matches and the providers do not.
ARABIC_INDIC, FULLWIDTH, DEVANAGARI = 0x0660, 0xFF10, 0x0966


def digits(text: str, zero: int) -> str:
    return "".join(chr(zero + int(char)) if char.isdigit() else char for char in text)


def job(**fields: str) -> dict[str, str]:
    return {"provider": "green-api", "account": GREEN_ID, "chat_id": CHAT, **fields}


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        (job(account=f" {GREEN_ID}"), job()),
        (job(account=f"{GREEN_ID}\n"), job()),  # accepted as its own account on main
        (job(account=f"\t{GREEN_ID}\r\n", chat_id=f" {CHAT}\n"), job()),
        (job(chat_id="79001234567@C.US"), job()),
        (job(provider=" Green-API "), job()),
        (
            job(provider="wassenger", account=WASSENGER_ID.upper()),
            job(provider="wassenger", account=WASSENGER_ID),
        ),
        (
            job(provider="wassenger", account=f"{WASSENGER_ID.upper()}\n"),
            job(provider="wassenger", account=WASSENGER_ID),
        ),
    ],
)
def test_spellings_of_one_account_or_chat_normalise_to_one(
    given: dict[str, str], normalised: dict[str, str]
) -> None:
    parsed = ArchiveJob.parse(given)
    assert {key: getattr(parsed, key) for key in normalised} == normalised
    assert parsed.account_key == f"{normalised['provider']}:{normalised['account']}"


@pytest.mark.parametrize(
    ("given", "field"),
    [
        (job(account=digits(GREEN_ID, ARABIC_INDIC)), "account"),
        (job(account=digits(GREEN_ID, FULLWIDTH)), "account"),
        (job(account=digits(GREEN_ID, DEVANAGARI)), "account"),
        (job(account=f"0{GREEN_ID}"), "account"),  # idInstance never starts with 0
        (job(account=f"{GREEN_ID}\n1"), "account"),
        (job(account=f"{GREEN_ID}\u200b"), "account"),  # a zero-width space from a paste
        (job(chat_id=digits(CHAT, ARABIC_INDIC)), "chat_id"),
        (job(chat_id=digits(CHAT, FULLWIDTH)), "chat_id"),
        (job(chat_id=digits(CHAT, DEVANAGARI)), "chat_id"),
        (job(chat_id=f"{CHAT}\n@c.us"), "chat_id"),
        (job(chat_id="79001234567@c.us\u0130"), "chat_id"),
        (job(provider="wassenger", account="61b37a069cba0c15d6c81c8\u212a"), "account"),
        (job(request_id="crm-1\nFAKE outcome line"), "request_id"),
        (job(request_id="crm-\udc80"), "request_id"),  # a lone surrogate: Redis cannot store it
        (job(source="sweep\r"), "source"),
    ],
)
def test_look_alike_digits_and_broken_text_are_refused_in_one_line(
    given: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidJob) as caught:
        ArchiveJob.parse(given)
    message = str(caught.value)
    assert message.startswith(f"{field}: ")
    assert message.isascii() and message.isprintable()  # escaped, whatever was given


def test_a_huge_id_is_refused_with_a_short_message() -> None:
    with pytest.raises(InvalidJob) as caught:
        ArchiveJob.parse(job(chat_id="7" * 1_000_000 + "@c.us"))
    assert len(str(caught.value)) < 300


def test_patterns_are_anchored_and_ascii() -> None:
    """fullmatch or search, with or without a trailing newline: the patterns say the same."""
    for spec in PROVIDERS.values():
        for pattern in (spec.account_id_pattern, spec.chat_id_pattern):
            assert pattern.pattern.startswith(r"\A") and pattern.pattern.endswith(r"\Z")
            assert r"\d" not in pattern.pattern
    green = PROVIDERS["green-api"]
    assert green.account_id_pattern.match(f"{GREEN_ID}\n") is None
    assert green.chat_id_pattern.search(f"{CHAT}\n") is None


def test_the_producer_sees_one_account_and_one_chat_in_every_spelling(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    first = producer.enqueue(job())
    # On main each of these was a new account (and a new pending mark, and a new queue).
    for spelling in (
        job(account=f"{GREEN_ID}\n"),
        job(account=f" {GREEN_ID}"),
        job(chat_id=f"{CHAT.upper()} "),
    ):
        assert producer.enqueue(spelling) == first
    assert archiver_env.services.jobs.counts().jobs == 1  # one job stored, for one account


def test_the_worker_finds_the_account_and_its_rate_limit_in_every_spelling(
    archiver_env: Env, producer: ArchiveProducer
) -> None:
    client = httpx.Client(timeout=2)
    runner = ArchiveRunner(
        archiver_env.services,
        archiver_env.accounts,
        Endings(archiver_env.services, producer.app.backend),
        client_factory=lambda: client,
    )
    # A message another producer sent with odd spellings, stored under its account (as the
    # router stores it), run with the kwargs as they came.
    odd = job(account=f" {GREEN_ID}\n", chat_id=f"{CHAT}\n")
    desk = JobDesk(archiver_env.services, archiver_env.accounts)
    account = f"green-api:{GREEN_ID}"
    desk.put_raw(odd, account, mark=archiver_env.services.keys.pending(account, CHAT))
    task_id, _, headers = desk.take()
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(200)
        end = runner.run((), odd, RunContext(task_id, "w", headers))
    assert isinstance(end, Done)
    result = end.result
    assert (result["outcome"], result["account"], result["chat_id"]) == ("archived", GREEN_ID, CHAT)
    assert route.call_count == 1
    # One limiter key for the account, whichever spelling the job used.
    keys = set(archiver_env.redis.scan_iter("*:limiter:*"))
    assert keys and all(f"green-api:{GREEN_ID}:archiveChat" in key for key in keys)
