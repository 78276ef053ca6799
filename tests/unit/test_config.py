"""Settings and the accounts file: good files load, every wrong one fails in one named line."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from config import ConfigError, Secret, load_accounts, load_settings, parse_duration, parse_rate
from config.units import Rate
from worker.cli import main
from worker.services import reset_services

GOOD = """
[[accounts]]
provider = "green-api"
id = "7105187566"
api_url = "https://7105.api.greenapi.com/"
token_env = "GREEN_API_TOKEN_7105"
rate_limit = "10/s"

[[accounts]]
provider = "wassenger"
id = "61b37a069cba0c15d6c81c8e"
token_file = "{token_file}"
rate_limit = "5/s"
rate_limits = {{ listChats = "1/s" }}
"""


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GREEN_API_TOKEN_7105", "greentoken-0123456789")
    token_file = tmp_path / "wassenger.key"
    token_file.write_text("wassengerkey-abcdef012345\n")

    def _write(text: str) -> Path:
        path = tmp_path / "accounts.toml"
        path.write_text(textwrap.dedent(text).replace("{token_file}", str(token_file)))
        return path

    return _write


def test_good_file_loads_with_defaults_and_secrets(write) -> None:
    registry = load_accounts(write(GOOD.replace("{{", "{").replace("}}", "}")))
    green = registry.get("green-api", "7105187566")
    assert green.api_url == "https://7105.api.greenapi.com"  # trailing slash dropped
    assert green.token.reveal() == "greentoken-0123456789"
    assert green.rate("archiveChat") == Rate(10, 1)
    assert green.rate("getChats") == Rate(1, 1)  # the provider table's default
    wassenger = registry.get("wassenger", "61b37a069cba0c15d6c81c8e")
    assert wassenger.api_url == "https://api.wassenger.com"
    assert wassenger.token.reveal() == "wassengerkey-abcdef012345"  # newline stripped
    assert wassenger.rate("archive") == Rate(5, 1)
    assert wassenger.rate("listChats") == Rate(1, 1)
    assert len(registry) == 2


def test_secret_never_prints_and_cannot_be_pickled(write) -> None:
    account = load_accounts(write(GOOD.replace("{{", "{").replace("}}", "}"))).get(
        "green-api", "7105187566"
    )
    for text in (repr(account), str(account), f"{account}", repr(account.token)):
        assert "greentoken-0123456789" not in text
    with pytest.raises(TypeError):
        pickle.dumps(Secret("some-secret-value"))


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('provider = "telegram"\nid = "1"', "account 1 (telegram 1): provider: unknown provider"),
        (
            'provider = "green-api"\nid = "7105187566"\napi_url = "https://x.test"\n'
            'token_env = "NOT_SET_ANYWHERE"',
            "account 1 (green-api 7105187566): token_env: environment variable "
            "NOT_SET_ANYWHERE is not set",
        ),
        (
            'provider = "green-api"\nid = "7105187566"\napi_url = "https://x.test"\n'
            'token_file = "/nonexistent/token"',
            "token_file: '/nonexistent/token' does not exist",
        ),
        (
            'provider = "green-api"\nid = "7105187566"\napi_url = "https://x.test"',
            "token_env or token_file: give exactly one of them",
        ),
        (
            'provider = "green-api"\nid = "71O5"\napi_url = "https://x.test"\n'
            'token_env = "GREEN_API_TOKEN_7105"',
            "account 1 (green-api 71O5): id: '71O5' is not a green-api idInstance",
        ),
        (
            'provider = "wassenger"\nid = "not-a-device"\ntoken_env = "GREEN_API_TOKEN_7105"',
            "id: 'not-a-device' is not a wassenger device id, 24 hex characters",
        ),
        (
            'provider = "green-api"\nid = 7105187566\napi_url = "https://x.test"\n'
            'token_env = "GREEN_API_TOKEN_7105"',
            "account 1 (green-api 7105187566): id: Input should be a valid string",
        ),
        (
            'provider = "green-api"\nid = "7105187566"\ntoken_env = "GREEN_API_TOKEN_7105"',
            "api_url: required for green-api",
        ),
        (
            'provider = "green-api"\nid = "7105187566"\napi_url = "ftp://x.test"\n'
            'token_env = "GREEN_API_TOKEN_7105"',
            "api_url: must start with https:// (or http:// for a loopback host)",
        ),
        (
            'provider = "green-api"\nid = "7105187566"\napi_url = "https://x.test"\n'
            'token_env = "GREEN_API_TOKEN_7105"\nrate_limit = "fast"',
            "rate_limit: 'fast' is not a rate",
        ),
        (
            'provider = "green-api"\nid = "7105187566"\napi_url = "https://x.test"\n'
            'token_env = "GREEN_API_TOKEN_7105"\nrate_limits = { archive = "1/s" }',
            "rate_limits.archive: unknown green-api method",
        ),
        (
            'provider = "green-api"\nid = "7105187566"\napi_url = "https://x.test"\n'
            'token_env = "GREEN_API_TOKEN_7105"\ntoken = "oops-a-secret"',
            "token: Extra inputs are not permitted",
        ),
        (
            'provider = "green-api"\nid = "7105187566"\napi_url = "https://x.test"\n'
            'token_env = "GREEN_API_TOKEN_7105"\nverify = "yes"',
            "account 1 (green-api 7105187566): verify: Input should be a valid boolean",
        ),
        (
            'provider = "green-api"\nid = "7105187566"\napi_url = "https://x.test"\n'
            'token_env = "GREEN_API_TOKEN_7105"\nverify = 1',
            "verify: Input should be a valid boolean",
        ),
        (
            # The token pasted where the variable's name goes.
            'provider = "green-api"\nid = "7105187566"\napi_url = "https://x.test"\n'
            'token_env = "oops-a-secret"',
            "token_env: must name an environment variable (A-Z, 0-9, _), not hold the token",
        ),
    ],
)
def test_wrong_account_fails_in_one_line_naming_account_and_field(
    write, entry: str, expected: str
) -> None:
    path = write("[[accounts]]\n" + entry + "\n")
    with pytest.raises(ConfigError) as caught:
        load_accounts(path)
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message
    assert message.startswith(str(path))
    # A secret given inline by mistake is never echoed back.
    assert "oops-a-secret" not in message


def test_verify_is_off_unless_an_account_asks_for_it(write) -> None:
    """`verify = true` reads the archive flag back after a success (issue 19); off by default."""
    text = GOOD.replace("{{", "{").replace("}}", "}")
    text = text.replace('rate_limit = "10/s"', 'rate_limit = "10/s"\nverify = true', 1)
    registry = load_accounts(write(text))
    assert registry.get("green-api", "7105187566").verify is True
    assert registry.get("wassenger", "61b37a069cba0c15d6c81c8e").verify is False


def test_duplicate_account_names_both(write) -> None:
    one = (
        '[[accounts]]\nprovider = "green-api"\nid = "7105187566"\napi_url = "https://x.test"\n'
        'token_env = "GREEN_API_TOKEN_7105"\n'
    )
    with pytest.raises(
        ConfigError, match=r"account 2 \(green-api 7105187566\): id: duplicate of account 1"
    ):
        load_accounts(write(one + one))


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ARCHIVER_ACCOUNTS_FILE: .* does not exist"):
        load_accounts(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[accounts]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_accounts(bad)


def test_settings_from_environment_and_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIVER_BROKER_URL", "redis://broker:6379/3")
    monkeypatch.setenv("ARCHIVER_TRANSIENT_ATTEMPTS", "4")
    settings = load_settings()
    assert settings.broker_url == "redis://broker:6379/3"
    assert settings.state_url == "redis://broker:6379/3"  # defaults to the broker
    assert settings.transient_attempts == 4

    monkeypatch.setenv("ARCHIVER_TRANSIENT_ATTEMPTS", "many")
    with pytest.raises(
        ConfigError, match=r"^ARCHIVER_TRANSIENT_ATTEMPTS: Input should be a valid integer"
    ):
        load_settings()
    monkeypatch.delenv("ARCHIVER_TRANSIENT_ATTEMPTS")

    # A retired setting would do nothing: said, not ignored.
    monkeypatch.setenv("ARCHIVER_VISIBILITY_TIMEOUT", "600")
    with pytest.raises(
        ConfigError, match=r"^ARCHIVER_VISIBILITY_TIMEOUT: no longer a setting: .*leases"
    ):
        load_settings()
    monkeypatch.delenv("ARCHIVER_VISIBILITY_TIMEOUT")
    # Countdowns wait in the job store, not in worker memory: nothing bounds them but their cap.
    monkeypatch.setenv("ARCHIVER_RETRY_COUNTDOWN_MAX", "3600")
    monkeypatch.setenv("ARCHIVER_CIRCUIT_COOLDOWN_MAX", "3600")
    assert load_settings().retry_countdown_max == 3600
    monkeypatch.delenv("ARCHIVER_RETRY_COUNTDOWN_MAX")
    monkeypatch.delenv("ARCHIVER_CIRCUIT_COOLDOWN_MAX")

    # The HTTP timeouts, not the task's time limit, must end a slow call.
    monkeypatch.setenv("ARCHIVER_TASK_TIME_LIMIT", "30")
    with pytest.raises(ConfigError, match="TASK_TIME_LIMIT=30 is too short for 3 attempts"):
        load_settings()


def test_every_wrong_variable_is_reported_at_once_under_its_real_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 8 item 5: one line per wrong variable, all of them in one error, each named as a
    person sets it (never ARCHIVER_ARCHIVER_...)."""
    monkeypatch.setenv("ARCHIVER_TRANSIENT_ATTEMPTS", "many")
    monkeypatch.setenv("ARCHIVER_LEASE_TIMEOUT", "-5")
    monkeypatch.setenv("ARCHIVER_HTTP_READ_TIMEOUT", "inf")
    monkeypatch.setenv("ARCHIVER_LOG_FORMAT", "xml")
    monkeypatch.setenv("ARCHIVER_RETRY_COUNTDOWN_MAXX", "10")  # a typo: must not pass silently
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()
    assert lines == list(caught.value.problems)
    named = {line.split(":", 1)[0]: line for line in lines}
    assert len(named) == len(lines) == 5
    assert set(named) == {
        "ARCHIVER_RETRY_COUNTDOWN_MAXX",
        "ARCHIVER_LEASE_TIMEOUT",
        "ARCHIVER_HTTP_READ_TIMEOUT",
        "ARCHIVER_TRANSIENT_ATTEMPTS",
        "ARCHIVER_LOG_FORMAT",
    }
    assert "did you mean ARCHIVER_RETRY_COUNTDOWN_MAX?" in named["ARCHIVER_RETRY_COUNTDOWN_MAXX"]
    assert "(got 'many')" in named["ARCHIVER_TRANSIENT_ATTEMPTS"]
    assert "finite" in named["ARCHIVER_HTTP_READ_TIMEOUT"]
    assert "ARCHIVER_ARCHIVER" not in str(caught.value)


def test_every_broken_rule_between_variables_is_reported_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARCHIVER_TASK_TIME_LIMIT", "30")
    monkeypatch.setenv("ARCHIVER_RETRY_COUNTDOWN_MAX", "400")
    monkeypatch.setenv("ARCHIVER_RETRY_COUNTDOWN", "500")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()
    assert lines == [
        "ARCHIVER_TASK_TIME_LIMIT=30 is too short for 3 attempts with HTTP timeouts of 5+20s "
        "(needs 92)",
        "ARCHIVER_RETRY_COUNTDOWN=500 must not exceed ARCHIVER_RETRY_COUNTDOWN_MAX=400",
    ]


def test_a_misspelt_url_variable_is_named_without_echoing_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A broker URL carries a password: a value is never part of a message about a name.
    monkeypatch.setenv("ARCHIVER_BROKER_URI", "redis://:hunter2-password@localhost/0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "ARCHIVER_BROKER_URI: not a setting (did you mean ARCHIVER_BROKER_URL?)"
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("notaurl", "must start with redis://, rediss://, unix:// or sentinel://"),
        ("http://127.0.0.1:6379/0", "must start with redis://, rediss://, unix:// or sentinel://"),
        ("redis://127.0.0.1:notaport/0", "its port is not a number"),
        ("redis://127.0.0.1:99999/0", "its port is not a number"),
        # A password holding "/" that was not percent-encoded: urlsplit reads its first part as
        # the port. The message must not show it (redis-py's ValueError did).
        ("redis://:CANARYpw/rest-of-it@127.0.0.1:6379/0", "must be percent-encoded"),
        ("redis://127.0.0.1:6379/zero", "its database (the path after the host) is not a number"),
        ("redis://", "names no host"),
        ("redis://host:6379/0 ", "holds spaces or control characters"),
    ],
)
@pytest.mark.parametrize("name", ["ARCHIVER_BROKER_URL", "ARCHIVER_REDIS_URL"])
def test_a_wrong_redis_url_is_one_line_that_never_shows_it(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str, why: str
) -> None:
    monkeypatch.setenv(name, url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{name}: ")
    assert why in str(caught.value)
    assert "CANARY" not in str(caught.value) and "(got" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://:p%2Fw@redis:6379/0",
        "rediss://user:pw@cache.example:6380/2",
        "redis://h",
        "unix:///run/redis.sock",
    ],
)
def test_redis_urls_people_write_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("ARCHIVER_BROKER_URL", url)
    assert load_settings().broker_url == url


@pytest.mark.parametrize("name", ["ARCHIVER_QUEUE", "ARCHIVER_KEY_PREFIX"])
@pytest.mark.parametrize("value", ["", " ", " a b", "tab\there"])
def test_an_empty_or_spaced_queue_or_prefix_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # Accepted, it would send jobs to a list no worker with the default reads.
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"^{name}: must be a non-empty name without spaces"):
        load_settings()


def test_a_config_error_survives_pickling_with_its_lines() -> None:
    error = pickle.loads(pickle.dumps(ConfigError("first problem", "second\nproblem")))  # noqa: S301
    assert error.problems == ("first problem", "second\\nproblem")
    assert str(error) == "first problem\nsecond\\nproblem"


def test_rates_and_durations() -> None:
    assert parse_rate("10/s") == Rate(10, 1)
    assert parse_rate("600/m").per_second == 10
    assert parse_rate("1/2s").interval == 2
    assert parse_rate("1/d").per_second == 1 / 86400
    assert parse_rate("1000/s").per_second == 1000
    assert str(parse_rate("5/s")) == "5/s"
    assert parse_rate(" 10/s\n") == Rate(10, 1)  # surrounding whitespace is fine
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("6h") == 6 * 3600
    assert parse_duration(90) == 90
    for bad in ("10", "x/s", "0/s"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)
    for bad in ("soon", "0s", "-1d"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1" * 400 + "/s", "is not a rate"),  # ZeroDivisionError/OverflowError on main
        ("1e30/s", "is not a rate"),
        ("inf/s", "is not a rate"),
        ("nan/s", "is not a rate"),
        ("1001/s", "between 1/d and 1000/s"),
        ("1/2d", "at most a day"),
        ("0.00001/s", "between 1/d and 1000/s"),
        ("\u0661\u0660/s", "is not a rate"),  # Arabic-Indic digits
        ("10/s\n[/x]", "is not a rate"),
    ],
)
def test_absurd_rates_are_refused_in_one_line(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as caught:
        parse_rate(text)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize(
    "value", ["0.0000001s", "99999999d", float("inf"), float("nan"), -1, 0, "1" * 400 + "s"]
)
def test_absurd_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)  # type: ignore[arg-type]


def test_the_example_accounts_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """README and the start-up error point people at it: it must stay valid."""
    monkeypatch.setenv("GREEN_API_TOKEN_7105", "example-green-token")
    monkeypatch.setenv("WASSENGER_API_KEY", "example-wassenger-key")
    example = Path(__file__).parents[2] / "config" / "accounts.example.toml"
    registry = load_accounts(example)
    assert {account.key for account in registry} == {
        "green-api:7105187566",
        "wassenger:61b37a069cba0c15d6c81c8e",
    }
    assert not any(account.verify for account in registry)  # commented out: off by default
    assert "# verify = true" in example.read_text()


@pytest.mark.parametrize("command", [["status"], ["dlq", "list"], ["limits"]])
def test_the_cli_prints_each_wrong_variable_on_its_own_error_line(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("ARCHIVER_LEASE_TIMEOUT", "abc")
    monkeypatch.setenv("ARCHIVER_LOG_FORMAT", "xml")
    monkeypatch.setenv("ARCHIVER_BROKER_URL", "redis://:CANARYpw/x@127.0.0.1:6379/0")
    reset_services()
    try:
        result = CliRunner().invoke(main, command)
    finally:
        reset_services()
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("Error: ") for line in lines), lines
    named = sorted(line.split("ARCHIVER_", 1)[1].split(":", 1)[0] for line in lines)
    assert named == ["BROKER_URL", "LEASE_TIMEOUT", "LOG_FORMAT"]
    assert "\\n" not in result.stderr and "CANARY" not in result.output
    assert "Traceback" not in result.output
