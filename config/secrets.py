"""Provider secrets: a wrapper that never prints itself, and one redaction function for all text.

GREEN-API puts its token in the URL path and Wassenger sends it in a ``Token`` header, so a logged
URL, an exception text or a provider's echo of our request can carry it. Every secret the
accounts registry loads is registered here, and ``redact`` removes it from a string in every form
it takes on the way:

- as is, in any letter case;
- percent-encoded, with upper- or lower-case hex, once or twice (``%43``, ``%2543``), and mixed
  with plain characters (an encoder leaves letters alone, a paranoid one encodes everything);
- escaped the ways Python, JSON, h11 and HTML escape text: ``\\x43``, ``\\u0043``, ``\\n``,
  ``\\/``, ``&#x43;``, behind any number of backslashes (JSON inside JSON);
- inside base64 at any alignment, as ``Authorization: Basic base64(user:token)`` carries it.

Shapes that carry a secret even when we never loaded it (another process's account, a header a
provider echoes) are masked too: the token segment of a GREEN-API path, the value of a
``Token``/``Authorization``/``apiTokenInstance``/``password`` header or parameter (the whole
credentials after ``Basic``/``Bearer``, not just the word), and a URL's ``user:password@``.
Log handlers, dead-letter excerpts and error messages all go through ``redact``.
"""

from __future__ import annotations

import base64
import bisect
import re
import threading

MASK = "***"

# Names whose value is a secret, in a header ("Token: x"), JSON ('"token": "x"'), a query
# ("?token=x") or an escaped JSON string ('\\"token\\": \\"x\\"').
_SECRET_NAMES = r"(?:token|api[-_]?key|apitokeninstance|password|passwd|secret|x-api-key)"  # noqa: S105
_VALUE = r"[^\s\"',;&}<>\\]+"
_SCHEMES = r"(?:basic|bearer|token|digest|negotiate)"
# Every repetition before the masked value is bounded: an unbounded one (\\* before a "/", \s*
# before a ":") would try again from every position of a long run of backslashes or spaces,
# and redacting a megabyte would take minutes instead of milliseconds.
_BACKSLASHES = r"\\{0,8}"
_SPACE = r"\s{0,8}"
# (words that must appear, lower-cased, for the shape to be tried; pattern; replacement): most
# text has none of the words, and a substring test costs far less than a scan with lookbehinds.
_SHAPES = (
    # GREEN-API: {apiUrl}/waInstance{id}/{method}/{token}, also percent- or JSON-escaped.
    (
        ("wainstance",),
        re.compile(
            rf"(?i)((?:{_BACKSLASHES}/|%2f)waInstance[0-9]{{1,25}}(?:{_BACKSLASHES}/|%2f)"
            rf"[A-Za-z]{{1,40}}(?:{_BACKSLASHES}/|%2f))"
            r"[^/?#\s\"'<>\\&]+"
        ),
        rf"\g<1>{MASK}",
    ),
    # Authorization: <scheme> <credentials>: the credentials go, the scheme stays.
    (
        ("authorization",),
        re.compile(
            rf"(?i)((?<![A-Za-z0-9])(?:proxy-)?authorization{_BACKSLASHES}[\"']?{_SPACE}"
            rf"[:=]{_SPACE}{_BACKSLASHES}[\"']?(?:{_SCHEMES}(?:\s|%20){{1,8}})?){_VALUE}"
        ),
        rf"\g<1>{MASK}",
    ),
    # Credentials after a scheme anywhere else ("... Bearer abc123..."), however short the
    # header name or whatever quoted it; short words ("Basic auth") are prose, not credentials.
    (
        ("basic", "bearer"),
        re.compile(r"(?i)((?<![A-Za-z0-9])(?:basic|bearer)(?:\s|%20){1,8})[A-Za-z0-9+/_.~-]{8,}=*"),
        rf"\g<1>{MASK}",
    ),
    # Token: x, "token": "x", ?token=x, apiTokenInstance=x, \"token\": \"x\".
    (
        ("token", "key", "passw", "secret"),
        re.compile(
            rf"(?i)((?<![A-Za-z0-9])(?:\\{{1,8}}[\"'])?{_SECRET_NAMES}{_BACKSLASHES}[\"']?"
            rf"{_SPACE}(?:[:=]|%3a|%3d){_SPACE}{_BACKSLASHES}[\"']?){_VALUE}"
        ),
        rf"\g<1>{MASK}",
    ),
    # scheme://user:password@host and scheme://token@host.
    (
        ("://",),
        re.compile(r"(?i)([a-z][a-z0-9+.-]{0,30}://)[^/\s@\"'<>]{1,512}@"),
        rf"\g<1>{MASK}@",
    ),
)
_TRIGGERS = re.compile("|".join(re.escape(w) for words, _, _ in _SHAPES for w in words))
# Shorter values would redact ordinary words; real tokens are far longer.
_MIN_SECRET_LENGTH = 8
# One escaped character: percent-encoded (once or twice), behind backslashes (\x41, \u0041,
# \U00000041, \n, \/, \"), or an HTML character reference.
_ESCAPED = re.compile(
    r"%(?:25){0,8}(?P<pct>[0-9A-Fa-f]{2})"
    r"|\\{1,64}(?:x(?P<x>[0-9A-Fa-f]{2})|u(?P<u>[0-9A-Fa-f]{4})|U(?P<U>[0-9A-Fa-f]{8})"
    r"|(?P<short>[nrtfbv0])|(?P<other>.))"
    r"|&#(?:[xX]0{0,8}(?P<hex>[0-9A-Fa-f]{1,6})|0{0,8}(?P<dec>[0-9]{1,7}));",
    re.DOTALL,
)
_SHORT_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "f": "\f", "b": "\b", "v": "\v", "0": "\0"}

_lock = threading.Lock()
_known: set[str] = set()
_pattern: re.Pattern[str] | None = None
_stale = False


def _base64_forms(value: str) -> list[str]:
    """The base64 text that encodes ``value`` wherever it sits in the encoded data: for each
    of the three alignments, the characters that depend on the secret's bytes alone."""
    data = value.encode("utf-8", "surrogatepass")
    forms = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii").rstrip("=")
        start = -(-offset * 4 // 3)  # ceil(offset * 8 / 6): the first character free of padding
        end = (offset + len(data)) * 8 // 6  # the last character holding only the secret's bits
        middle = encoded[start:end]
        if len(middle) >= _MIN_SECRET_LENGTH:
            forms.append(middle)
            forms.append(middle.replace("+", "-").replace("/", "_"))  # base64url
    return forms


def _forms(value: str) -> list[str]:
    """What to look for in unescaped text to find ``value``: itself, its base64, and, when it is
    not ASCII, its UTF-8 bytes read one character each (what %C3%A9 or \\xc3\\xa9 unescape to)."""
    forms = [value, *_base64_forms(value)]
    data = value.encode("utf-8", "surrogatepass")
    if not value.isascii():
        forms.append(data.decode("latin-1"))
    return forms


def _trie_pattern(words: set[str]) -> str:
    """One regular expression for many literal words, factored by common prefixes (a radix
    tree): matching costs about the same for a thousand secrets as for one."""
    if not words:
        return "(?!)"
    heads: dict[str, set[str]] = {}
    ends = "" in words
    for word in words:
        if word:
            heads.setdefault(word[0], set()).add(word[1:])
    branches = []
    for head in sorted(heads):
        tails = heads[head]
        prefix = head
        # Walk down single-child chains as one literal, so nesting grows only where words part.
        while len(tails) == 1 and "" not in tails:
            (tail,) = tails
            prefix, tails = prefix + tail, {""}
        while len(tails) > 1 and "" not in tails and len({t[0] for t in tails}) == 1:
            first = next(iter(tails))[0]
            prefix, tails = prefix + first, {t[1:] for t in tails}
        rest = "" if tails == {""} else _trie_pattern(tails)
        branches.append(re.escape(prefix) + rest)
    # Longer matches first: the empty alternative (a word ends here) is the last resort.
    body = "|".join(branches)
    return f"(?:{body})?" if ends else f"(?:{body})"


def register(value: str) -> None:
    """Make ``redact`` remove this value from any text, from now on, in this process."""
    global _stale
    if len(value) < _MIN_SECRET_LENGTH or value in _known:
        return
    with _lock:
        _known.add(value)
        _stale = True  # compiled at the next redact: loading N accounts compiles once


def recompile() -> None:
    """Build the pattern again at the next ``redact``. For tests: a process forked after the
    pattern was built (a mutation run forks each mutant from one) would otherwise never run the
    code that builds it."""
    global _stale
    with _lock:
        _stale = True


def _compiled() -> re.Pattern[str] | None:
    global _pattern, _stale
    if _stale:
        with _lock:
            if _stale:
                words = {form.lower() for secret in _known for form in _forms(secret)}
                _pattern = re.compile(_trie_pattern(words), re.IGNORECASE)
                _stale = False
    return _pattern


class _Unescaped:
    """``text`` with every escaped character unescaped, and a map back: the unescaped text is
    made of pieces, each a run copied as it was or one escaped character."""

    def __init__(self, text: str) -> None:
        pieces: list[str] = []
        self.starts: list[int] = []  # where each piece starts in the unescaped text
        self.sources: list[tuple[int, int, bool]] = []  # its span in `text`, and if escaped
        position = 0
        for match in _ESCAPED.finditer(text):
            if match.start() > position:
                self._add(pieces, text[position : match.start()], position, match.start(), False)
            self._add(pieces, _unescaped_char(match), match.start(), match.end(), True)
            position = match.end()
        if position < len(text):
            self._add(pieces, text[position:], position, len(text), False)
        self.text = "".join(pieces)

    def _add(self, pieces: list[str], piece: str, begin: int, end: int, escaped: bool) -> None:
        self.starts.append(self.starts[-1] + len(pieces[-1]) if pieces else 0)
        pieces.append(piece)
        self.sources.append((begin, end, escaped))

    def source_span(self, begin: int, end: int) -> tuple[int, int]:
        """The span of ``text`` that unescapes to ``[begin, end)``, escapes kept whole."""
        first = bisect.bisect_right(self.starts, begin) - 1
        last = bisect.bisect_right(self.starts, end - 1) - 1
        source_begin, _, escaped = self.sources[first]
        if not escaped:
            source_begin += begin - self.starts[first]
        last_begin, source_end, escaped = self.sources[last]
        if not escaped:
            source_end = last_begin + end - self.starts[last]
        return source_begin, source_end


def _unescaped_char(match: re.Match[str]) -> str:
    groups = match.groupdict()
    for name in ("pct", "x", "u", "U", "hex"):
        if groups[name] is not None:
            return chr(min(int(groups[name], 16), 0x10FFFF))
    if groups["dec"] is not None:
        return chr(min(int(groups["dec"]), 0x10FFFF))
    if groups["short"] is not None:
        return _SHORT_ESCAPES[groups["short"]]
    return groups["other"]


def _mask_escaped(text: str, pattern: re.Pattern[str]) -> str:
    unescaped = _Unescaped(text)
    out, position = [], 0
    for match in pattern.finditer(unescaped.text):
        if match.end() > match.start():
            begin, end = unescaped.source_span(match.start(), match.end())
            out.append(text[position:begin])
            out.append(MASK)
            position = end
    if not out:
        return text
    out.append(text[position:])
    return "".join(out)


def redact(text: str) -> str:
    pattern = _compiled()
    if pattern is not None:
        # Text with no escape at all (most log lines) needs no unescaping.
        text = _mask_escaped(text, pattern) if _ESCAPED.search(text) else pattern.sub(MASK, text)
    lowered = text.lower()
    if _TRIGGERS.search(lowered) is None:  # most text: no shape's word, one scan
        return text
    for words, shape, replacement in _SHAPES:
        if any(word in lowered for word in words):
            text = shape.sub(replacement, text)
    return text


EXCERPT_LENGTH = 200
# An excerpt reads at most this much of its text: a megabyte body costs no more than this.
_EXCERPT_WINDOW = 64 * 1024
# When the window cut the text, a secret may straddle its end, half outside the window and so
# not recognised: as much as the longest escaped form of a secret is dropped from its end.
_WINDOW_TAIL = 16 * 1024


def excerpt(text: str) -> str:
    """A short one-line excerpt of any text (a provider's answer, a malformed message) fit to
    store: redacted before it is flattened and cut, so no cut can leave half a token behind."""
    window = text[:_EXCERPT_WINDOW]
    redacted = redact(window)
    flat = " ".join(redacted.split())
    if flat != redacted or MASK in flat:
        # Flattening may join the halves of a secret, and a mask may complete one: look again.
        flat = redact(flat)
    if len(text) > _EXCERPT_WINDOW:
        flat = flat[: max(0, len(flat) - _WINDOW_TAIL)]
    return flat if len(flat) <= EXCERPT_LENGTH else flat[: EXCERPT_LENGTH - 1] + "…"


class Secret:
    """A secret value that shows as ``***`` in repr, str, logs and f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value:
            raise ValueError("a secret cannot be empty")
        self._value = value
        register(value)

    def reveal(self) -> str:
        """The value itself, for the one place that must send it (a URL path or a header)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would carry the secret into a message, a result or a file: refuse.
        raise TypeError("a Secret cannot be pickled")


class UnreadSecret(Secret):
    """A secret this process did not read because it calls no provider (``chat-archiver
    status``, the exporter): they run where the tokens are not set. It cannot be revealed."""

    __slots__ = ("source",)

    def __init__(self, source: str) -> None:
        self._value = ""
        self.source = source  # e.g. "environment variable GREEN_API_TOKEN"

    def reveal(self) -> str:
        raise RuntimeError(f"the token from {self.source} was not read by this process")
