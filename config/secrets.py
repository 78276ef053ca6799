"""Provider secrets: a wrapper that never prints itself, and one redaction function for all text.

GREEN-API puts its token in the URL path and Wassenger sends it in a ``Token`` header, so a logged
URL, an exception text or a traceback can carry it. Every secret the accounts registry loads is
registered here; ``redact`` removes every registered secret and anything shaped like one from a
string. Log handlers, dead-letter excerpts and error messages all go through it.
"""

from __future__ import annotations

import re
import threading

MASK = "***"

# Shapes that carry a secret even when we never loaded it (another process's account, a typo):
# the token segment of a GREEN-API URL, and a Token/Authorization header value.
_SHAPES = (
    (re.compile(r"(/waInstance\d+/[A-Za-z]+/)[^/?#\s\"'<>]+"), rf"\g<1>{MASK}"),
    (
        re.compile(
            r"(?i)((?:\"|'|\b)(?:token|authorization)(?:\"|')?\s*[:=]\s*(?:\"|')?)[^\s\"',}]+"
        ),
        rf"\g<1>{MASK}",
    ),
)
# Shorter values would redact ordinary words; real tokens are far longer.
_MIN_SECRET_LENGTH = 8

_lock = threading.Lock()
_known: set[str] = set()
_known_pattern: re.Pattern[str] | None = None


def register(value: str) -> None:
    """Make ``redact`` remove this value from any text, from now on, in this process."""
    global _known_pattern
    if len(value) < _MIN_SECRET_LENGTH or value in _known:
        return
    with _lock:
        _known.add(value)
        # Longest first so a secret that contains another is masked whole.
        alternatives = sorted(_known, key=len, reverse=True)
        _known_pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def redact(text: str) -> str:
    pattern = _known_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for shape, replacement in _SHAPES:
        text = shape.sub(replacement, text)
    return text


EXCERPT_LENGTH = 200


def excerpt(text: str) -> str:
    """A short one-line excerpt of any text (a provider's answer, a malformed message) fit to
    store: redacted before it is cut, so a cut can never leave half a token behind."""
    flat = redact(" ".join(text.split()))
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

    def __reduce__(self) -> object:
        # Pickling would carry the secret into a message, a result or a file: refuse.
        raise TypeError("a Secret cannot be pickled")
