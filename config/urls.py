"""An account's ``api_url``: where its token is sent, so only somewhere it is safe to send it.

Checked when the accounts file loads, so a dangerous URL stops the worker at start instead of
carrying a token somewhere at its first job:

- ``https``; ``http`` only for a loopback host (the built-in simulator) or an account that says
  ``allow_private = true`` (a provider stand-in on a private network, like the compose demo's
  ``http://simulator:8080``);
- no credentials (``user:password@`` would be sent as Basic auth to whoever the host is) and no
  ``@`` at all (``https://api.green-api.com@evil.example`` is a request to evil.example);
- no query or fragment (the request paths are appended to the URL), no whitespace, control
  characters or backslashes anywhere, a port from 1 to 65535;
- a host that is a real name (IDNA 2008, stored in its ASCII form; labels that mix scripts,
  like a Cyrillic o (U+043E) among Latin letters, are refused) or an IP address written the one
  usual way: ``2852039166``, ``0xa9fea9fe`` or ``0251.0376.0251.0376`` all mean 169.254.169.254 to a
  resolver, so any IPv4 address not in dotted decimal is refused;
- never a link-local or cloud-metadata address (169.254.0.0/16, fe80::/10, fd00:ec2::254,
  100.100.100.200, metadata.google.internal), an unspecified, multicast or broadcast one, nor
  such an address inside an IPv6 one (IPv4-mapped, -compatible, NAT64, 6to4, Teredo);
- a private address (RFC 1918, unique-local, carrier-grade NAT...) or a private name (one label
  like ``simulator``; ``.local``, ``.internal``, ``.lan``, ``.home.arpa``) only with
  ``allow_private = true``;
- never a port where a well-known non-HTTP service listens (Redis 6379, Memcached 11211, ...):
  an HTTP request there is a cross-protocol attack, whatever the host.

Loopback (127.0.0.0/8, ::1, ``localhost``) needs no ``allow_private``: the simulator the tests
and ``chat-archiver demo`` run listens there, and a loopback URL can reach nothing beyond this
machine, whose non-HTTP services the port rule above keeps out of reach. Names under ``.test``
are treated as loopback too: RFC 6761 reserves them for testing and no public resolver answers
them (the unit tests use ``http://provider.test`` with a mocked transport).

Names are not resolved here: loading must not wait on DNS, and what a name resolves to can
change after loading. A public name that resolves to a private address is for the network
around the worker to stop.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import unicodedata
from enum import Enum
from functools import lru_cache
from urllib.parse import urlsplit

import idna

MAX_URL_LENGTH = 2048

# Ports of services that speak something other than HTTP and accept commands in plain text.
NON_HTTP_PORTS = {
    25: "SMTP",
    2375: "Docker",
    2376: "Docker",
    2379: "etcd",
    3306: "MySQL",
    5432: "PostgreSQL",
    6379: "Redis",
    11211: "Memcached",
    26379: "Redis Sentinel",
    27017: "MongoDB",
}
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
_METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal"}
)
_PRIVATE_SUFFIXES = (".local", ".internal", ".lan", ".home.arpa", ".intranet", ".corp")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_PATH = re.compile(r"\A[A-Za-z0-9._~/-]*\Z")
# The last label decides whether WHATWG URL parsers read a host as an IPv4 address.
_NUMERIC_LABEL = re.compile(r"\A(?:0x[0-9a-f]*|[0-9]+)\Z")
# Scripts that may share a label (UTS #39 "highly restrictive"): Latin with Han and the
# Japanese kana, with Han and Bopomofo, or with Han and Hangul. Any other mix is a look-alike.
_SCRIPT_SETS = (
    frozenset({"LATIN", "CJK", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "CJK", "BOPOMOFO"}),
    frozenset({"LATIN", "CJK", "HANGUL"}),
)


class HostKind(Enum):
    LOOPBACK = "loopback"
    PRIVATE = "private"
    PUBLIC = "public"


def check_api_url(value: str, *, allow_private: bool = False) -> str:
    """``value`` normalised (lower-case scheme and host, host in ASCII, default port and
    trailing slash dropped), or ValueError with one line that never repeats the URL (it may
    hold a password)."""
    if not isinstance(value, str):
        raise ValueError("must be a text (a URL)")
    return _checked_url(value, bool(allow_private))


# Pure (no DNS): an accounts file of thousands of accounts names a handful of URLs, and every
# process loads it (the node, every reload), so each URL is checked once. Failures are not
# cached (lru_cache keeps only returned values).
@lru_cache(maxsize=1024)
def _checked_url(value: str, allow_private: bool) -> str:
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"longer than {MAX_URL_LENGTH} characters")
    for position, char in enumerate(value, start=1):
        if char.isspace() or not char.isprintable():
            raise ValueError(
                f"has whitespace or a control character at position {position} "
                "(a URL is one word; was it pasted with a line break?)"
            )
    if "\\" in value:
        raise ValueError("must not contain a backslash (some clients read it as '/')")
    if "@" in value:
        raise ValueError(
            "must not contain '@': credentials (user:password@) are sent as Basic auth to "
            "the host, and 'https://real-host@other-host' calls other-host; the token goes "
            "in token_env or token_file"
        )
    if "?" in value or "#" in value:
        raise ValueError("must not have a query or a fragment (the request paths follow it)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(
            "is not a URL with a valid host and port (a port is a number from 1 to 65535)"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not value.lower().startswith(f"{scheme}://"):
        raise ValueError("must start with https:// (or http:// for a loopback host)")
    if port == 0:
        raise ValueError("the port must be a number from 1 to 65535")
    if not parts.hostname:
        raise ValueError("has no host")
    if "%" in parts.netloc:
        raise ValueError("the host must not be percent-encoded or carry an IPv6 zone")
    after_host = parts.netloc.rsplit("]", 1)[-1]
    if ":" in after_host and not after_host.rpartition(":")[2].isascii():
        # Only the host may be written in Unicode; a port in other digits is not a port.
        raise ValueError("the port must be ASCII digits")
    if "[" in parts.netloc:
        host, kind = _ip_host(parts.hostname)
    else:
        host, kind = _host(parts.hostname)
    if port in NON_HTTP_PORTS:
        raise ValueError(
            f"port {port} is {NON_HTTP_PORTS[port]}'s, not a provider's: an HTTP request "
            "there is a cross-protocol attack"
        )
    if kind is HostKind.PRIVATE and not allow_private:
        raise ValueError(
            f"host {host} is on a private network; set allow_private = true on the account "
            "if the provider (or a stand-in) really lives there"
        )
    if scheme == "http" and kind is HostKind.PUBLIC:
        raise ValueError(
            "must use https: http would send the token in clear (http is only for loopback "
            "hosts and accounts with allow_private = true)"
        )
    path = parts.path.rstrip("/")
    if not _PATH.fullmatch(path):
        raise ValueError("the path may hold only letters, digits and . _ ~ / -")
    default_port = 443 if scheme == "https" else 80
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    return f"{scheme}://{netloc}{path}"


# -- hosts -----------------------------------------------------------------------------------


def _ip_host(text: str) -> tuple[str, HostKind]:
    """A bracketed IPv6 literal."""
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError("the host in brackets is not an IPv6 address") from None
    return f"[{address.compressed}]", _address_kind(address)


def _host(text: str) -> tuple[str, HostKind]:
    """A name or a dotted-decimal IPv4 address, already lower-cased by urlsplit."""
    if text.isascii():
        ascii_host = text
    else:
        # UTS 46 maps what a person may have typed (fullwidth letters and dots, upper case) to
        # the one form, then IDNA 2008 refuses what cannot be a host name.
        try:
            ascii_host = idna.encode(text, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise ValueError("the host is not a valid internationalised domain name") from None
    ascii_host = ascii_host.rstrip(".")  # a fully qualified name's final dot
    last_label = ascii_host.rsplit(".", 1)[-1]
    if _NUMERIC_LABEL.fullmatch(last_label):
        return _ipv4_host(ascii_host)
    try:
        unicode_host = idna.decode(ascii_host)
        idna.encode(unicode_host)
    except (idna.IDNAError, UnicodeError):
        raise ValueError(
            "the host is not a valid name (letters, digits and hyphens, labels of 1 to 63 "
            "characters, IDNA 2008 for others)"
        ) from None
    for label in unicode_host.split("."):
        scripts = _scripts(label)
        if len(scripts) > 1 and not any(scripts <= allowed for allowed in _SCRIPT_SETS):
            raise ValueError(
                f"the host mixes scripts ({', '.join(sorted(scripts)).lower()}) in one label: "
                "a look-alike of another name"
            )
    if ascii_host in _METADATA_NAMES:
        raise ValueError(f"host {ascii_host} is a cloud metadata service, never a provider")
    if ascii_host == "localhost" or ascii_host.endswith((".localhost", ".test")):
        return ascii_host, HostKind.LOOPBACK
    if "." not in ascii_host or ascii_host.endswith(_PRIVATE_SUFFIXES):
        return ascii_host, HostKind.PRIVATE
    return ascii_host, HostKind.PUBLIC


def _ipv4_host(text: str) -> tuple[str, HostKind]:
    try:
        # Strict dotted decimal: no octal, hex, short or single-number forms, no leading zeros.
        address = ipaddress.IPv4Address(text)
    except ValueError:
        meaning = ""
        with contextlib.suppress(OSError, ValueError):  # not even the legacy forms read it
            meaning = f" (a resolver reads it as {socket.inet_ntoa(socket.inet_aton(text))})"
        raise ValueError(
            f"the host is not an IPv4 address in dotted decimal (a.b.c.d){meaning}"
        ) from None
    return str(address), _address_kind(address)


def _address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> HostKind:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is a.b.c.d on the wire, nothing else.
        return _one_address_kind(address.ipv4_mapped)
    kinds = [_one_address_kind(candidate) for candidate in (address, *_embedded_ipv4(address))]
    for kind in (HostKind.PRIVATE, HostKind.LOOPBACK):
        if kind in kinds:
            return kind
    return HostKind.PUBLIC


def _one_address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> HostKind:
    """LOOPBACK, PRIVATE or PUBLIC; ValueError for addresses no account may name."""
    if address in _METADATA_ADDRESSES or address.is_link_local:
        raise ValueError(
            f"host {address} is link-local or a cloud metadata service, never a provider"
        )
    if (
        address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise ValueError(f"host {address} is not an address one can call")
    if address.is_loopback:
        return HostKind.LOOPBACK
    if not address.is_global:
        return HostKind.PRIVATE
    return HostKind.PUBLIC


def _embedded_ipv4(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries, which is where a packet to it may end up."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [address.sixtofour]
    if address.teredo is not None:
        found.extend(address.teredo)
    # NAT64 (64:ff9b::a.b.c.d), and the deprecated IPv4-compatible ::a.b.c.d (not :: or ::1).
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) >= 1 << 24):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [candidate for candidate in found if candidate is not None]


def _scripts(label: str) -> set[str]:
    """The scripts of a label's letters, by the first word of their Unicode names (LATIN,
    CYRILLIC, GREEK, CJK, ...): a close enough stand-in for the Script property, which the
    standard library does not have."""
    scripts = set()
    for char in label:
        if char.isalpha():
            name = unicodedata.name(char, "UNKNOWN")
            scripts.add(name.split(" ", 1)[0])
    return scripts
