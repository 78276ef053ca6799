"""The job contract (refused in one line naming the field) and secret redaction."""

from __future__ import annotations

import base64
import json
import logging
import time

import pytest

from config import Secret, excerpt, redact
from worker.contract.jobs import ArchiveJob, InvalidJob, job_summary
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


REDACTION_CANARY = "CANARYforms0123456789xyz"


def _every_form(secret: str) -> dict[str, str]:
    """The forms a token takes in texts that quote a request: what redact must mask."""
    data = secret.encode()
    return {
        "raw": f"POST /waInstance1101000001/archiveChat/{secret} HTTP/1.1",
        "case": secret.upper(),
        "percent upper": "".join(f"%{byte:02X}" for byte in data),
        "percent lower": "".join(f"%{byte:02x}" for byte in data),
        "percent mixed": secret[:6] + "".join(f"%{byte:02x}" for byte in data[6:12]) + secret[12:],
        "percent twice": "".join(f"%25{byte:02X}" for byte in data),
        "json escaped": json.dumps("".join(f"\\u{ord(c):04x}" for c in secret)),
        "json of json": json.dumps(json.dumps({"token": secret})),
        "python repr": repr(f"it's {secret}\n".encode()),
        "bytes escapes": "".join(f"\\x{byte:02x}" for byte in data),
        "html": "".join(f"&#x{byte:x};" for byte in data),
        "basic": "Authorization: Basic " + base64.b64encode(f"1101:{secret}".encode()).decode(),
        "basic, other alignments": " ".join(
            base64.b64encode(f"{pad}{secret}!".encode()).decode() for pad in ("", "a", "ab")
        ),
        "base64url in a query": "?auth="
        + base64.urlsafe_b64encode(f"\xff\xfe:{secret}".encode()).decode().replace("=", "%3D"),
        "bearer": f"Authorization: Bearer {secret}",
        "exception repr": repr(UnicodeEncodeError("ascii", secret, 3, 4, "ordinal not in range")),
    }


@pytest.mark.parametrize("form", sorted(_every_form(REDACTION_CANARY)))
def test_a_registered_secret_is_masked_in_every_form(form: str) -> None:
    Secret(REDACTION_CANARY)
    text = _every_form(REDACTION_CANARY)[form]
    out = redact(f"before {text} after")
    assert out.startswith("before ") and out.endswith(" after")
    assert "***" in out
    assert "canaryforms" not in out.lower()
    encoded = base64.b64encode(REDACTION_CANARY.encode()).decode()
    assert encoded[2:20] not in out


def test_a_secret_with_a_line_break_is_masked_in_h11s_escaped_form() -> None:
    """A two-line token (a token_file with a second line, on main): h11 quotes the header
    value with its newline escaped, which no longer matched the registered secret."""
    Secret("CANARYfirst0line1234\nCANARYsecondline")
    message = "Illegal header value b'CANARYfirst0line1234\\nCANARYsecondline'"
    assert "CANARY" not in redact(message)
    assert "CANARY" not in redact(message.replace("\\n", "\\\\n"))


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Authorization: Basic dXNlcjpodW50ZXIyLXBhc3N3b3Jk", "Authorization: Basic ***"),
        ('{"authorization": "Bearer UNREGISTERED1234567"}', '{"authorization": "Bearer ***"}'),
        ("WWW-Authenticate said: bearer UNREGISTERED1234567.", "bearer ***"),
        ("Basic auth required", "Basic auth required"),  # prose stays
        ("https://user:hunter2-password@host.example/x", "https://***@host.example/x"),
        ('{\\"Token\\": \\"UNREGISTERED1234567\\"}', '{\\"Token\\": \\"***\\"}'),
        ("/waInstance1101000001/getChats/UNREGISTERED1234567?x", "/getChats/***?x"),
        ("%2FwaInstance1101000001%2FarchiveChat%2FUNREGISTERED1234567", "%2F***"),
        ("apiTokenInstance=UNREGISTERED1234567&x=1", "apiTokenInstance=***&x=1"),
    ],
)
def test_secret_shapes_mask_the_credentials_not_just_the_word(text: str, kept: str) -> None:
    out = redact(text)
    assert kept in out
    assert "UNREGISTERED" not in out and "hunter2" not in out
    assert "dXNlcjpodW50ZXIy" not in out


def test_redaction_stays_linear_on_hostile_text() -> None:
    """Runs of backslashes, spaces or percent signs made redaction quadratic (minutes for a
    megabyte) before the patterns were bounded."""
    for text in ("\\" * 200_000, " " * 200_000, "token" + " " * 200_000, "%25" * 70_000):
        started = time.monotonic()
        redact(text)
        excerpt(text)
        assert time.monotonic() - started < 5


def test_json_log_lines_stay_json_whatever_the_message_quotes() -> None:
    Secret(REDACTION_CANARY)
    record = logging.LogRecord(
        "chat_archiver.jobs",
        logging.WARNING,
        __file__,
        1,
        'answer: {"path": "/waInstance1/archiveChat/%s\\"", "token": "%s"}',
        (REDACTION_CANARY, REDACTION_CANARY),
        None,
    )
    record.request_id = f'quote " and token={REDACTION_CANARY}'
    line = JsonFormatter().format(record)
    data = json.loads(line)  # masking serialised JSON could eat the backslash of a quote
    assert REDACTION_CANARY not in line
    assert data["request_id"].startswith('quote " and token=')
