"""Redis Sentinel addresses in kombu's form: one ``sentinel://`` part per Sentinel, joined by
``;``, the database at the end (``sentinel://h1:26379;sentinel://h2:26379/0``).

kombu and Celery's result backend take the database and the password from the first part only,
RedBeat from its options, so the URL is read here once (every part a Sentinel, one database, one
``user:password@``) and each library is given it in a form they all read alike
(:meth:`SentinelURL.url`). The URL's ``user:password@`` is the Redis servers' (master and
replicas); the Sentinels' own password is ARCHIVER_SENTINEL_PASSWORD. Errors never repeat the
URL, which may hold a password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import SplitResult, quote, unquote, urlsplit

SCHEME = "sentinel"
DEFAULT_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None

    def url(self) -> str:
        """The URL in one form every library reads alike: the database after each Sentinel, the
        credentials on the first only (Celery's sanitiser then masks the password too)."""
        credentials = ""
        if self.username or self.password is not None:
            user = quote(self.username or "", safe="")
            password = "" if self.password is None else ":" + quote(self.password, safe="")
            credentials = f"{user}{password}@"
        hosts = [f"[{host}]" if ":" in host else host for host, _ in self.sentinels]
        return ";".join(
            f"{SCHEME}://{credentials if number == 0 else ''}{host}:{port}/{self.db}"
            for number, (host, (_, port)) in enumerate(zip(hosts, self.sentinels, strict=True))
        )


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(f"{SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelURL:
    """The Sentinels, database and Redis credentials of ``url``; ValueError with one line
    saying what is wrong (never the URL, which may hold a password)."""
    parts = url.split(";")
    sentinels: list[tuple[str, int]] = []
    databases: set[int] = set()
    credentials: list[tuple[str | None, str | None]] = []
    for number, text in enumerate(parts, start=1):
        where = f"its sentinel #{number}" if len(parts) > 1 else "it"
        parsed = _part(text, where)
        port = _port(parsed, where)
        if not parsed.hostname:
            _fail(f"{where} names no host (sentinel://host:26379)")
        sentinels.append((str(parsed.hostname), port))
        database = parsed.path.removeprefix("/")
        if database:
            if not (database.isascii() and database.isdigit()):
                raise ValueError(f"{where}: the database (after the port) is not a number")
            databases.add(int(database))
        user = unquote(parsed.username) if parsed.username else None
        password = unquote(parsed.password) if parsed.password is not None else None
        credentials.append((user, password))
    if len(databases) > 1:
        raise ValueError("its sentinels name different databases (write /N once, at the end)")
    first = credentials[0]
    if any(pair != first for pair in credentials[1:] if pair != (None, None)):
        raise ValueError("its sentinels give different user:password@ (give it once, on the first)")
    return SentinelURL(tuple(sentinels), databases.pop() if databases else 0, *first)


def sentinel_url_problem(url: str) -> str | None:
    try:
        parse_sentinel_url(url)
    except ValueError as error:
        return str(error)
    return None


def _part(text: str, where: str) -> SplitResult:
    if not text:
        _fail(f"{where} is empty (a ';' too many?)")
    if not text.lower().startswith(f"{SCHEME}://"):
        _fail(f"{where} is not a sentinel:// URL (every part must be one)")
    parsed = urlsplit(text)
    if parsed.query or parsed.fragment:
        _fail(f"{where} has a ?query or #fragment (Sentinel settings are ARCHIVER_SENTINEL_*)")
    return parsed


def _port(parsed: SplitResult, where: str) -> int:
    try:
        port = parsed.port
    except ValueError:
        port = 0
    if port == 0:
        _fail(
            f"{where}: its port is not a number from 1 to 65535 (a password holding / ? # ; or "
            "@ must be percent-encoded)"
        )
    return port or DEFAULT_PORT


def _fail(problem: str) -> NoReturn:
    raise ValueError(problem)
