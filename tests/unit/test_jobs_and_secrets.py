"""The job contract (refused in one line naming the field) and secret redaction."""

from __future__ import annotations

import logging

import pytest

from config import Secret, redact
from worker.jobs import ArchiveJob, InvalidJob, job_summary
from worker.logs import JsonFormatter, install_redaction


def test_valid_jobs() -> None:
    job = ArchiveJob.parse(
        {
            "provider": "green-api",
            "account": "7105187566",
            "chat_id": "79001234567@c.us",
            "request_id": "r-1",
        }
    )
    assert job.kwargs() == {
        "provider": "green-api",
        "account": "7105187566",
        "chat_id": "79001234567@c.us",
        "request_id": "r-1",
        "source": "api",
    }
    for chat in ("120363043968066561@g.us", "79001234567-1581234048@g.us", "123456789012345@lid"):
        ArchiveJob.parse({"provider": "green-api", "account": "7105187566", "chat_id": chat})
    # 12-digit idInstance (announced for 2026) and Wassenger channels.
    ArchiveJob.parse(
        {"provider": "green-api", "account": "710518756612", "chat_id": "7900123@c.us"}
    )
    ArchiveJob.parse(
        {
            "provider": "wassenger",
            "account": "61b37a069cba0c15d6c81c8e",
            "chat_id": "1203630439680665@newsletter",
        }
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"account": "7105187566", "chat_id": "7900@c.us"}, "provider: missing"),
        (
            {"provider": "telegram", "account": "1", "chat_id": "x"},
            "provider: 'telegram' is not one of",
        ),
        (
            {"provider": "green-api", "account": 7105187566, "chat_id": "79001234567@c.us"},
            "account: must be a string, got int",
        ),
        (
            {"provider": "green-api", "account": "abc", "chat_id": "79001234567@c.us"},
            "account: 'abc' is not a green-api idInstance",
        ),
        (
            {"provider": "green-api", "account": "7105187566", "chat_id": "+7 900 123"},
            "chat_id: '+7 900 123' is not a green-api chat id",
        ),
        (
            {"provider": "green-api", "account": "7105187566", "chat_id": "1@newsletter"},
            "chat_id: '1@newsletter' is not a green-api chat id",
        ),
        (
            {"provider": "wassenger", "account": "7105187566", "chat_id": "79001234567@c.us"},
            "account: '7105187566' is not a wassenger device id",
        ),
        (
            {
                "provider": "green-api",
                "account": "7105187566",
                "chat_id": "79001234567@c.us",
                "token": "x",
            },
            "token: unexpected field",
        ),
        (
            {
                "provider": "green-api",
                "account": "7105187566",
                "chat_id": "79001234567@c.us",
                "request_id": "r" * 200,
            },
            "request_id: longer than 128 characters",
        ),
        (["green-api"], "job: expected an object"),
    ],
)
def test_invalid_jobs_are_refused_in_one_line(data: object, message: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        ArchiveJob.parse(data)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_job_summary_keeps_only_contract_fields() -> None:
    assert job_summary({"provider": "x", "token": "secret", "chat_id": 5}) == {
        "provider": "x",
        "chat_id": 5,
    }
    assert job_summary(None) == {"raw": "None"}


def test_redact_known_secrets_and_secret_shapes() -> None:
    Secret("CANARYredactme0987654")
    text = (
        "POST https://7105.api.greenapi.com/waInstance7105/archiveChat/UNREGISTEREDtok "
        "token=CANARYredactme0987654 {'Token': 'abcdefghijkl'} Authorization: Bearer-xyz"
    )
    out = redact(text)
    assert "CANARYredactme0987654" not in out
    assert "UNREGISTEREDtok" not in out
    assert "abcdefghijkl" not in out
    assert "/waInstance7105/archiveChat/***" in out


def test_log_records_are_redacted_at_creation(caplog: pytest.LogCaptureFixture) -> None:
    install_redaction()
    Secret("CANARYlogrecord1234567")
    logger = logging.getLogger("test.redaction")
    with caplog.at_level(logging.INFO):
        logger.info("calling %s", "https://h/waInstance1/archiveChat/CANARYlogrecord1234567")
        try:
            raise RuntimeError("failed on CANARYlogrecord1234567")
        except RuntimeError:
            logger.exception("boom")
    rendered = "\n".join(logging.Formatter().format(record) for record in caplog.records)
    assert "CANARYlogrecord1234567" not in rendered
    assert "RuntimeError" in rendered  # the traceback survives, without the secret
    # httpx logs request URLs at INFO: kept at WARNING.
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING


def test_json_log_lines_carry_job_fields() -> None:
    record = logging.LogRecord(
        "chat_archiver.jobs", logging.INFO, __file__, 1, "archived", (), None
    )
    record.outcome = "archived"
    record.chat_id = "79001234567@c.us"
    line = JsonFormatter().format(record)
    assert '"outcome": "archived"' in line and '"chat_id": "79001234567@c.us"' in line
