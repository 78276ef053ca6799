"""Reading what producers publish: every layer checked, every refusal one line naming the field,
and nothing at all (generated garbage included) that makes reading raise anything else."""

from __future__ import annotations

import base64
import json
import time
import zlib
from typing import Any

import pytest
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.contract import envelope
from worker.contract.envelope import Refused
from worker.contract.tasks import ARCHIVE_TASK, SWEEP_TASK, UNARCHIVE_TASK, UNPACED

NOW = 1_800_000_000.0
JOB = {"provider": "green-api", "account": "1101000001", "chat_id": "79001234567@c.us"}


def message(
    kwargs: Any = None,
    *,
    task: Any = ARCHIVE_TASK,
    args: Any = (),
    body: Any = None,
    headers: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **envelope_fields: Any,
) -> dict[str, Any]:
    """A message as kombu publishes it, with any part replaced or dropped."""
    inner = [list(args), JOB if kwargs is None else kwargs, {"callbacks": None, "chain": None}]
    if body is None:
        body = base64.b64encode(json.dumps(inner).encode()).decode()
    data: dict[str, Any] = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": task, "id": "0f5c0e4e-1111-4222-8333-944445555666", **(headers or {})},
        "properties": {"body_encoding": "base64", "delivery_tag": "t1", "delivery_info": {}},
        **envelope_fields,
    }
    for name in drop:
        data.pop(name)
    return data


def read(data: Any) -> envelope.Intake:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return envelope.read(raw, now=NOW)


def test_a_good_message_reads_as_its_job_normalised() -> None:
    intake = read(message({**JOB, "request_id": "r1"}))
    assert (intake.task, intake.account) == (ARCHIVE_TASK, "green-api:1101000001")
    assert intake.kwargs == {**JOB, "request_id": "r1", "source": "api"}
    assert intake.not_before is None


def test_a_message_celery_itself_builds_reads_as_its_job() -> None:
    """What `send_task("archive.chat", kwargs=...)` publishes, as kombu's Redis transport
    pushes it, reads back as the same job: the contract for producers in any language."""
    celery = Celery("x")
    celery.conf.task_serializer = "json"
    theirs = celery.amqp.create_task_message(
        "id-1", ARCHIVE_TASK, (), JOB, argsrepr="()", kwargsrepr=repr(JOB), origin="o"
    )
    data = {
        "body": base64.b64encode(json.dumps(theirs.body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": theirs.headers,
        "properties": {
            "correlation_id": "id-1",
            "delivery_info": {"exchange": "", "routing_key": "archive"},
            "delivery_mode": 2,
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "9d0a7a38-0c0c-4b4b-8c8c-111122223333",
        },
    }
    intake = read(data)
    assert (intake.task, intake.task_id, intake.origin) == (ARCHIVE_TASK, "id-1", "o")
    assert intake.kwargs == {**JOB, "source": "api"}


def test_an_unarchive_job_reads_like_an_archive_job() -> None:
    intake = read(message(task=UNARCHIVE_TASK))
    assert (intake.task, intake.account) == (UNARCHIVE_TASK, "green-api:1101000001")


def test_a_dispatch_ticket_cannot_come_from_the_intake() -> None:
    """Only a dispatcher hands out a ticket (a run's lease): one in an intake message is not a
    number of a job's history and is refused."""
    with pytest.raises(Refused, match=r"headers\.archiver_ticket"):
        read(message(headers={"archiver_ticket": ["t", "green-api:1", "", 0, 0, 0, 0, ""]}))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"not json", "message: not JSON"),
        (b"\xff\xfe{}", "message: not UTF-8"),
        (b"[]", "message: a JSON array"),
        (message(drop=("body",)), "body:"),
        (message(body=""), "body:"),
        (message(body="!!!"), "body: not valid base64"),
        (message(**{"content-type": "text/plain"}), "content-type:"),
        (message(drop=("content-type",)), "content-type:"),
        (message(**{"content-type": ""}), "content-type:"),
        (message(**{"content-encoding": "latin-1"}), "content-encoding:"),
        (message(headers={"task": None}, drop=()), "headers.task: missing"),
        (message(task="celery.chord_unlock"), "headers.task:"),
        (message(task=["archive.chat"]), "headers.task:"),
        (message(headers={"id": ["x"]}), "headers.id:"),
        (message(headers={"id": "a b"}), "headers.id:"),
        ({**message(), "headers": "not a dict"}, "headers:"),
        ({**message(), "properties": None}, "properties:"),
        ({**message(), "properties": "x"}, "properties:"),
        (
            {**message(), "properties": {"body_encoding": "base85", "delivery_tag": "t"}},
            "properties.body_encoding:",
        ),
        (message(body=base64.b64encode(b'{"a": 1}').decode()), "body: not [args, kwargs"),
        (message(body=base64.b64encode(b"\xff").decode()), "body: not UTF-8"),
        (message(args=("green-api",)), "args:"),
        (message(kwargs=["green-api"]), "keyword arguments are a array"),
        (message({**JOB, "chat_id": "x"}), "chat_id:"),
        (message({"provider": "green-api"}), "account:"),
        (message(headers={"eta": "tomorrow"}), "headers.eta:"),
        (message(headers={"eta": "9999-01-01T00:00:00+00:00"}), "headers.eta:"),
        (message(headers={"expires": "2000-01-01T00:00:00+00:00"}), "headers.expires: expired"),
        (message(headers={"archiver_attempts": -1}), "headers.archiver_attempts:"),
        (message(headers={"archiver_attempts": "3"}), "headers.archiver_attempts:"),
        (message(headers={"compression": "application/x-bz2"}), "headers.compression:"),
        (message(task="archive.probe"), "headers.task:"),
        (message(task=SWEEP_TASK, kwargs={"provider": 1, "account": "x"}), "provider:"),
        (message(task=SWEEP_TASK, kwargs={"chain": "x"}), "chain: unexpected"),
    ],
)
def test_a_bad_message_is_refused_in_one_line_naming_the_field(data: Any, field: str) -> None:
    with pytest.raises(Refused) as refused:
        read(data)
    assert field in refused.value.detail
    assert "\n" not in refused.value.detail and len(refused.value.detail) < 300


def test_a_refusal_keeps_the_task_id_when_it_is_well_formed() -> None:
    with pytest.raises(Refused) as refused:
        read(message({**JOB, "chat_id": "x"}))
    assert refused.value.task_id == "0f5c0e4e-1111-4222-8333-944445555666"
    assert refused.value.job["chat_id"] == "x"


def test_size_is_checked_before_anything_is_decoded() -> None:
    huge = json.dumps(message({**JOB, "chat_id": "7" * 100_000})).encode()
    with pytest.raises(Refused, match=r"message: \d+ bytes, more than"):
        envelope.read(huge, now=NOW, max_bytes=64 * 1024)


def test_a_compression_bomb_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(b"[" * (32 * 1024 * 1024), 9)  # 32 MiB of "[" in about 32 KB
    data = message(
        body=base64.b64encode(bomb).decode(), headers={"compression": "application/x-gzip"}
    )
    raw = json.dumps(data).encode()
    started = time.process_time()
    with pytest.raises(Refused, match="inflates to more than"):
        envelope.read(raw, now=NOW, max_bytes=len(raw) + 1)
    # Inflating it all would take seconds; stopping at the limit takes milliseconds.
    assert time.process_time() - started < 0.5


def test_a_small_compressed_message_is_read() -> None:
    inner = [[], JOB, {}]
    body = base64.b64encode(zlib.compress(json.dumps(inner).encode())).decode()
    intake = read(message(body=body, headers={"compression": "application/x-gzip"}))
    assert intake.kwargs["chat_id"] == JOB["chat_id"]


def test_an_eta_becomes_a_time_to_wait_for() -> None:
    eta = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(NOW + 90))
    intake = read(message(headers={"eta": eta}))
    assert intake.not_before == NOW + 90
    past = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(NOW - 90))
    assert read(message(headers={"eta": past})).not_before is None


def test_sweeps_wait_for_no_account() -> None:
    intake = read(message(task=SWEEP_TASK, kwargs={"provider": "green-api", "account": "1"}))
    assert intake.account == UNPACED


def test_history_headers_travel_with_the_job() -> None:
    intake = read(message(headers={"archiver_attempts": 3, "archiver_first_attempt": 17.5}))
    assert intake.history == {"archiver_attempts": 3, "archiver_first_attempt": 17.5}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def mangled_messages(draw: st.DrawFn) -> bytes:
    """A good message with parts replaced by anything, or bytes cut or flipped."""
    data = message()
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "headers", "properties", "body"]))
        if where == "top":
            data[draw(st.sampled_from([*data, "x"]))] = draw(json_values)
        elif where == "headers" and isinstance(data.get("headers"), dict):
            name = draw(st.sampled_from(["task", "id", "eta", "expires", "compression", "x"]))
            data["headers"][name] = draw(json_values)
        elif where == "properties" and isinstance(data.get("properties"), dict):
            data["properties"][draw(st.sampled_from(["body_encoding", "x"]))] = draw(json_values)
        else:
            inner = draw(json_values)
            data["body"] = base64.b64encode(json.dumps(inner).encode()).decode()
    raw = json.dumps(data).encode()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=8)) + raw[cut + 1 :]
    return raw


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(raw=mangled_messages() | st.binary(max_size=200))
def test_reading_anything_either_succeeds_or_refuses_in_one_line(raw: bytes) -> None:
    try:
        intake = envelope.read(raw, now=NOW)
    except Refused as refused:
        detail = refused.detail
        assert detail and "\n" not in detail and len(detail) < 300
    else:
        assert intake.task == ARCHIVE_TASK and intake.kwargs["provider"] == "green-api"
