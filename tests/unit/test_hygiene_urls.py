"""An account's api_url is checked at load: only somewhere it is safe to send a token."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config import ConfigError, load_accounts
from config.urls import check_api_url

ACCEPTED = [
    ("https://7105.api.greenapi.com/", "https://7105.api.greenapi.com"),
    ("HTTPS://API.Green-Api.COM:443/", "https://api.green-api.com"),
    ("https://api.wassenger.com:8443/proxy/", "https://api.wassenger.com:8443/proxy"),
    ("https://api.green-api.com.", "https://api.green-api.com"),
    ("https://bücher.example", "https://xn--bcher-kva.example"),  # IDNA, stored in ASCII
    ("https://ＡＰＩ．green-api．com", "https://api.green-api.com"),  # noqa: RUF001 (fullwidth)
    ("https://8.8.8.8", "https://8.8.8.8"),
    ("https://[2001:4860:4860::8888]:444", "https://[2001:4860:4860::8888]:444"),
    # Loopback: the built-in simulator, for the tests and `chat-archiver demo`.
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://127.0.0.1:9", "http://127.0.0.1:9"),
    ("http://localhost:8080/", "http://localhost:8080"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("http://provider.test", "http://provider.test"),  # RFC 6761: never a public name
]

REFUSED = [
    # credentials, and @-tricks that send the request elsewhere
    ("https://user:CANARYpassw0rd@api.green-api.com", "must not contain '@'"),
    ("http://api.green-api.com@evil.example", "must not contain '@'"),
    ("https://api.green-api.com%40evil.example", "percent-encoded"),
    ("https://api.green-api.com\\@evil.example", "backslash"),
    # query, fragment
    ("http://evil.example/?steal=", "query or a fragment"),
    ("https://api.green-api.com/#x", "query or a fragment"),
    # cloud metadata and link-local, in every spelling
    ("http://169.254.169.254", "link-local or a cloud metadata"),
    ("http://2852039166", "dotted decimal (a.b.c.d) (a resolver reads it as 169.254.169.254)"),
    ("http://0xa9fea9fe", "(a resolver reads it as 169.254.169.254)"),
    ("http://0251.0376.0251.0376", "(a resolver reads it as 169.254.169.254)"),
    ("http://169.254.43518", "(a resolver reads it as 169.254.169.254)"),
    ("http://169.254.169.254.", "link-local or a cloud metadata"),
    ("http://[fd00:ec2::254]", "link-local or a cloud metadata"),
    ("http://[::ffff:169.254.169.254]", "link-local or a cloud metadata"),
    ("http://[::ffff:a9fe:a9fe]", "link-local or a cloud metadata"),
    ("http://[::a9fe:a9fe]", "link-local or a cloud metadata"),
    ("http://[64:ff9b::a9fe:a9fe]", "link-local or a cloud metadata"),
    ("http://[2002:a9fe:a9fe::1]", "link-local or a cloud metadata"),
    ("http://[fe80::1]", "link-local or a cloud metadata"),
    ("https://metadata.google.internal", "cloud metadata service"),
    ("https://100.100.100.200", "link-local or a cloud metadata"),
    ("https://１６９．２５４．１６９．２５４", "link-local"),  # noqa: RUF001 (fullwidth)
    # private networks without allow_private
    ("https://10.0.0.8", "private network; set allow_private = true"),
    ("https://192.168.1.1", "private network"),
    ("https://100.64.0.1", "private network"),
    ("https://[fd12:3456::1]", "private network"),
    ("http://simulator:8080", "private network"),
    ("https://printer.local", "private network"),
    # non-HTTP services, whatever the host
    ("http://127.0.0.1:6379", "Redis"),
    ("https://api.green-api.com:11211", "Memcached"),
    # not an address one can call
    ("https://0.0.0.0", "not an address one can call"),
    ("https://[ff02::1]", "not an address one can call"),
    # look-alike and invalid hosts
    ("https://g\u043e\u043egle.com", "mixes scripts (cyrillic, latin)"),
    ("https://xn--ggle-55da.com", "mixes scripts"),
    ("https://a_b.example", "not a valid name"),
    ("https://-api.example", "not a valid name"),
    ("https://1.2.3.4.5", "not an IPv4 address in dotted decimal"),
    ("https://127.000.000.001", "not an IPv4 address in dotted decimal"),
    ("https://\u0430pi.\u0440\u0430y\u0440al.com", "mixes scripts"),
    # clear text, spaces, control characters, ports
    ("http://api.green-api.com", "must use https"),
    ("ftp://api.green-api.com", "must start with https://"),
    ("https:api.green-api.com", "must start with https://"),
    ("https://", "has no host"),
    ("https://api.green-api.com /x", "whitespace or a control character at position 26"),
    ("https://api.green-api.com\r\nX-Evil: 1", "whitespace or a control character"),
    ("https://api.green-api.com\t", "whitespace or a control character"),
    ("https://api.green-api.com:99999", "a port is a number from 1 to 65535"),
    ("https://api.green-api.com:0", "port must be a number from 1 to 65535"),
    ("https://api.green-api.com:-1", "a port is a number from 1 to 65535"),
    ("https://api.green-api.com/p%41th", "the path may hold only"),
    ("https://api.green-api.com/" + "a" * 3000, "longer than 2048"),
]


@pytest.mark.parametrize(("url", "normalised"), ACCEPTED)
def test_safe_urls_are_accepted_and_normalised(url: str, normalised: str) -> None:
    assert check_api_url(url) == normalised


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_dangerous_urls_are_refused_in_one_line_that_never_repeats_them(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)) as caught:
        check_api_url(url)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    assert "CANARY" not in message and "evil" not in message


def test_allow_private_opens_private_networks_and_nothing_more() -> None:
    assert check_api_url("http://simulator:8080", allow_private=True) == "http://simulator:8080"
    assert check_api_url("https://10.0.0.8", allow_private=True) == "https://10.0.0.8"
    assert check_api_url("http://[fd12:3456::1]:80", allow_private=True) == "http://[fd12:3456::1]"
    for never in ("http://169.254.169.254", "http://10.0.0.8:6379", "http://[fd00:ec2::254]"):
        with pytest.raises(ValueError, match=r"link-local|Redis"):
            check_api_url(never, allow_private=True)


def test_the_accounts_file_names_account_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREEN_TOKEN", "a-green-token-0123456789")
    path = tmp_path / "accounts.toml"
    path.write_text(
        '[[accounts]]\nprovider = "green-api"\nid = "7105187566"\n'
        'api_url = "https://user:CANARYpassw0rd@api.green-api.com"\ntoken_env = "GREEN_TOKEN"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_accounts(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: account 1 (green-api 7105187566): api_url: must not")
    assert "CANARY" not in message and "\n" not in message


def test_allow_private_is_an_account_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREEN_TOKEN", "a-green-token-0123456789")
    entry = (
        '[[accounts]]\nprovider = "green-api"\nid = "7105187566"\n'
        'api_url = "http://simulator:8080/"\ntoken_env = "GREEN_TOKEN"\n'
    )
    path = tmp_path / "accounts.toml"
    path.write_text(entry + "allow_private = true\n")
    account = load_accounts(path).get("green-api", "7105187566")
    assert (account.api_url, account.allow_private) == ("http://simulator:8080", True)
    path.write_text(entry + 'allow_private = "yes"\n')
    with pytest.raises(ConfigError, match="allow_private: Input should be a valid boolean"):
        load_accounts(path)
