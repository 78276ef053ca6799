"""Redaction of a registered secret in the forms a log line or a provider's answer may carry it:
inside base64 at every alignment, among secrets that share prefixes, behind escapes. The
mutation run (docs/mutation.md) found these forms registered but not asserted one by one."""

from __future__ import annotations

import base64
import pickle

import pytest

from config.secrets import MASK, Secret, excerpt, recompile, redact, register
from tests.unit.test_canary import leaks


@pytest.fixture(autouse=True)
def _build_the_pattern_here() -> None:
    """Each test builds the redaction pattern from its forms itself (docs/mutation.md: a
    mutation run forks each mutant from a process that built it already)."""
    recompile()


# Its base64 holds '+' and '/' (">>>" is "Pj4+", "???" is "Pz8/"), so base64url differs.
TOKEN = "b64Canary>>>???Token7"


@pytest.mark.parametrize("prefix", ["", "a", "ab", "abc", "abcd", "abcde"])
@pytest.mark.parametrize("suffix", ["", "z", "zz"])
@pytest.mark.parametrize("url", [False, True], ids=["base64", "base64url"])
def test_a_secret_inside_base64_is_masked_at_every_alignment(
    prefix: str, suffix: str, url: bool
) -> None:
    register(TOKEN)
    encode = base64.urlsafe_b64encode if url else base64.b64encode
    encoded = encode(f"{prefix}{TOKEN}{suffix}".encode()).decode()
    redacted = redact(f"header {encoded} trailer")
    assert MASK in redacted
    assert leaks(redacted, (TOKEN,)) == []
    assert redacted.startswith("header ") and redacted.endswith(" trailer")
    # Only the characters that depend on the secret's bytes alone go: what encodes the
    # prefix's whole three-byte groups stays readable.
    whole = len(prefix) // 3 * 4
    assert redacted[len("header ") :].startswith(encoded[:whole])


def test_secrets_that_share_a_prefix_are_each_masked_whole() -> None:
    tokens = [
        "SharedPrefix-AAAA1111",
        "SharedPrefix-AAAA2222",
        "SharedPrefix-BBBB",
        "SharedPrefix-AAAA1111-longer",
        "sharedprefix-zz",  # differs only by case from the others' start
    ]
    for token in tokens:
        register(token)
    for token in tokens:
        assert redact(f"a {token} b") == f"a {MASK} b", token
    assert redact("a SharedPrefix-AAAA3333 b") == "a SharedPrefix-AAAA3333 b"  # not a secret


def test_a_non_ascii_secret_is_masked_as_its_utf8_bytes_read_one_by_one() -> None:
    token = "tökenvalue-1234567"
    register(token)
    as_latin1 = token.encode("utf-8").decode("latin-1")  # what \xc3\xb6 unescapes to
    assert redact(f"a {as_latin1} b") == f"a {MASK} b"
    assert redact(f"a {token} b") == f"a {MASK} b"


def test_an_escaped_secret_is_masked_escapes_and_all_and_nothing_around_it() -> None:
    register(TOKEN)
    escaped = (
        TOKEN[:3] + "%" + f"{ord(TOKEN[3]):02X}" + TOKEN[4:-1] + "\\u" + f"{ord(TOKEN[-1]):04x}"
    )
    assert redact(f"keep%20this {escaped} and%2Fthis") == f"keep%20this {MASK} and%2Fthis"
    assert redact(f"x%41{escaped}%42y") == f"x%41{MASK}%42y"


def test_a_secret_refuses_to_be_pickled() -> None:
    with pytest.raises(TypeError, match=r"^a Secret cannot be pickled$"):
        pickle.dumps(Secret("pickle-me-not-123456"))


def test_an_excerpt_looks_again_where_a_mask_completes_a_secret() -> None:
    """A secret may begin with what the mask writes: the text the first pass masked is redacted
    again, as when flattening changed it."""
    register("ABCDEFGH12345678")
    register("***abcde")
    assert excerpt("ABCDEFGH12345678abcdefghij") == "***fghij"
